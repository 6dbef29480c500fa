"""MeshRateLimit: validation, local rate limit rendering (one bucket per inbound, shared by its clients, on HTTP and
TCP; per external service on the egress), `envoy --mode validate`, and real requests: N pass, the next get the
configured answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Loopback

from meshplan.model import ProxyConfig
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    Service,
    assert_violations_start_with,
    running_mesh,
    stats,
    stats_by_suffix,
    table_cases,
    the_listener,
    violations,
    write_mesh,
)
from tests.policy_render import envoy_validates

CALLS = ("backend", "ledger", "mes:httpbin")
SERVICES = [
    Service("web", calls=CALLS),
    Service("admin", calls=CALLS),
    Service("backend"),
    Service("ledger", protocol="tcp"),
]
EXTERNALS = {"httpbin": "http"}

# Intervals of an hour: no token comes back while a test runs.
POLICIES = """\
    type: MeshRateLimit
    name: backend
    mesh: default
    spec:
      targetRef:
        kind: MeshService
        name: backend
      from:
        - targetRef:
            kind: Mesh
          default:
            local:
              http:
                requestRate:
                  num: 3
                  interval: 1h
                onRateLimit:
                  status: 503
                  headers:
                    set:
                      - name: x-rate-limited
                        value: "true"
                    add:
                      - name: x-limit
                        value: 3-per-hour
    ---
    type: MeshRateLimit
    name: ledger
    mesh: default
    spec:
      targetRef:
        kind: MeshService
        name: ledger
      from:
        - targetRef:
            kind: Mesh
          default:
            local:
              tcp:
                connectionRate:
                  num: 2
                  interval: 1h
    ---
    type: MeshRateLimit
    name: httpbin
    mesh: default
    spec:
      targetRef:
        kind: MeshExternalService
        name: httpbin
        proxyType: ["Egress"]
      from:
        - targetRef:
            kind: Mesh
          default:
            local:
              http:
                requestRate:
                  num: 4
                  interval: 1h
                onRateLimit:
                  headers:
                    set:
                      - name: x-egress-limited
                        value: "true"
    """


def demo_mesh(root: Path, addresses: Addresses, policies: str = POLICIES) -> MeshFiles:
    return write_mesh(root, addresses, SERVICES, externals=EXTERNALS, policies=policies)


def policy(body: str, name: str = "p") -> str:
    return f"type: MeshRateLimit\nmesh: default\nname: {name}\nspec:\n" + body


def proxies_of(root: Path, policies: str = POLICIES) -> dict[str, ProxyConfig]:
    return demo_mesh(root, FixedAddresses(first_port=20001), policies).proxies()


def chain_filters(proxy: ProxyConfig) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = the_listener(proxy)["filter_chains"][0]["filters"]
    return filters


# --- validation -------------------------------------------------------------------------------------------------

HEAD = "  targetRef:\n    kind: MeshService\n    name: backend\n  from:\n    - targetRef:\n        kind: Mesh\n      default:\n"
CLIENT = HEAD.replace("        kind: Mesh\n", "        kind: MeshService\n        name: web\n")


def local(text: str, head: str = HEAD) -> str:
    return head + "        local:\n" + "".join(f"          {line}\n" for line in text.splitlines())


GOOD = {
    "http and tcp": local("http:\n  requestRate: {num: 10, interval: 1s}\n  onRateLimit:\n    status: 429\n"
                          "    headers:\n      set: [{name: x-a, value: b}]\n      add: [{name: x-c, value: d}]\n"
                          "tcp:\n  connectionRate: {num: 5, interval: 51ms}\n"),
    "only onRateLimit": local("http:\n  onRateLimit: {status: 503}\n"),
    "disabled": local("http:\n  disabled: true\n"),
    "tcp disabled": local("tcp:\n  disabled: true\n"),
}

BAD: list[tuple[str, str, list[str]]] = [
    ("local missing", HEAD.replace("      default:\n", "      default: {}\n"),
     ["policies.yaml:11: spec.from[0].default: `local` is required"]),
    ("local empty", HEAD + "        local: {}\n",
     ["policies.yaml:12: spec.from[0].default.local: needs `http`, `tcp` or both"]),
    ("http empty", local("http: {}"),
     ["policies.yaml:13: spec.from[0].default.local.http: needs at least one of `disabled`, `requestRate`, `onRateLimit`"]),
    ("num zero", local("http:\n  requestRate: {num: 0, interval: 1s}"),
     ["policies.yaml:14: spec.from[0].default.local.http.requestRate.num: must be between 1 and 4294967295, got 0"]),
    ("num missing", local("http:\n  requestRate: {interval: 1s}"),
     ["policies.yaml:14: spec.from[0].default.local.http.requestRate: `num` is required"]),
    ("interval too short", local("http:\n  requestRate: {num: 1, interval: 50ms}"),
     ["policies.yaml:14: spec.from[0].default.local.http.requestRate.interval: must be greater than 50ms, got '50ms'"]),
    ("interval not a duration", local("tcp:\n  connectionRate: {num: 1, interval: soon}"),
     ["policies.yaml:14: spec.from[0].default.local.tcp.connectionRate.interval: must be a duration like 500ms, "
      "1s or 1m, got 'soon'"]),
    ("status below 400", local("http:\n  onRateLimit: {status: 200}"),
     ["policies.yaml:14: spec.from[0].default.local.http.onRateLimit.status: must be an HTTP error status between "
      "400 and 599 (Envoy answers 429 for any status below 400), got 200"]),
    ("status unknown to Envoy", local("http:\n  onRateLimit: {status: 451}"),
     ["policies.yaml:14: spec.from[0].default.local.http.onRateLimit.status: must be an HTTP error status between "
      "400 and 599 (Envoy knows no such status code), got 451"]),
    ("header name", local("http:\n  onRateLimit:\n    headers:\n      set: [{name: X-Upper, value: v}]"),
     ["policies.yaml:16: spec.from[0].default.local.http.onRateLimit.headers.set[0].name: must be a lower-case HTTP "
      "header name (an RFC 7230 token), got 'X-Upper'"]),
    ("header twice", local("http:\n  onRateLimit:\n    headers:\n      add: [{name: x-a, value: '1'}, {name: x-a, value: '2'}]"),
     ["policies.yaml:16: spec.from[0].default.local.http.onRateLimit.headers.add[1].name: header 'x-a' is listed twice "
      "in `add`: join the values with a comma"]),
    ("too many headers",
     local("http:\n  onRateLimit:\n    headers:\n      set: [" + ", ".join(f"{{name: x-{i}, value: v}}" for i in range(17))
           + "]"),
     ["policies.yaml:16: spec.from[0].default.local.http.onRateLimit.headers.set: at most 16 headers, got 17"]),
    # As Kuma v2.14.3: one limit for every client of the inbound; a `from` item of another kind is refused, whatever
    # its conf (a per-client HTTP bucket, or a TCP rate, which could not tell clients apart anyway).
    ("a limit for one client", local("http:\n  requestRate: {num: 1, interval: 1s}", CLIENT),
     ["policies.yaml:10: spec.from[0].targetRef.kind: value 'MeshService' is not supported (as Kuma: a MeshRateLimit "
      "`from` item takes kind Mesh only, one limit shared by every client of the inbound; a limit per client is not "
      "part of MeshRateLimit)"]),
    ("a tcp limit for one client", local("tcp:\n  connectionRate: {num: 1, interval: 1s}", CLIENT),
     ["policies.yaml:10: spec.from[0].targetRef.kind: value 'MeshService' is not supported"]),
    ("a limit for a subset", local("http:\n  disabled: true", HEAD.replace(
        "        kind: Mesh\n", "        kind: MeshSubset\n        tags: {team: ops}\n")),
     ["policies.yaml:10: spec.from[0].targetRef.kind: value 'MeshSubset' is not supported"]),
    ("tcp empty", local("tcp: {}"),
     ["policies.yaml:13: spec.from[0].default.local.tcp: needs at least one of `disabled`, `connectionRate`"]),
    ("every violation at once", local("http:\n  disabled: 'no'\n  requestRate: {num: -1, interval: 1s, burst: 2}\n"
                                      "udp: {}"),
     ["policies.yaml:14: spec.from[0].default.local.http.disabled: must be a boolean, got a string",
      "policies.yaml:15: spec.from[0].default.local.http.requestRate.burst: unknown field (expected one of: num, interval)",
      "policies.yaml:15: spec.from[0].default.local.http.requestRate.num: must be between 1 and 4294967295, got -1",
      "policies.yaml:16: spec.from[0].default.local.udp: unknown field (expected one of: http, tcp)"]),
]


@pytest.mark.parametrize("body", GOOD.values(), ids=GOOD.keys())
def test_good_specs_pass(tmp_path: Path, body: str) -> None:
    demo_mesh(tmp_path, FixedAddresses(first_port=20001), policy(body))
    assert violations(tmp_path) == []


@pytest.mark.parametrize(("body", "expected"), table_cases(BAD))
def test_bad_specs_report_each_violation_with_file_line_and_path(tmp_path: Path, body: str, expected: list[str]) -> None:
    demo_mesh(tmp_path, FixedAddresses(first_port=20001), policy(body))
    assert_violations_start_with(violations(tmp_path), expected)


# --- render -----------------------------------------------------------------------------------------------------


def test_every_proxy_passes_envoy_validate(tmp_path: Path) -> None:
    desired = demo_mesh(tmp_path / "desired", FixedAddresses(first_port=20001)).load()
    assert envoy_validates(desired, tmp_path / "state") == dict.fromkeys(["admin", "backend", "ledger", "web", "egress"])


def test_one_bucket_for_every_client_of_the_inbound(tmp_path: Path) -> None:
    manager = chain_filters(proxies_of(tmp_path)["backend"])[-1]["typed_config"]
    limit, router = manager["http_filters"]
    assert router["name"] == "envoy.filters.http.router"
    assert limit["name"] == "envoy.filters.http.local_ratelimit:Mesh"
    config = limit["typed_config"]  # not wrapped in a client matcher: the rule is every client's
    assert config["@type"].endswith("local_ratelimit.v3.LocalRateLimit")
    assert config["token_bucket"] == {"max_tokens": 3, "tokens_per_fill": 3, "fill_interval": "3600s"}
    assert config["status"] == {"code": 503}
    assert [h["header"]["key"] for h in config["response_headers_to_add"]] == ["x-rate-limited", "x-limit"]


def test_a_rule_for_every_client_alone_is_not_wrapped(tmp_path: Path) -> None:
    egress = proxies_of(tmp_path)["egress"]
    chain = {c["name"]: c for c in egress.listeners[0]["filter_chains"]}["mes:default:httpbin"]
    first = chain["filters"][0]["typed_config"]["http_filters"][0]
    assert first["name"] == "envoy.filters.http.local_ratelimit:Mesh"
    config = first["typed_config"]
    assert config["@type"].endswith("local_ratelimit.v3.LocalRateLimit")
    assert config["stat_prefix"] == "mes_default_httpbin.rate_limit.mesh"
    every_request = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    assert config["filter_enabled"] == config["filter_enforced"] == every_request
    assert "status" not in config  # Envoy's 429


def test_disabled_sets_no_limit(tmp_path: Path) -> None:
    body = local("http:\n  disabled: true\n  requestRate: {num: 5, interval: 1s}")
    manager = chain_filters(proxies_of(tmp_path, policy(body))["backend"])[-1]["typed_config"]
    assert [f["name"] for f in manager["http_filters"]] == ["envoy.filters.http.router"]


def test_tcp_connection_rate_goes_before_the_terminal_filter(tmp_path: Path) -> None:
    body = local("http:\n  requestRate: {num: 5, interval: 1s}\ntcp:\n  connectionRate: {num: 7, interval: 1s}")
    backend = chain_filters(proxies_of(tmp_path, policy(body))["backend"])
    assert [f["name"] for f in backend] == ["envoy.filters.network.local_ratelimit",
                                            "envoy.filters.network.http_connection_manager"]
    assert backend[0]["typed_config"]["token_bucket"] == {"max_tokens": 7, "tokens_per_fill": 7, "fill_interval": "1s"}
    ledger = chain_filters(proxies_of(tmp_path / "2")["ledger"])
    assert [f["name"] for f in ledger] == ["envoy.filters.network.local_ratelimit", "envoy.filters.network.tcp_proxy"]


# --- real traffic -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, loopback: Loopback) -> Iterator[MeshFiles]:
    yield from running_mesh(tmp_path_factory.mktemp("rate_limit"), lambda desired: demo_mesh(desired, loopback))


def limited(http: httpx.Client, admin: str, prefix: str) -> dict[str, int]:
    return stats_by_suffix(http, admin, rf"^{prefix}\.http_local_rate_limit\.(ok|rate_limited)$")


@pytest.mark.envoy
def test_on_a_sidecar_n_pass_then_the_configured_status_and_headers(running: MeshFiles, http: httpx.Client) -> None:
    web = [http.get(running.url("web", "backend", f"/web/{i}")) for i in range(5)]
    assert [a.status_code for a in web] == [200, 200, 200, 503, 503]
    assert [a.json()["path"] for a in web[:3]] == ["/web/0", "/web/1", "/web/2"]
    assert web[3].headers["x-rate-limited"] == "true" and web[3].headers["x-limit"] == "3-per-hour"
    # One bucket for every client of the inbound (as Kuma): web emptied it, so admin is limited too.
    admin = [http.get(running.url("admin", "backend", f"/admin/{i}")) for i in range(2)]
    assert [(a.status_code, a.headers.get("x-rate-limited")) for a in admin] == [(503, "true"), (503, "true")]
    scope = next(n for n in stats(http, running.admin["backend"], r"rate_limit\.mesh\.http_local_rate_limit\.ok$"))
    prefix = scope.removesuffix(".mesh.http_local_rate_limit.ok").replace(".", r"\.")
    assert limited(http, running.admin["backend"], prefix + r"\.mesh") == {"ok": 3, "rate_limited": 4}


@pytest.mark.envoy
def test_on_the_egress_the_limit_is_shared_by_every_client(running: MeshFiles, http: httpx.Client) -> None:
    before = limited(http, running.admin["egress"], r"mes_default_httpbin\.rate_limit\.mesh")
    passed = [http.get(running.url(client, "mes:httpbin", f"/{client}")) for client in ("web", "admin", "web", "admin")]
    assert [(a.status_code, a.json()["service"]) for a in passed] == [(200, "httpbin")] * 4
    over = [http.get(running.url(client, "mes:httpbin", "/")) for client in ("web", "admin")]
    assert [(a.status_code, a.headers.get("x-egress-limited")) for a in over] == [(429, "true"), (429, "true")]
    after = limited(http, running.admin["egress"], r"mes_default_httpbin\.rate_limit\.mesh")
    assert (after["ok"] - before["ok"], after["rate_limited"] - before["rate_limited"]) == (4, 2)


@pytest.mark.envoy
def test_tcp_connection_rate(running: MeshFiles, http: httpx.Client) -> None:
    outcomes = []
    for _ in range(3):
        # A connection each: the client's tcp_proxy opens one upstream connection per downstream connection.
        with httpx.Client(trust_env=False, timeout=5.0) as fresh:
            try:
                outcomes.append(fresh.get(running.url("web", "ledger", "/")).json()["service"])
            except httpx.TransportError as e:
                outcomes.append(type(e).__name__)
    assert outcomes[:2] == ["ledger", "ledger"]
    assert outcomes[2] in ("RemoteProtocolError", "ReadError", "ConnectError")
    (count,) = stats(http, running.admin["ledger"], r"\.tcp_rate_limit\.rate_limited$").values()
    assert count == 1
