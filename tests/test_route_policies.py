"""Policies that target a MeshHTTPRoute (Kuma v2.14.3): MeshTimeout and MeshRetry with a top-level
`targetRef: {kind: MeshHTTPRoute}` (their `to` items of kind Mesh) or a `to` item of kind MeshHTTPRoute, and
MeshLoadBalancingStrategy's hashPolicies in such a `to` item. Their settings go on the Envoy routes that MeshHTTPRoute
made, on the proxies where it is rendered, merged over what applies to the route's destination (MeshHTTPRoute is
the most specific kind, as Kuma's TargetRefKind order); they show in the origins, `explain` and the behaviour summary.
What Kuma's plugins do not apply per route is refused at its line. Kuma's verdicts on its own validator cases are in
tests/data/kuma_parity.yaml."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Loopback

from meshplan.match.behaviour import facts
from meshplan.match.explain import explain_policy, explain_proxy, render_text
from meshplan.match.unused import warnings
from meshplan.model import ProxyConfig
from meshplan.render.proxies import build_proxy
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    Service,
    assert_answered_slowly,
    assert_timed_out,
    running_mesh,
    stat,
    violations,
    wait_for_stat,
    write_mesh,
)

# `slow` and `flaky` are web-1's routes only (admin-1 calls backend too, without them). The MeshTimeout targets
# `slow` in a `to` item, the MeshRetry targets `flaky` as its top-level targetRef; `backend-wide` is a MeshTimeout for
# the whole destination, which the route's own item overrides field by field.
POLICIES = """\
type: MeshHTTPRoute
mesh: default
name: slow
spec:
  targetRef: {kind: Dataplane, name: web-1}
  to:
    - targetRef: {kind: MeshService, name: backend}
      rules:
        - matches: [{path: {type: Exact, value: /delay/1500}}]
          default:
            backendRefs: [{kind: MeshService, name: backend}]
---
type: MeshHTTPRoute
mesh: default
name: flaky
spec:
  targetRef: {kind: Dataplane, name: web-1}
  to:
    - targetRef: {kind: MeshService, name: backend}
      rules:
        - matches: [{path: {type: Exact, value: /flaky/2/route}}]
          default:
            backendRefs: [{kind: MeshService, name: backend}]
---
type: MeshTimeout
mesh: default
name: slow-route
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshHTTPRoute, name: slow}
      default:
        http: {requestTimeout: 300ms}
---
type: MeshTimeout
mesh: default
name: backend-wide
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        http: {requestTimeout: 5s, streamIdleTimeout: 50s}
---
type: MeshRetry
mesh: default
name: flaky-route
spec:
  targetRef: {kind: MeshHTTPRoute, name: flaky}
  to:
    - targetRef: {kind: Mesh}
      default:
        http: {numRetries: 3, retryOn: ["503"]}
"""


def line_of(text: str, needle: str, after: str = "") -> int:
    """The 1-based line of the first `needle` after the first `after`."""
    start = text.index(after) if after else 0
    return text[: text.index(needle, start)].count("\n") + 1


def routes_mesh(root: Path, addresses: Addresses, policies: str = POLICIES) -> MeshFiles:
    services = [Service("backend", instance="backend-1"), Service("web", calls=("backend",), instance="web-1"),
                Service("admin", calls=("backend",), instance="admin-1")]
    return write_mesh(root, addresses, services, policies=policies)


def outbound_routes(proxy: ProxyConfig) -> list[dict[str, Any]]:
    listener = next(l for l in proxy.listeners if l["name"].startswith("outbound:"))
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[dict[str, Any]] = manager["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def route_origins(proxy: ProxyConfig, index: int, *keys: str) -> list[str]:
    listener = next(l for l in proxy.listeners if l["name"].startswith("outbound:"))
    path = ("filter_chains", 0, "filters", 0, "typed_config", "route_config", "virtual_hosts", 0, "routes", index,
            "route", *keys)
    return proxy.origins["listener"][listener["name"]].get(path, [])


def by_path(routes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["match"].get("path", r["match"].get("prefix", "")): r for r in routes}


@pytest.fixture
def rendered(tmp_path: Path) -> tuple[MeshFiles, dict[str, ProxyConfig]]:
    files = routes_mesh(tmp_path / "mesh", FixedAddresses())
    return files, files.proxies()


def test_route_timeout_lands_on_its_route_only_and_overrides_the_destination_field_by_field(
        rendered: tuple[MeshFiles, dict[str, ProxyConfig]]) -> None:
    files, proxies = rendered
    routes = outbound_routes(proxies["web-1"])
    paths = [r["match"].get("path", r["match"].get("prefix")) for r in routes]
    assert paths == ["/flaky/2/route", "/delay/1500", "/"]
    slow, catch_all = by_path(routes)["/delay/1500"]["route"], by_path(routes)["/"]["route"]
    # the route's own item wins for requestTimeout; the destination's streamIdleTimeout stays under it
    assert (slow["timeout"], slow["idle_timeout"]) == ("0.300s", "50s")
    assert (catch_all["timeout"], catch_all["idle_timeout"]) == ("5s", "50s")
    policies = str(files.root / "policies.yaml")
    slow_line = line_of(POLICIES, "http:", after="name: slow-route")
    wide_line = line_of(POLICIES, "http:", after="name: backend-wide")
    assert route_origins(proxies["web-1"], 1, "timeout") == [f"MeshTimeout/slow-route ({policies}:{slow_line})"]
    assert route_origins(proxies["web-1"], 1, "idle_timeout") == [f"MeshTimeout/backend-wide ({policies}:{wide_line})"]
    # admin-1 has no such route: only the destination's timeout, everywhere
    assert [r["route"]["timeout"] for r in outbound_routes(proxies["admin-1"])] == ["5s"]


def test_route_retry_only_on_the_route_it_targets(rendered: tuple[MeshFiles, dict[str, ProxyConfig]]) -> None:
    files, proxies = rendered
    routes = by_path(outbound_routes(proxies["web-1"]))
    policy = routes["/flaky/2/route"]["route"]["retry_policy"]
    assert (policy["num_retries"], policy["retriable_status_codes"]) == (3, [503])
    assert "retry_policy" not in routes["/delay/1500"]["route"] and "retry_policy" not in routes["/"]["route"]
    line = line_of(POLICIES, "http:", after="name: flaky-route")
    assert route_origins(proxies["web-1"], 0, "retry_policy", "num_retries") == [
        f"MeshRetry/flaky-route ({files.root / 'policies.yaml'}:{line})"]
    assert all("retry_policy" not in r["route"] for r in outbound_routes(proxies["admin-1"]))


def test_explain_shows_the_route_its_merge_and_where_a_route_policy_lands(
        rendered: tuple[MeshFiles, dict[str, ProxyConfig]]) -> None:
    files, _ = rendered
    desired = files.load()
    text = render_text(explain_proxy(desired, "web-1"))
    where = 'route [{"path": {"type": "Exact", "value": "/delay/1500"}}] of MeshHTTPRoute/slow'
    assert f"MeshTimeout to outbound {files.address['web-1']}" in text and where in text
    section = text[text.index(where):].split("\n\n")[0]
    assert 'http.requestTimeout: "300ms"  # MeshTimeout/slow-route' in section
    assert "overrides MeshTimeout/backend-wide" in section
    assert 'http.streamIdleTimeout: "50s"  # MeshTimeout/backend-wide' in section
    assert "no Envoy field on this proxy comes from it" not in section
    retry = render_text(explain_policy(desired, "web-1", "MeshRetry/flaky-route"))
    assert "lands on outbound" in retry and "of MeshHTTPRoute/flaky" in retry and "not on" not in retry
    elsewhere = render_text(explain_policy(desired, "admin-1", "MeshRetry/flaky-route"))
    assert "lands nowhere on this proxy" in elsewhere and "targetRef MeshHTTPRoute 'flaky' selects" in elsewhere


def test_behaviour_summary_has_a_fact_per_targeted_route(rendered: tuple[MeshFiles, dict[str, ProxyConfig]]) -> None:
    files, _ = rendered
    desired = files.load()
    web = next(dp for dp in desired.dataplanes if dp.name == "web-1")
    found = {(f.destination, f.aspect): f for f in facts(desired, build_proxy(desired, web).match, web)}
    slow = found[('backend (route [{"path": {"type": "Exact", "value": "/delay/1500"}}] of MeshHTTPRoute/slow)',
                  "timeout")]
    assert slow.value == {"http": {"requestTimeout": "300ms", "streamIdleTimeout": "50s"}}
    assert any(o.startswith("MeshTimeout/slow-route ") for o in slow.origins)
    assert found[("backend", "timeout")].value == {"http": {"requestTimeout": "5s", "streamIdleTimeout": "50s"}}
    flaky = [f for (d, a), f in found.items() if a == "retry"]
    assert len(flaky) == 1 and "MeshHTTPRoute/flaky" in flaky[0].destination


def test_load_balancing_hash_policies_on_a_route(tmp_path: Path) -> None:
    extra = """\
---
type: MeshLoadBalancingStrategy
mesh: default
name: sticky-slow
spec:
  targetRef: {kind: Dataplane, name: web-1}
  to:
    - targetRef: {kind: MeshHTTPRoute, labels: {kuma.io/display-name: slow}}
      default:
        hashPolicies: [{type: Header, header: {name: x-session}}]
"""
    files = routes_mesh(tmp_path / "mesh", FixedAddresses(), POLICIES + extra)
    routes = by_path(outbound_routes(files.proxies()["web-1"]))
    assert routes["/delay/1500"]["route"]["hash_policy"] == [{"header": {"header_name": "x-session"}}]
    assert "hash_policy" not in routes["/"]["route"] and "hash_policy" not in routes["/flaky/2/route"]["route"]


def test_a_route_name_nothing_has_is_a_warning(tmp_path: Path) -> None:
    policy = """\
type: MeshTimeout
mesh: default
name: typo
spec:
  to:
    - targetRef: {kind: MeshHTTPRoute, name: slwo}
      default: {http: {requestTimeout: 1s}}
"""
    files = routes_mesh(tmp_path / "mesh", FixedAddresses(), POLICIES + "---\n" + policy)
    found = [w for w in warnings(files.load()) if "MeshTimeout/typo" in w]
    line = line_of(POLICIES + "---\n" + policy, "kind: MeshHTTPRoute, name: slwo")
    assert found == [f"{files.root / 'policies.yaml'}:{line}: MeshTimeout/typo: targetRef names MeshHTTPRoute 'slwo', "
                     "a MeshHTTPRoute that does not exist in the policy's mesh, so the policy changes nothing "
                     "(did you mean 'slow'?)"]
    # a top-level MeshHTTPRoute is not "a policy that selects no proxy": it goes where its route goes
    assert not [w for w in warnings(files.load()) if "MeshRetry/flaky-route" in w]


# Each: the policy's spec (YAML), and the violations (field path, a fragment of the message) it must report.
BAD = [
    ("per-route MeshTimeout fields only, in a `to` item",
     "type: MeshTimeout\nspec:\n  to:\n    - targetRef: {kind: MeshHTTPRoute, name: slow}\n      default:\n"
     "        connectionTimeout: 2s\n        http: {requestTimeout: 1s, requestHeadersTimeout: 1s}\n",
     [("spec.to[0].default.connectionTimeout", "not supported on a MeshHTTPRoute's routes"),
      ("spec.to[0].default.http.requestHeadersTimeout", "per route, MeshTimeout sets only http.requestTimeout, "
       "http.streamIdleTimeout")]),
    ("Kuma's words under a top-level MeshHTTPRoute",
     "type: MeshTimeout\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: slow}\n  to:\n    - targetRef: {kind: Mesh}\n"
     "      default: {idleTimeout: 1m, http: {maxStreamDuration: 1m}}\n",
     [("spec.to[0].default.idleTimeout", "can't be specified when top-level TargetRef is referencing MeshHTTPRoute"),
      ("spec.to[0].default.http.maxStreamDuration", "can't be specified when top-level TargetRef")]),
    ("no tcp retries on a route",
     "type: MeshRetry\nspec:\n  to:\n    - targetRef: {kind: MeshHTTPRoute, name: slow}\n      default:\n"
     "        tcp: {maxConnectAttempt: 2}\n",
     [("spec.to[0].default.tcp", "per route, MeshRetry sets only http, grpc")]),
    ("no from or rules under a top-level MeshHTTPRoute",
     "type: MeshTimeout\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: slow}\n  from:\n    - targetRef: {kind: Mesh}\n"
     "      default: {http: {requestTimeout: 1s}}\n",
     [("spec.from", "must not be defined")]),
    ("no top-level rules under a top-level MeshHTTPRoute",
     "type: MeshTimeout\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: slow}\n  rules:\n"
     "    - default: {http: {requestTimeout: 1s}}\n",
     [("spec.rules", "must not be defined")]),
    ("a MeshHTTPRoute targetRef takes no sectionName, tags or proxyTypes, and a name or labels",
     "type: MeshRetry\nspec:\n  to:\n    - targetRef: {kind: MeshHTTPRoute, name: slow, sectionName: x}\n"
     "      default: {http: {numRetries: 1}}\n    - targetRef: {kind: MeshHTTPRoute}\n"
     "      default: {http: {numRetries: 1}}\n",
     [("spec.to[0].targetRef.sectionName", "must not be set with kind MeshHTTPRoute"),
      ("spec.to[1].targetRef", "name or labels must be set when kind is MeshHTTPRoute")]),
    ("kinds Kuma allows on a route that meshplan does not implement there",
     "type: MeshAccessLog\nspec:\n  to:\n    - targetRef: {kind: MeshHTTPRoute, name: slow}\n"
     "      default: {backends: [{type: File, file: {path: /tmp/a.log}}]}\n",
     [("spec.to[0].targetRef.kind", "not implemented by meshplan (it would be ignored): MeshAccessLog on the routes")]),
    ("MeshRateLimit under a top-level MeshHTTPRoute: Kuma configures it on MeshGateways only, and meshplan has none",
     "type: MeshRateLimit\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: slow}\n  to:\n    - targetRef: {kind: Mesh}\n"
     "      default: {local: {http: {requestRate: {num: 2, interval: 10s}}}}\n",
     [("spec.to", "not supported by meshplan: MeshRateLimit `to` configures MeshGateways only")]),
    ("MeshRateLimit `from` under a top-level MeshHTTPRoute, refused as Kuma at `from` alone",
     "type: MeshRateLimit\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: slow}\n  from:\n    - targetRef: {kind: Mesh}\n"
     "      default: {local: {http: {requestRate: {num: 2, interval: 10s}}}}\n",
     [("spec.from", "must not be defined: a top-level MeshHTTPRoute targetRef configures a route's traffic on a "
       "MeshGateway")]),
    ("MeshRateLimit on a route in a `to` item, which Kuma never allows",
     "type: MeshRateLimit\nspec:\n  targetRef: {kind: Mesh, proxyTypes: [Sidecar]}\n  to:\n"
     "    - targetRef: {kind: MeshHTTPRoute, name: slow}\n      default: {local: {http: {requestRate: {num: 2, interval: 10s}}}}\n",
     [("spec.to", "MeshRateLimit `to` configures MeshGateways only")]),
    ("kinds Kuma never allows on a route",
     "type: MeshCircuitBreaker\nspec:\n  to:\n    - targetRef: {kind: MeshHTTPRoute, name: slow}\n"
     "      default: {connectionLimits: {maxConnections: 2}}\n",
     [("spec.to[0].targetRef.kind", "value 'MeshHTTPRoute' is not supported: MeshCircuitBreaker cannot target")]),
    ("a MeshHTTPRoute targetRef in `from`",
     "type: MeshFaultInjection\nspec:\n  from:\n    - targetRef: {kind: MeshHTTPRoute, name: slow}\n"
     "      default: {http: [{abort: {httpStatus: 500, percentage: 50}}]}\n",
     [("spec.from[0].targetRef.kind", "value 'MeshHTTPRoute' is not supported: MeshFaultInjection cannot target a "
       "MeshHTTPRoute in a `from` item")]),
]


@pytest.mark.parametrize(("spec", "expected"), [pytest.param(s, e, id=i) for i, s, e in BAD])
def test_route_targeting_refusals_at_file_line_and_path(tmp_path: Path, spec: str, expected: list[tuple[str, str]]
                                                        ) -> None:
    kind, _, body = spec.partition("\n")
    text = f"{kind}\nmesh: default\nname: bad\n{body}"
    files = routes_mesh(tmp_path / "mesh", FixedAddresses(), POLICIES + "---\n" + text)
    found = [v for v in violations(files.root) if "policies.yaml" in v]
    assert len(found) == len(expected), "\n".join(found)
    whole = (POLICIES + "---\n" + text).splitlines()
    for path, fragment in expected:
        reported = next((v for v in found if v.partition(": ")[2].startswith(f"{path}: ") and fragment in v), None)
        assert reported is not None, (path, fragment, found)
        where = reported.partition(": ")[0]
        line = int(where.rpartition(":")[2])
        # the line it names is the field's own (its key, or the item's targetRef mapping)
        last = path.rpartition(".")[2].split("[")[0]
        assert last in whole[line - 1], (reported, whole[line - 1])


# --- on real Envoys -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, loopback: Loopback) -> Iterator[MeshFiles]:
    yield from running_mesh(tmp_path_factory.mktemp("route-policies"), lambda d: routes_mesh(d, loopback))


@pytest.mark.envoy
def test_route_timeout_cuts_its_path_only(running: MeshFiles, http: httpx.Client) -> None:
    assert_timed_out(http, running, "web-1", "backend")
    # another path of the same destination, through the same proxy: the destination's 5s, so it answers
    slow = http.get(running.url("web-1", "backend", "/delay/900"))
    assert slow.status_code == 200 and slow.json()["delay_ms"] == 900
    # the same path from a proxy where the route is not rendered
    assert_answered_slowly(http, running, "admin-1", "backend")
    dump = json.dumps(http.get(f"{running.admin['web-1']}/config_dump").json())
    assert '"timeout": "0.300s"' in dump


@pytest.mark.envoy
def test_route_retry_retries_its_path_only(running: MeshFiles, http: httpx.Client) -> None:
    # /flaky/2/<key> answers 503 twice per key, then 200: the route's three retries get through
    retried = http.get(running.url("web-1", "backend", "/flaky/2/route"))
    assert retried.status_code == 200 and retried.json()["attempt"] == 3
    assert wait_for_stat(http, running.admin["web-1"], "cluster.backend.upstream_rq_retry", 2) == 2
    # the same kind of path outside the route: no retry policy, the first 503 comes back
    plain = http.get(running.url("web-1", "backend", "/flaky/2/elsewhere"))
    assert plain.status_code == 503 and plain.json()["attempt"] == 1
    assert stat(http, running.admin["web-1"], "cluster.backend.upstream_rq_retry") == 2


def test_a_route_policy_the_placement_keeps_off_the_sidecar_is_refused(tmp_path: Path) -> None:
    """A route to a MeshExternalService lives on the sidecar; MeshLoadBalancingStrategy for an external service is
    the egress's (the seed's placement table), so on that route's Envoy routes it would change nothing."""
    services = [Service("web", calls=("mes:httpbin",), instance="web-1")]
    policies = """\
type: MeshHTTPRoute
mesh: default
name: to-httpbin
spec:
  targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
  to:
    - targetRef: {kind: MeshExternalService, name: httpbin}
      rules:
        - matches: [{path: {type: PathPrefix, value: /get}}]
          default:
            filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: b}]}}]
---
type: MeshLoadBalancingStrategy
mesh: default
name: sticky
spec:
  to:
    - targetRef: {kind: MeshHTTPRoute, name: to-httpbin}
      default:
        hashPolicies: [{type: Header, header: {name: x-user}}]
"""
    files = write_mesh(tmp_path / "mesh", FixedAddresses(), services, externals={"httpbin": "http"}, policies=policies)
    found = [v for v in violations(files.root) if "policies.yaml" in v]
    line = line_of(policies, "targetRef: {kind: MeshHTTPRoute, name: to-httpbin}")
    assert found == [f"policies.yaml:{line}: spec.to[0].targetRef: MeshHTTPRoute 'to-httpbin' routes to "
                     "MeshExternalService httpbin on the sidecar, where MeshLoadBalancingStrategy for a "
                     "MeshExternalService is not implemented: the placement table says Egress (to + proxyType: "
                     '["egress"])'], found
