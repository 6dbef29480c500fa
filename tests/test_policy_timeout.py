"""MeshTimeout: its validation table, its golden render, `envoy --mode validate`, and timeouts on real Envoys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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

KIND = "MeshTimeout"

# --- validation -----------------------------------------------------------------------------------------------

GOOD = [
    ("connection timeout", "to", "connectionTimeout: 2s"),
    ("idle timeout disabled", "to", "idleTimeout: 0s"),
    ("every field", "to", """
        connectionTimeout: 1m30s
        idleTimeout: 1h
        http:
          requestTimeout: 250ms
          streamIdleTimeout: 30m
          maxStreamDuration: 0s
          maxConnectionDuration: 24h
          requestHeadersTimeout: 500ms
        """),
    ("request headers timeout alone", "to", "http: {requestHeadersTimeout: 1s}"),
    ("inbound", "from", "http: {requestTimeout: 3s}"),
]

# (id, section, body with the offending line marked, or a line number when the violation is on `default:` itself,
#  the path, a fragment of the message)
BAD: list[tuple[str, str, str, int | None, str, str]] = [
    ("empty", "to", "{}", BODY_LINE - 1, "spec.to[0].default", "at least one timeout should be configured"),
    ("unknown field", "to", f"timeout: 5s {MARK}", None, "spec.to[0].default.timeout", "unknown field"),
    ("zero connection timeout", "to", f"connectionTimeout: 0s {MARK}", None, "spec.to[0].default.connectionTimeout",
     "must be greater than 0"),
    ("negative", "to", f"idleTimeout: -1s {MARK}", None, "spec.to[0].default.idleTimeout", "must not be negative"),
    ("not a duration", "to", f"idleTimeout: 5 parsecs {MARK}", None, "spec.to[0].default.idleTimeout",
     "must be a duration like 500ms, 5s or 1m30s, got '5 parsecs'"),
    ("a number", "to", f"connectionTimeout: 5 {MARK}", None, "spec.to[0].default.connectionTimeout",
     "must be a string, got an integer"),
    ("too long", "to", f"idleTimeout: 99999999999999s {MARK}", None, "spec.to[0].default.idleTimeout",
     "must be at most 315576000000s"),
    ("http not a mapping", "to", f"http: 5s {MARK}", None, "spec.to[0].default.http", "must be a mapping"),
    ("empty http", "to", f"http: {{}} {MARK}", None, "spec.to[0].default.http",
     "at least one timeout in this section should be configured"),
    ("unknown http field", "to", f"http:\n  timeout: 1s {MARK}", None, "spec.to[0].default.http.timeout",
     "unknown field"),
    ("bad request timeout", "to", f"http:\n  requestTimeout: soon {MARK}", None,
     "spec.to[0].default.http.requestTimeout", "must be a duration"),
    ("negative stream idle", "to", f"http:\n  streamIdleTimeout: -5m {MARK}", None,
     "spec.to[0].default.http.streamIdleTimeout", "must not be negative"),
    ("inbound bad headers timeout", "from", f"http:\n  requestHeadersTimeout: 1 {MARK}", None,
     "spec.from[0].default.http.requestHeadersTimeout", "must be a string"),
]


@pytest.fixture(scope="module")
def base_mesh(tmp_path_factory: pytest.TempPathFactory) -> MeshFiles:
    return write_mesh(tmp_path_factory.mktemp("timeout-validate"), FixedAddresses(per_address=True), web_calling())


@pytest.mark.parametrize("section, body", table_cases(GOOD))
def test_good_specs_pass(base_mesh: MeshFiles, section: str, body: str) -> None:
    assert violations(base_mesh.write({"p.yaml": policy_file(KIND, body, section)})) == []


@pytest.mark.parametrize("section, body, line, path, message", table_cases(BAD))
def test_bad_specs_report_file_line_and_path(base_mesh: MeshFiles, section: str, body: str, line: int | None,
                                            path: str, message: str) -> None:
    found = violations(base_mesh.write({"p.yaml": policy_file(KIND, body, section)}))
    assert_violation_reported(found, "p.yaml", line or marked_line(body), path, message)


def test_from_items_must_select_every_client(base_mesh: MeshFiles) -> None:
    text = policy_file(KIND, "connectionTimeout: 1s", "from").replace("        kind: Mesh\n      default:",
                                                                      "        kind: MeshService\n        name: web\n      default:")
    found = violations(base_mesh.write({"p.yaml": text}))
    assert found == ["p.yaml:9: spec.from[0].targetRef.kind: MeshTimeout `from` items must target kind Mesh, "
                     "got 'MeshService': inbound timeouts apply to every client of the inbound"]


def test_every_violation_of_one_item_at_once(base_mesh: MeshFiles) -> None:
    body = "connectionTimeout: 0s\nidleTimeout: x\nhttp:\n  requestTimeout: -1s\n  maxStreamDuration: 7\n"
    found = violations(base_mesh.write({"p.yaml": policy_file(KIND, body)}))
    assert [v.split(": ")[1] for v in found] == [
        "spec.to[0].default.connectionTimeout",
        "spec.to[0].default.idleTimeout",
        "spec.to[0].default.http.requestTimeout",
        "spec.to[0].default.http.maxStreamDuration",
    ]


# --- rendering ------------------------------------------------------------------------------------------------

POLICIES = """
    type: MeshTimeout
    mesh: default
    name: everyone
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: Mesh
          default:
            connectionTimeout: 3s
            idleTimeout: 10m
            http:
              requestTimeout: 20s
    ---
    type: MeshTimeout
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
              requestTimeout: 500ms
              streamIdleTimeout: 5s
              maxStreamDuration: 30s
              maxConnectionDuration: 1h
              requestHeadersTimeout: 2s
        - targetRef:
            kind: MeshService
            name: db
          default:
            idleTimeout: 2m
    ---
    type: MeshTimeout
    mesh: default
    name: backend-inbound
    spec:
      targetRef:
        kind: MeshService
        name: backend
      from:
        - targetRef:
            kind: Mesh
          default:
            connectionTimeout: 1s
            idleTimeout: 5m
            http:
              requestTimeout: 300ms
              requestHeadersTimeout: 1s
    ---
    type: MeshTimeout
    mesh: default
    name: httpbin-on-egress
    spec:
      targetRef:
        kind: Mesh
        proxyType: ["Egress"]
      to:
        - targetRef:
            kind: MeshExternalService
            name: httpbin
          default:
            connectionTimeout: 4s
            http:
              requestTimeout: 2s
    """


def render_mesh(root: Path) -> tuple[MeshFiles, dict[str, ProxyConfig]]:
    mesh = write_mesh(root, FixedAddresses(per_address=True), web_calling(http=("backend",), tcp=("db",), externals=("httpbin",)),
                      externals={"httpbin": "http"})
    mesh.write_policies(POLICIES)
    return mesh, {p.name: p for p in mesh.render()}


def by_name(resources: tuple[dict, ...]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {r["name"]: r for r in resources}


def route_of(listener: dict) -> dict:  # type: ignore[type-arg]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]  # type: ignore[no-any-return]


def test_where_each_field_lands(tmp_path: Path) -> None:
    mesh, proxies = render_mesh(tmp_path / "desired")
    web, backend, egress = proxies["web"], proxies["backend-1"], proxies["egress"]
    clusters = by_name(web.clusters)
    options = clusters["backend"]["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["explicit_http_config"] == {"http_protocol_options": {}}
    assert options["common_http_protocol_options"] == {
        "idle_timeout": "600s", "max_stream_duration": "30s", "max_connection_duration": "3600s"}
    assert clusters["backend"]["connect_timeout"] == "3s"
    assert clusters["db"]["connect_timeout"] == "3s" and "typed_extension_protocol_options" not in clusters["db"]
    listeners = list(web.listeners)
    backend_out = next(lst for lst in listeners if route_cluster(lst) == "backend")
    assert route_of(backend_out) == {"cluster": "backend", "timeout": "0.500s", "idle_timeout": "5s"}
    assert backend_out["filter_chains"][0]["filters"][0]["typed_config"]["request_headers_timeout"] == "2s"
    db_out = next(lst for lst in listeners if tcp_cluster(lst) == "db")
    assert db_out["filter_chains"][0]["filters"][0]["typed_config"]["idle_timeout"] == "120s"
    # The sidecar's cluster to an external service leads to the egress; the Mesh-wide policy still applies there.
    assert clusters["mes:default:httpbin"]["connect_timeout"] == "3s"
    # `from` on backend's inbound: its local cluster, routes and connection manager.
    (local,) = [c for c in backend.clusters if c["name"].startswith("local:")]
    assert local["connect_timeout"] == "1s"
    common = local["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    # what the `from` leaves unset gets Kuma's default (0s: off)
    assert common["common_http_protocol_options"] == {"idle_timeout": "300s", "max_stream_duration": "0s",
                                                      "max_connection_duration": "0s"}
    (inbound,) = backend.listeners
    assert route_of(inbound)["timeout"] == "0.300s"
    assert inbound["filter_chains"][0]["filters"][0]["typed_config"]["request_headers_timeout"] == "1s"
    # web's own inbound has no `from` policy.
    web_in = next(lst for lst in listeners if lst["name"].startswith("inbound:"))
    assert "timeout" not in route_of(web_in)
    # The egress: its cluster and its filter chain for httpbin.
    (egress_cluster,) = egress.clusters
    assert egress_cluster["connect_timeout"] == "4s"
    assert route_of(egress.listeners[0])["timeout"] == "2s"
    # Origins: each field names its policy and the line it was written on.
    origins = web.origins["cluster"]["backend"]
    assert origins[("connect_timeout",)] == [f"MeshTimeout/everyone ({mesh.root}/policies.yaml:11)"]


def route_cluster(listener: dict) -> str | None:  # type: ignore[type-arg]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    if "route_config" not in manager:
        return None
    return route_of(listener).get("cluster")  # type: ignore[no-any-return]


def tcp_cluster(listener: dict) -> str | None:  # type: ignore[type-arg]
    return listener["filter_chains"][0]["filters"][0]["typed_config"].get("cluster")  # type: ignore[no-any-return]


@pytest.mark.envoy
def test_every_proxy_passes_envoy_validate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    mesh, _ = render_mesh(tmp_path / "desired")
    desired = load_and_parse(mesh.root)
    assert envoy_validates(desired, state) == dict.fromkeys(desired.proxy_names())


# --- real traffic ---------------------------------------------------------------------------------------------

TRAFFIC_POLICIES = """
    type: MeshTimeout
    mesh: default
    name: backend-500ms
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: MeshService
            name: backend
          default:
            http:
              requestTimeout: 500ms
    ---
    type: MeshTimeout
    mesh: default
    name: slow-inbound-300ms
    spec:
      targetRef:
        kind: MeshService
        name: slow
      from:
        - targetRef:
            kind: Mesh
          default:
            http:
              requestTimeout: 300ms
    ---
    type: MeshTimeout
    mesh: default
    name: httpbin-egress-300ms
    spec:
      targetRef:
        kind: Mesh
        proxyType: ["Egress"]
      to:
        - targetRef:
            kind: MeshExternalService
            name: httpbin
          default:
            http:
              requestTimeout: 300ms
    """


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory, loopback: Addresses) -> Iterator[tuple[MeshFiles, dict[str, ProxyConfig]]]:
    root = tmp_path_factory.mktemp("timeout-traffic")
    mesh = write_mesh(root / "desired", loopback, web_calling(http=("backend", "slow"), externals=("httpbin",)),
                      externals={"httpbin": "http"})
    mesh.write_policies(TRAFFIC_POLICIES)
    state = root / "state"
    state.mkdir()
    with running_sandbox(load_and_parse(mesh.root), state) as proxies:
        yield mesh, {p.name: p for p in proxies}


def timed_get(http: httpx.Client, url: str) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    answer = http.get(url)
    return answer, time.monotonic() - began


@pytest.mark.envoy
def test_outbound_request_timeout_cuts_a_slow_upstream(traffic: tuple[MeshFiles, dict[str, ProxyConfig]],
                                                       http: httpx.Client) -> None:
    mesh, _ = traffic
    fast = http.get(f"{mesh.outbound['web', 'backend']}/delay/50")
    assert fast.status_code == 200 and fast.json()["service"] == "backend"
    answer, seconds = timed_get(http, f"{mesh.outbound['web', 'backend']}/delay/2000")
    assert answer.status_code == 504
    assert answer.text == "upstream request timeout"
    assert 0.45 <= seconds < 1.5, seconds
    assert wait_for_stat(http, mesh.admin["web"], "cluster.backend.upstream_rq_timeout", 1) == 1


@pytest.mark.envoy
def test_inbound_request_timeout_is_the_callee_sidecars(traffic: tuple[MeshFiles, dict[str, ProxyConfig]],
                                                        http: httpx.Client) -> None:
    mesh, proxies = traffic
    answer, seconds = timed_get(http, f"{mesh.outbound['web', 'slow']}/delay/2000")
    assert answer.status_code == 504
    assert 0.25 <= seconds < 1.5, seconds
    (local,) = [c["name"] for c in proxies["slow-1"].clusters if c["name"].startswith("local:")]
    # slow's sidecar timed out towards its app; web's sidecar only relayed the 504 and timed out nothing.
    assert wait_for_stat(http, mesh.admin["slow-1"], f"cluster.{local}.upstream_rq_timeout", 1) == 1
    assert stat(http, mesh.admin["web"], "cluster.slow.upstream_rq_timeout") == 0


@pytest.mark.envoy
def test_egress_timeout_applies_on_the_egress_only(traffic: tuple[MeshFiles, dict[str, ProxyConfig]],
                                                   http: httpx.Client) -> None:
    mesh, proxies = traffic
    ok = http.get(f"{mesh.outbound['web', 'mes:httpbin']}/delay/10")
    assert ok.status_code == 200 and ok.json()["service"] == "httpbin"
    answer, seconds = timed_get(http, f"{mesh.outbound['web', 'mes:httpbin']}/delay/2000")
    assert answer.status_code == 504
    assert 0.25 <= seconds < 1.5, seconds
    assert wait_for_stat(http, mesh.admin["egress"], "cluster.mes:default:httpbin.upstream_rq_timeout", 1) == 1
    assert stat(http, mesh.admin["web"], "cluster.mes:default:httpbin.upstream_rq_timeout") == 0
    web_route = next(route_of(lst) for lst in proxies["web"].listeners if route_cluster(lst) == "mes:default:httpbin")
    assert "timeout" not in web_route
