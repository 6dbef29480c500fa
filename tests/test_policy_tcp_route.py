"""MeshTCPRoute: its validation table, its render (golden), Envoy's verdict on it, and real connections through it."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import Loopback
from route_helpers import (
    dataplane,
    envoy_problems,
    live_differences,
    write_desired,
)

from meshplan.compare.canonical import canonical
from meshplan.model import ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import MESH, running_sandbox, violations

# web calls db (TCP), api (HTTP) and cache (HTTP); each has a second version to route to.
WEB_OUTBOUNDS = """
    - {address: 127.0.8.1, port: 10001, tags: {kuma.io/service: db}}
    - {address: 127.0.8.1, port: 10002, tags: {kuma.io/service: api}}
    - {address: 127.0.8.1, port: 10003, tags: {kuma.io/service: cache}}
    - {address: 127.0.8.1, port: 10004, backendRef: {kind: MeshExternalService, name: pg}}
    """
BASE = {
    "mesh.yaml": MESH,
    "web.yaml": dataplane("web", "127.0.8.1", "web", outbounds=WEB_OUTBOUNDS),
    "db-1.yaml": dataplane("db-1", "127.0.8.2", "db", protocol="tcp"),
    "db-v2.yaml": dataplane("db-v2-1", "127.0.8.3", "db-v2", protocol="tcp"),
    "api-1.yaml": dataplane("api-1", "127.0.8.4", "api"),
    "api-v2.yaml": dataplane("api-v2-1", "127.0.8.5", "api-v2", version="v2"),
    "cache-1.yaml": dataplane("cache-1", "127.0.8.6", "cache"),
    "egress.yaml": """
        type: ZoneEgress
        name: egress
        networking:
          address: 127.0.8.10
          port: 10002
        """,
    "external.yaml": """
        type: MeshExternalService
        mesh: default
        name: pg
        spec:
          match:
            port: 5432
            protocol: tcp
          endpoints:
            - address: 127.0.8.20
              port: 15432
        """,
}

HEAD = """
type: MeshTCPRoute
mesh: default
name: t1
spec:
  targetRef:
    kind: MeshService
    name: web
  to:
    - targetRef:
        kind: MeshService
        name: db
      rules:
"""  # the first rule is on line 13


def route(rules: str, head: str = HEAD) -> str:
    return head.lstrip("\n") + textwrap.indent(textwrap.dedent(rules).lstrip("\n"), " " * 8)


TO_DB_V2 = """
    - default:
        backendRefs: [{kind: MeshService, name: db-v2}]
    """

BAD: list[tuple[str, str, list[str]]] = [
    ("two rules", route(TO_DB_V2 + TO_DB_V2), ["12: spec.to[0].rules: takes at most one rule"]),
    ("rule without default", route("- {}\n"), ["13: spec.to[0].rules[0]: `default` is required"]),
    ("rule with matches", route("- matches: [{}]\n  default: {backendRefs: [{kind: MeshService, name: db-v2}]}\n"),
     ["13: spec.to[0].rules[0].matches: unknown field (expected one of: default)"]),
    ("no backendRefs", route("- default: {}\n"),
     ["13: spec.to[0].rules[0].default.backendRefs: `backendRefs` is required"]),
    ("empty backendRefs", route("- default: {backendRefs: []}\n"),
     ["13: spec.to[0].rules[0].default.backendRefs: needs at least one backendRef"]),
    ("filters", route("- default:\n    backendRefs: [{kind: MeshService, name: db-v2}]\n    filters: []\n"),
     ["15: spec.to[0].rules[0].default.filters: unknown field (expected one of: backendRefs)"]),
    ("every weight zero", route("""
        - default:
            backendRefs:
              - {kind: MeshService, name: db-v2, weight: 0}
              - {kind: MeshService, name: db, weight: 0}
        """), ["14: spec.to[0].rules[0].default.backendRefs: every backendRef has weight 0"]),
    ("backend fields", route("""
        - default:
            backendRefs:
              - {kind: MeshHTTPRoute, name: db-v2}
              - {kind: MeshServiceSubset, name: db, weight: 1.5}
              - {kind: MeshService, name: db, colour: blue}
        """), ["15: spec.to[0].rules[0].default.backendRefs[0].kind: must be one of MeshService, MeshServiceSubset, "
               "MeshExternalService, got 'MeshHTTPRoute'",
               "16: spec.to[0].rules[0].default.backendRefs[1]: `tags` is required",
               "16: spec.to[0].rules[0].default.backendRefs[1].weight: must be an integer, got a number",
               "17: spec.to[0].rules[0].default.backendRefs[2].colour: unknown field"]),
    ("to a subset", route(TO_DB_V2, HEAD.replace("kind: MeshService\n        name: db", "kind: MeshSubset\n        tags: {a: b}")),
     ["10: spec.to[0].targetRef.kind: MeshTCPRoute routes the traffic to one destination: the `to` targetRef kind "
      "must be MeshService or MeshExternalService, got MeshSubset"]),
    ("external backend without proxyType", route("""
        - default:
            backendRefs: [{kind: MeshExternalService, name: pg}]
        """), ["14: spec.to[0].rules[0].default.backendRefs[0].kind: a policy that references a MeshExternalService "
               "must set proxyType in its top-level targetRef; the placement table says MeshTCPRoute for a "
               "MeshExternalService is implemented on: Sidecar (to)"]),
    ("external destination on the egress",
     route(TO_DB_V2, HEAD.replace("name: web\n", "name: web\n    proxyType: [Egress]\n")
           .replace("kind: MeshService\n        name: db", "kind: MeshExternalService\n        name: pg")),
     ["10: spec.to[0].targetRef: MeshTCPRoute to a MeshExternalService is not on the egress; the placement table "
      "says MeshTCPRoute for a MeshExternalService is implemented on: Sidecar (to)"]),
    ("backend that does not exist", route("""
        - default:
            backendRefs:
              - {kind: MeshService, name: db-v3}
              - {kind: MeshServiceSubset, name: db, tags: {version: v7}}
        """), ["15: spec.to[0].rules[0].default.backendRefs[0].name: no Dataplane in mesh 'default' has an inbound for "
               "service 'db-v3'",
               "16: spec.to[0].rules[0].default.backendRefs[1].tags: no instance of service 'db' has the tags {version=v7}"]),
]

WEIGHTED = """
    type: MeshTCPRoute
    mesh: default
    name: api-canary
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: MeshService
            name: api
          rules:
            - default:
                backendRefs:
                  - {kind: MeshService, name: api, weight: 1}
                  - {kind: MeshService, name: api-v2, weight: 1}
                  - {kind: MeshService, name: db, weight: 0}
        - targetRef:
            kind: MeshService
            name: cache
          rules:
            - default:
                backendRefs: [{kind: MeshService, name: api-v2}]
    """
CACHE_HTTP_ROUTE = """
    type: MeshHTTPRoute
    mesh: default
    name: cache-http
    spec:
      to:
        - targetRef:
            kind: MeshService
            name: cache
          rules:
            - matches: [{path: {type: PathPrefix, value: /v2}}]
              default:
                backendRefs: [{kind: MeshService, name: api-v2}]
    """
EXTERNAL = """
    type: MeshTCPRoute
    mesh: default
    name: pg
    spec:
      targetRef:
        kind: Mesh
        proxyType: [Sidecar]
      to:
        - targetRef:
            kind: MeshExternalService
            name: pg
          rules:
            - default:
                backendRefs: [{kind: MeshServiceSubset, name: db, tags: {version: v1}}]
        - targetRef:
            kind: MeshService
            name: db
          rules:
            - default:
                backendRefs: [{kind: MeshExternalService, name: pg}]
    """

GOOD: list[tuple[str, dict[str, str]]] = [
    ("one backend", {"route.yaml": route(TO_DB_V2)}),
    ("no rules: the destination itself", {"route.yaml": HEAD.lstrip("\n") + "        []\n"}),
    ("weights", {"weighted.yaml": WEIGHTED}),
    ("external services, with proxyType", {"external.yaml": BASE["external.yaml"], "pg.yaml": EXTERNAL}),
]


@pytest.mark.parametrize(("files", "expected"), [pytest.param({"route.yaml": text}, e, id=i) for i, text, e in BAD])
def test_bad_specs_are_reported_with_file_line_and_path(tmp_path: Path, files: dict[str, str], expected: list[str]) -> None:
    root = write_desired(tmp_path / "desired", {**BASE, **files})
    found = violations(root)
    for fragment in expected:
        assert any(v.startswith(f"route.yaml:{fragment}") for v in found), (fragment, found)
    assert len(found) == len(expected), found


@pytest.mark.parametrize("files", [pytest.param(files, id=i) for i, files in GOOD])
def test_good_specs_pass(tmp_path: Path, files: dict[str, str]) -> None:
    root = write_desired(tmp_path / "desired", {**BASE, **files})
    assert violations(root) == []


# --- render ---------------------------------------------------------------------------------------------------


def render(tmp_path: Path, files: dict[str, str]) -> dict[str, ProxyConfig]:
    root = write_desired(tmp_path / "desired", {**BASE, **files})
    return {p.name: p for p in render_all(load_and_parse(root))}


def outbound_filter(proxy: ProxyConfig, port: int) -> dict:  # type: ignore[type-arg]
    listener = next(lst for lst in proxy.listeners if lst["name"] == f"outbound:127.0.8.1:{port}")
    found: dict = listener["filter_chains"][0]["filters"][0]  # type: ignore[type-arg]
    return found


def test_one_backend_is_the_cluster_and_several_are_weighted(tmp_path: Path) -> None:
    web = render(tmp_path, {"route.yaml": route(TO_DB_V2), "weighted.yaml": WEIGHTED})["web"]
    assert outbound_filter(web, 10001)["typed_config"]["cluster"] == "db-v2"
    api = outbound_filter(web, 10002)
    # An HTTP outbound with a TCP route (and no HTTP route) becomes a TCP proxy, as Kuma makes it.
    assert api["name"] == "envoy.filters.network.tcp_proxy"
    config = api["typed_config"]
    assert "cluster" not in config
    assert config["weighted_clusters"] == {"clusters": [{"name": "api", "weight": 1}, {"name": "api-v2", "weight": 1}]}
    assert config["stat_prefix"] == "outbound_127_0_8_1_10002"  # the connection manager's, kept
    origins = web.origins["listener"]["outbound:127.0.8.1:10002"]
    assert [o.split(" ")[0] for o in origins[("filter_chains", 0, "filters", 0, "typed_config", "weighted_clusters")]] == [
        "MeshTCPRoute/api-canary"]
    assert sorted(c["name"] for c in web.clusters) == ["api", "api-v2", "cache", "db", "db-v2", "local:127.0.8.1:18080",
                                                       "mes:default:pg"]


def test_an_http_route_wins_over_a_tcp_route_on_an_http_outbound(tmp_path: Path) -> None:
    web = render(tmp_path, {"weighted.yaml": WEIGHTED, "cache.yaml": CACHE_HTTP_ROUTE})["web"]
    cache = outbound_filter(web, 10003)
    assert cache["name"] == "envoy.filters.network.http_connection_manager"
    routes = cache["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["route"]["cluster"] for r in routes] == ["api-v2", "api-v2", "cache"]


def test_the_more_specific_policy_wins(tmp_path: Path) -> None:
    mesh_wide = route("""
        - default:
            backendRefs: [{kind: MeshService, name: api}]
        """, HEAD.replace("name: t1", "name: t0").replace("    kind: MeshService\n    name: web\n", "    kind: Mesh\n"))
    web = render(tmp_path, {"route.yaml": route(TO_DB_V2), "mesh-wide.yaml": mesh_wide})["web"]
    assert outbound_filter(web, 10001)["typed_config"]["cluster"] == "db-v2"


def test_backends_of_an_external_service_and_to_one(tmp_path: Path) -> None:
    web = render(tmp_path, {"pg.yaml": EXTERNAL})["web"]
    assert outbound_filter(web, 10004)["typed_config"]["cluster"] == "db:version=v1"
    assert outbound_filter(web, 10001)["typed_config"]["cluster"] == "mes:default:pg"


def test_every_rendered_resource_parses_with_the_envoy_protos(tmp_path: Path) -> None:
    for proxy in render(tmp_path, {"weighted.yaml": WEIGHTED, "cache.yaml": CACHE_HTTP_ROUTE, "pg.yaml": EXTERNAL}).values():
        for resource in proxy.clusters + proxy.listeners:
            canonical(resource)


@pytest.mark.envoy
def test_envoy_accepts_every_proxy(tmp_path: Path) -> None:
    files = {"route.yaml": route(TO_DB_V2), "weighted.yaml": WEIGHTED, "cache.yaml": CACHE_HTTP_ROUTE}
    desired = load_and_parse(write_desired(tmp_path / "desired", {**BASE, **files}))
    assert envoy_problems(desired, tmp_path / "state") == {}
    desired = load_and_parse(write_desired(tmp_path / "external" / "desired", {**BASE, "pg.yaml": EXTERNAL}))
    assert envoy_problems(desired, tmp_path / "external" / "state") == {}


# --- real traffic ---------------------------------------------------------------------------------------------


@dataclass
class Mesh:
    proxies: dict[str, ProxyConfig]
    db: str  # web's TCP outbound to db, as a URL: the demo apps speak HTTP, which a TCP proxy carries as bytes
    api: str  # web's HTTP outbound to api


TRAFFIC = """
    type: MeshTCPRoute
    mesh: default
    name: reroute
    spec:
      targetRef:
        kind: MeshService
        name: web
      to:
        - targetRef:
            kind: MeshService
            name: db
          rules:
            - default:
                backendRefs: [{kind: MeshService, name: db-v2}]
        - targetRef:
            kind: MeshService
            name: api
          rules:
            - default:
                backendRefs:
                  - {kind: MeshService, name: api, weight: 1}
                  - {kind: MeshService, name: api-v2, weight: 1}
    """


@pytest.fixture(scope="module")
def routed(loopback: Loopback, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    services = {"web": "http", "db": "tcp", "db-v2": "tcp", "api": "http", "api-v2": "http"}
    ips = {name: loopback.ip() for name in services}
    ports = {name: [loopback.port(ip) for _ in range(3)] for name, ip in ips.items()}
    to_db, to_api = loopback.port(ips["web"]), loopback.port(ips["web"])
    files = {"mesh.yaml": MESH, "route.yaml": TRAFFIC}
    for name, protocol in services.items():
        admin, inbound, app = ports[name]
        ip = ips[name]
        outbounds = ""
        if name == "web":
            outbounds = (f"- {{address: {ip}, port: {to_db}, tags: {{kuma.io/service: db}}}}\n"
                         f"- {{address: {ip}, port: {to_api}, tags: {{kuma.io/service: api}}}}\n")
        files[f"{name}.yaml"] = dataplane(name, ip, name, admin=admin, port=inbound, app=app, protocol=protocol,
                                          outbounds=outbounds)
    root = tmp_path_factory.mktemp("tcp-route")
    desired = load_and_parse(write_desired(root / "desired", files))
    with running_sandbox(desired, root / "state") as started:
        proxies = {p.name: p for p in started}
        yield Mesh(proxies, f"http://{ips['web']}:{to_db}", f"http://{ips['web']}:{to_api}")


def answered_by(url: str) -> str:
    # A fresh connection per request: a TCP proxy picks its backend once per connection.
    with httpx.Client(trust_env=False, timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        answer = client.get(url, headers={"connection": "close"})
    assert answer.status_code == 200, answer.text
    service: str = answer.json()["service"]
    return service


@pytest.mark.envoy
def test_a_tcp_outbound_goes_to_another_service(routed: Mesh) -> None:
    assert [answered_by(f"{routed.db}/q/{i}") for i in range(5)] == ["db-v2"] * 5


@pytest.mark.envoy
def test_weighted_connections_over_an_http_outbound(routed: Mesh) -> None:
    # 1:1 over 30 connections: both answer (the chance that one of them gets none is 2 in 10^9).
    seen = Counter(answered_by(f"{routed.api}/c/{i}") for i in range(30))
    assert set(seen) == {"api", "api-v2"} and sum(seen.values()) == 30


@pytest.mark.envoy
def test_planning_again_against_the_running_envoys_shows_no_change(routed: Mesh) -> None:
    assert live_differences(routed.proxies) == {}
