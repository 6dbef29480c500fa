"""MeshRetry: its validation table, its golden render, `envoy --mode validate`, and retries on real Envoys."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshplan.compare.canonical import canonical
from meshplan.match.unused import warnings
from meshplan.model import ProxyConfig
from meshplan.validate.resources import load_and_parse
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    assert_violation_reported,
    running_sandbox,
    stat,
    table_cases,
    violations,
    wait_for_stat,
    web_calling,
    write_mesh,
)
from tests.policy_render import envoy_validates
from tests.policy_tables import BODY_LINE, MARK, marked_line, policy_file

KIND = "MeshRetry"

# --- validation -----------------------------------------------------------------------------------------------

GOOD = [
    ("tcp", "tcp: {maxConnectAttempt: 3}"),
    ("http retries", "http: {numRetries: 2}"),
    ("no retries", "http: {numRetries: 0}"),
    ("every http field", """
        http:
          numRetries: 5
          perTryTimeout: 16s
          backOff: {baseInterval: 25ms, maxInterval: 250ms}
          rateLimitedBackOff:
            resetHeaders:
              - {name: retry-after, format: Seconds}
              - {name: x-ratelimit-reset, format: UnixTimestamp}
            maxInterval: 5m
          retryOn: [5xx, 5XX, GatewayError, Reset, Retriable4xx, ConnectFailure, EnvoyRatelimited, RefusedStream,
                    Http3PostConnectFailure, HttpMethodGet, HttpMethodPost, "503", 429]
          retriableRequestHeaders:
            - {name: x-idempotent, type: Present}
            - {name: ":method", value: GET}
          retriableResponseHeaders:
            - {name: x-retry, type: Prefix, value: "yes"}
            - {name: x-failed, type: RegularExpression, value: "^t.*"}
            - {name: x-final, type: Absent}
          hostSelection:
            - predicate: OmitPreviousHosts
            - predicate: OmitHostsWithTags
              tags: {version: v1}
            - predicate: OmitPreviousPriorities
              updateFrequency: 2
          hostSelectionMaxAttempts: 3
        """),
    ("grpc", """
        grpc:
          numRetries: 2
          perTryTimeout: 1s
          backOff: {maxInterval: 1s}
          retryOn: [Canceled, DeadlineExceeded, Internal, ResourceExhausted, Unavailable]
        """),
    ("all three", "tcp: {maxConnectAttempt: 1}\nhttp: {numRetries: 1}\ngrpc: {numRetries: 1}"),
]

# (id, body with the offending line marked, or a line number when the violation is on `default:` itself,
#  the path under spec.to[0].default, a fragment of the message)
BAD: list[tuple[str, str, int | None, str, str]] = [
    ("empty", "{}", BODY_LINE - 1, "", "at least one of `tcp`, `http`, `grpc` must be specified"),
    ("unknown section", f"udp: {{numRetries: 1}} {MARK}", None, ".udp", "unknown field"),
    ("empty tcp", f"tcp: {{}} {MARK}", None, ".tcp", "`maxConnectAttempt` is required"),
    ("zero connect attempts", f"tcp: {{maxConnectAttempt: 0}} {MARK}", None, ".tcp.maxConnectAttempt",
     "must be between 1 and 4294967295, got 0"),
    ("empty http", f"http: {{}} {MARK}", None, ".http", "must not be empty"),
    ("negative retries", f"http: {{numRetries: -1}} {MARK}", None, ".http.numRetries", "must be between 0 and"),
    ("retries as text", f"http: {{numRetries: three}} {MARK}", None, ".http.numRetries", "must be an integer"),
    ("bad per-try timeout", f"http: {{perTryTimeout: 1 second}} {MARK}", None, ".http.perTryTimeout",
     "must be a duration"),
    ("empty backoff", f"http:\n  backOff: {{}} {MARK}", None, ".http.backOff", "must not be empty"),
    ("zero base interval", f"http:\n  backOff: {{baseInterval: 0s}} {MARK}", None, ".http.backOff.baseInterval",
     "must be greater than 0"),
    ("max below base", f"http:\n  backOff: {{baseInterval: 1s, maxInterval: 100ms}} {MARK}", None,
     ".http.backOff.maxInterval", "must not be less than baseInterval (1s)"),
    ("max below the default base", f"http:\n  backOff: {{maxInterval: 10ms}} {MARK}", None,
     ".http.backOff.maxInterval", "must not be less than baseInterval (25ms)"),
    ("unknown retryOn", f"http:\n  retryOn:\n    - Sometimes {MARK}", None, ".http.retryOn[0]",
     "unknown item 'Sometimes'"),
    ("unknown status code", f"http:\n  retryOn:\n    - \"999\" {MARK}", None, ".http.retryOn[0]",
     "unknown item '999'"),
    ("method spelled wrong", f"http:\n  retryOn:\n    - HttpMethodget {MARK}", None, ".http.retryOn[0]",
     "unknown item 'HttpMethodget'"),
    ("reset headers missing", f"http:\n  rateLimitedBackOff: {{maxInterval: 1s}} {MARK}", None,
     ".http.rateLimitedBackOff", "`resetHeaders` is required"),
    ("reset header format", f"http:\n  rateLimitedBackOff:\n    resetHeaders:\n      - name: retry-after\n"
     f"        format: Minutes {MARK}", None, ".http.rateLimitedBackOff.resetHeaders[0].format",
     "must be one of Seconds, UnixTimestamp, got 'Minutes'"),
    ("reset header without name", f"http:\n  rateLimitedBackOff:\n    resetHeaders:\n      - format: Seconds {MARK}",
     None, ".http.rateLimitedBackOff.resetHeaders[0]", "`name` is required"),
    ("upper-case header name", f"http:\n  retriableRequestHeaders:\n    - name: X-Retry {MARK}", None,
     ".http.retriableRequestHeaders[0].name", "must be a lower-case HTTP header name"),
    ("unknown header match", f"http:\n  retriableResponseHeaders:\n    - name: x-a\n      type: Suffix {MARK}",
     None, ".http.retriableResponseHeaders[0].type", "must be one of Exact, Present, RegularExpression"),
    ("prefix without value", f"http:\n  retriableResponseHeaders:\n    - name: x-a {MARK}\n      type: Prefix",
     None, ".http.retriableResponseHeaders[0]", "a Prefix match needs a non-empty `value`"),
    ("present with value", f"http:\n  retriableResponseHeaders:\n    - name: x-a\n      type: Present\n"
     f"      value: x {MARK}", None, ".http.retriableResponseHeaders[0].value", "a Present match takes no value"),
    ("unknown predicate", f"http:\n  hostSelection:\n    - predicate: OmitAll {MARK}", None,
     ".http.hostSelection[0].predicate", "unknown predicate type 'OmitAll'"),
    ("tags missing", f"http:\n  hostSelection:\n    - predicate: OmitHostsWithTags {MARK}", None,
     ".http.hostSelection[0]", "`tags` is required"),
    ("priorities twice", f"http:\n  hostSelection:\n    - {{predicate: OmitPreviousPriorities, updateFrequency: 1}}\n"
     f"    - {{predicate: OmitPreviousPriorities, updateFrequency: 2}} {MARK}", None,
     ".http.hostSelection[1].predicate", "OmitPreviousPriorities must only be specified once"),
    ("zero update frequency", f"http:\n  hostSelection:\n    - predicate: OmitPreviousPriorities\n"
     f"      updateFrequency: 0 {MARK}", None, ".http.hostSelection[0].updateFrequency", "must be between 1 and"),
    ("empty grpc", f"grpc: {{}} {MARK}", None, ".grpc", "must not be empty"),
    ("grpc retryOn", f"grpc:\n  retryOn:\n    - GatewayError {MARK}", None, ".grpc.retryOn[0]",
     "unknown item 'GatewayError': expected one of Canceled"),
    ("grpc takes no headers", f"grpc:\n  numRetries: 1\n  retriableRequestHeaders: [] {MARK}", None,
     ".grpc.retriableRequestHeaders", "unknown field"),
]


@pytest.fixture(scope="module")
def base_mesh(tmp_path_factory: pytest.TempPathFactory) -> MeshFiles:
    return write_mesh(tmp_path_factory.mktemp("retry-validate"), FixedAddresses(per_address=True), web_calling())


@pytest.mark.parametrize("body", table_cases(GOOD))
def test_good_specs_pass(base_mesh: MeshFiles, body: str) -> None:
    assert violations(base_mesh.write({"p.yaml": policy_file(KIND, body)})) == []


@pytest.mark.parametrize("body, line, path, message", table_cases(BAD))
def test_bad_specs_report_file_line_and_path(base_mesh: MeshFiles, body: str, line: int | None, path: str,
                                            message: str) -> None:
    found = violations(base_mesh.write({"p.yaml": policy_file(KIND, body)}))
    assert_violation_reported(found, "p.yaml", line or marked_line(body), f"spec.to[0].default{path}", message)


# --- rendering ------------------------------------------------------------------------------------------------

POLICIES = """
    type: MeshRetry
    mesh: default
    name: everyone
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: Mesh
          default:
            tcp:
              maxConnectAttempt: 3
            http:
              numRetries: 2
            grpc:
              numRetries: 4
              retryOn: [Unavailable, Canceled]
    ---
    type: MeshRetry
    mesh: default
    name: backend
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: MeshService
            name: backend
          default:
            http:
              perTryTimeout: 1s
              backOff:
                maxInterval: 1s
              retryOn: [GatewayError, "503", HttpMethodGet]
              retriableRequestHeaders:
                - name: x-idempotent
                  type: Present
              retriableResponseHeaders:
                - name: x-retry-me
                  value: "true"
              rateLimitedBackOff:
                resetHeaders:
                  - name: retry-after
                    format: Seconds
              hostSelection:
                - predicate: OmitPreviousHosts
              hostSelectionMaxAttempts: 3
        - targetRef:
            kind: MeshService
            name: other
          default:
            http:
              numRetries: 0
    ---
    type: MeshRetry
    mesh: default
    name: httpbin
    spec:
      targetRef:
        kind: Mesh
        proxyType: ["Sidecar"]
      to:
        - targetRef:
            kind: MeshExternalService
            name: httpbin
          default:
            http:
              numRetries: 7
    ---
    type: MeshRetry
    mesh: default
    name: never-on-the-egress
    spec:
      targetRef:
        kind: Mesh
        proxyType: ["Egress"]
      to:
        - targetRef:
            kind: Mesh
          default:
            http:
              numRetries: 9
    """


def render_mesh(root: Path) -> tuple[MeshFiles, dict[str, ProxyConfig]]:
    mesh = write_mesh(root, FixedAddresses(per_address=True), web_calling(http=("backend", "other"), tcp=("db",), grpc=("rpc",), externals=("httpbin",)),
                      externals={"httpbin": "http"})
    mesh.write_policies(POLICIES)
    return mesh, {p.name: p for p in mesh.render()}


def outbound_filter(proxy: ProxyConfig, cluster: str) -> dict[str, Any]:
    for listener in proxy.listeners:
        config: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
        if config.get("cluster") == cluster:
            return config
        routes = config.get("route_config", {}).get("virtual_hosts", [{}])[0].get("routes", [])
        if listener["name"].startswith("outbound:") and routes and routes[0]["route"]["cluster"] == cluster:
            return config
    raise KeyError(cluster)


def retry_policy(proxy: ProxyConfig, cluster: str) -> dict[str, Any] | None:
    route = outbound_filter(proxy, cluster)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    return route.get("retry_policy")  # type: ignore[no-any-return]


def test_where_each_field_lands(tmp_path: Path) -> None:
    _, proxies = render_mesh(tmp_path / "desired")
    web = proxies["web"]
    assert retry_policy(web, "backend") == {
        "retry_on": "gateway-error,retriable-status-codes",
        "num_retries": 2,
        "per_try_timeout": "1s",
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "1s"},
        "rate_limited_retry_back_off": {"reset_headers": [{"name": "retry-after", "format": "SECONDS"}]},
        "retriable_status_codes": [503],
        "retriable_request_headers": [{"name": ":method", "string_match": {"exact": "GET"}},
                                      {"name": "x-idempotent", "present_match": True}],
        "retriable_headers": [{"name": "x-retry-me", "string_match": {"exact": "true"}}],
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
        }],
        "host_selection_retry_max_attempts": "3",
    }
    assert retry_policy(web, "other") is None  # numRetries: 0 removes the retry policy
    assert retry_policy(web, "rpc") == {
        "retry_on": "unavailable,cancelled", "num_retries": 4}
    assert retry_policy(web, "mes:default:httpbin") == {
        "retry_on": "gateway-error,connect-failure,refused-stream", "num_retries": 7}
    assert outbound_filter(web, "db")["max_connect_attempts"] == 3
    # The seed: never on the egress, not even from a policy that names it.
    for name, proxy in proxies.items():
        if name != "web":
            assert "retry_policy" not in json.dumps(proxy.listeners) and "max_connect_attempts" not in json.dumps(
                proxy.listeners), name
    for resource in web.clusters + web.listeners:
        canonical(resource)  # every field parses with the Envoy protos


@pytest.mark.envoy
def test_every_proxy_passes_envoy_validate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    mesh, _ = render_mesh(tmp_path / "desired")
    desired = load_and_parse(mesh.root)
    assert envoy_validates(desired, state) == dict.fromkeys(desired.proxy_names())


# --- real traffic ---------------------------------------------------------------------------------------------

TRAFFIC_POLICIES = """
    type: MeshRetry
    mesh: default
    name: retries
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: Mesh
          default:
            http:
              numRetries: 3
              backOff:
                baseInterval: 10ms
                maxInterval: 20ms
        - targetRef:
            kind: MeshService
            name: other
          default:
            http:
              numRetries: 0
    """


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory, loopback: Addresses) -> Iterator[MeshFiles]:
    root = tmp_path_factory.mktemp("retry-traffic")
    mesh = write_mesh(root / "desired", loopback, web_calling(http=("backend", "other")))
    mesh.write_policies(TRAFFIC_POLICIES)
    state = root / "state"
    state.mkdir()
    with running_sandbox(load_and_parse(mesh.root), state):
        yield mesh


@pytest.mark.envoy
def test_a_request_that_fails_twice_succeeds_on_the_third_attempt(traffic: MeshFiles, http: httpx.Client) -> None:
    web = traffic.admin["web"]
    before = stat(http, web, "cluster.backend.upstream_rq_retry")
    answer = http.get(f"{traffic.outbound['web', 'backend']}/flaky/2/{uuid.uuid4().hex}")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["service"], body["attempt"]) == ("backend", 3)  # the upstream was hit three times
    assert wait_for_stat(http, web, "cluster.backend.upstream_rq_retry", before + 2) == before + 2
    assert stat(http, web, "cluster.backend.upstream_rq_retry_success") >= 1


@pytest.mark.envoy
def test_more_failures_than_retries_reach_the_client(traffic: MeshFiles, http: httpx.Client) -> None:
    answer = http.get(f"{traffic.outbound['web', 'backend']}/flaky/5/{uuid.uuid4().hex}")
    assert answer.status_code == 503
    assert answer.json()["attempt"] == 4  # one try and numRetries: 3


@pytest.mark.envoy
def test_zero_retries_means_none(traffic: MeshFiles, http: httpx.Client) -> None:
    web = traffic.admin["web"]
    answer = http.get(f"{traffic.outbound['web', 'other']}/flaky/1/{uuid.uuid4().hex}")
    assert answer.status_code == 503
    assert (answer.json()["service"], answer.json()["attempt"]) == ("other", 1)
    assert stat(http, web, "cluster.other.upstream_rq_retry") == 0


@pytest.mark.parametrize("kind", ["MeshRetry", "MeshLoadBalancingStrategy"])
def test_an_empty_to_is_valid_configures_nothing_and_is_warned_about(tmp_path: Path, kind: str) -> None:
    """Kuma v2.14.3 accepts `to: []` for these kinds ("an override to disable inherited rules"); its rules, as
    meshplan's merge, take each `to` item on its own, so it clears nothing: accepted, unchanged render, a warning."""
    files = write_mesh(tmp_path / "desired", FixedAddresses(), web_calling())
    before = {name: (p.clusters, p.listeners) for name, p in files.proxies().items()}
    files.write({"empty.yaml": f"type: {kind}\nmesh: default\nname: web-override\nspec:\n"
                 "  targetRef: {kind: Dataplane, labels: {app: web}}\n  to: []\n"})
    desired = files.load()
    assert [p.name for p in desired.policies if p.kind == kind] == ["web-override"]
    assert {name: (p.clusters, p.listeners) for name, p in files.proxies().items()} == before
    found = [w for w in warnings(desired) if f"{kind}/web-override" in w]
    assert found == [f"{files.root / 'empty.yaml'}:6: {kind}/web-override: `to` is empty, so it configures nothing. "
                     "Kuma accepts an empty `to` as an override, but its rules, as meshplan's merge, take each `to` "
                     "item on its own: it clears no other policy's settings (to turn them off, set the values in a "
                     "`to` item)"]
