"""`explain` says what render does: on every proxy of every mesh the tests render for a golden file (and the demo),
every policy render records on the cluster or filter chain of a destination or inbound is one explain lists there,
and explain's mark of a field as written (or not) is render's record.

What is compared, and what is left out:
- A policy is its kind, name and file ("MeshTimeout/web-to-backend (dir/timeout.yaml"): render records some fields
  at the line of the block that decided them (a circuit breaker's `track_remaining` at its `connectionPool`), so
  lines are not compared for the listing. The `written` mark compares the whole origin, line included.
- Origins that are no policy's are left out: the Mesh's `routing.defaultForbidMeshExternalServiceAccess`, which the
  egress's RBAC records beside the permissions.
- Shared resources: on the egress an external service's filter chain is both its inbound (`from`) and its outbound
  (`to`), so the two are one place here; a backend a route adds has a cluster of its own, whose `name` the route
  that named it records (explain names that route beside the backend), and its routes live on the listener of the
  outbound that routes to it, so a route action there may carry what the backend's destination decides (its hash
  policy): such an origin is accepted when explain lists it for the backend.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshplan.match import explain as explain_module
from meshplan.match.explain import (
    NOT_WRITTEN,
    WHOLE_PROXY,
    Section,
    destinations,
    explain_policy,
    explain_proxy,
    inbounds,
    render_text,
    written_anywhere,
)
from meshplan.model import Desired, Inbound, ZoneEgress
from meshplan.render.proxies import applied, build_proxy
from meshplan.validate.resources import load_and_parse
from tests.route_helpers import dataplane, route, write_desired

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "examples" / "demo"

_LINE = re.compile(r":\d+\)$")
_POLICY = re.compile(r"^(\S+/\S+)(?: \S+\[\d+\])? \((.*?)\)(?: \[[^]]*\])?$")  # an optional selector: [targetRef ...]


def policy_of(origin: str) -> str:
    """`Kind/name (file:line)` or `Kind/name to[0] (file:line)` -> `Kind/name (file`."""
    found = _POLICY.match(origin)
    assert found is not None, origin
    return f"{found.group(1)} ({_LINE.sub('', '(' + found.group(2) + ')')[1:]}"


def listed(sections: list[Section]) -> set[str]:
    out: set[str] = set()
    for s in sections:
        out |= {policy_of(a) for a in s.applied}
        for f in s.fields:
            out |= {policy_of(f.set_by), *(policy_of(o) for o in f.overridden)}
    return out


def disagreements(desired: Desired) -> list[str]:
    problems: list[str] = []
    for proxy in [*desired.dataplanes, *desired.egresses]:
        build = applied(build_proxy(desired, proxy))
        explanation = explain_proxy(desired, proxy.name)
        by_where: dict[str, list[Section]] = {}
        # A proxy-wide section (MeshProxyPatch's `default`) is no destination's or inbound's: its policies may be
        # recorded anywhere on the proxy, and each field is written when any resource of the proxy records it.
        wide = [s for s in explanation.sections if s.side == "default"]
        everywhere = listed(wide)
        anywhere = frozenset().union(*(build.origins_in(r) for r in (*build.clusters.values(), *build.listeners.values())))
        for s in wide:
            for f in s.fields:
                removes = any(isinstance(m, dict) and m.get("operation") == "Remove" for m in f.value.values())
                if f.written != (f.set_by in anywhere or removes):
                    problems.append(f"{proxy.name} {s.kind} {f.path}: explain says written={f.written}")
        for s in explanation.sections:
            if s.side != "default":
                by_where.setdefault(s.where, []).append(s)
        # A single-item kind (MeshTrace, MeshMetric) is explained once, for the whole proxy, and may write anywhere.
        whole = by_where.pop(WHOLE_PROXY, [])
        anywhere = written_anywhere(build)
        for s in whole:
            for f in s.fields:
                if f.written != (f.set_by in anywhere):
                    problems.append(f"{proxy.name} {s.kind} {s.where} {f.path}: explain says written={f.written}, "
                                    f"render's record says {f.set_by in anywhere}")
        named_to = destinations(build)
        named_from = inbounds(build)
        # Render's own points, each placed where explain names its destination or inbound: where -> (the wheres whose
        # sections describe it, the origins render recorded there, the route policies that named it as a backend).
        places: dict[str, tuple[list[str], set[str], set[str]]] = {}
        for out in build.outbounds:
            found = [(w, d) for w, d in named_to if d.destination == out.destination]
            if not found:
                problems.append(f"{proxy.name}: render has a cluster for {out.destination}, explain names no such place")
                continue
            where, match = found[0]
            wheres = [where]
            if isinstance(proxy, ZoneEgress):  # one external service's chain is its inbound and its outbound
                wheres += [w for w, target in named_from if target == out.destination]
            place = places.setdefault(where, (wheres, set(), {f"{name} (" for name in match.backend_of}))
            place[1].update(build.origins_in(out.cluster) | build.origins_in(out.chain))
        for point in build.inbounds:
            found_in = [w for w, target in named_from if target == point.target]
            if not found_in:
                problems.append(f"{proxy.name}: render has an inbound {point.listener}, explain names no such place")
                continue
            where = found_in[0]
            if isinstance(proxy, ZoneEgress):
                where = next((w for w, d in named_to if d.destination == point.target), where)
            place = places.setdefault(where, ([where], set(), set()))
            place[1].update(build.origins_in(point.chain))
            if isinstance(point.target, Inbound):
                local = f"local:{point.target.service_address}:{point.target.service_port}"
                place[1].update(build.origins_in(build.clusters.get(local)))
        backend_policies: set[str] = set()
        for wheres, _, allowed in places.values():
            if allowed:
                backend_policies |= listed([s for w in wheres for s in by_where.get(w, [])])
        for wheres, recorded, allowed in places.values():
            sections = [s for w in wheres for s in by_where.get(w, [])]
            explained = listed(sections) | listed(whole)
            for origin in sorted(recorded):
                if origin.startswith("Mesh/"):
                    continue  # the mesh's own setting, no policy's
                policy = policy_of(origin)
                if policy in explained or policy in everywhere or any(policy.startswith(a) for a in allowed):
                    continue
                if policy in backend_policies:
                    continue  # a route action to a backend carries what the backend's destination decides
                problems.append(f"{proxy.name} {wheres[0]}: render records {origin}, explain lists no such policy")
            for s in sections:
                for f in s.fields:
                    if f.written != (f.set_by in recorded):
                        problems.append(f"{proxy.name} {s.kind} {s.side} {s.where} {f.path}: explain says written="
                                        f"{f.written}, render's record says {f.set_by in recorded}")
        # every section explain shows is of a place render has
        for where in by_where:
            if not any(where in wheres for wheres, _, _ in places.values()):
                problems.append(f"{proxy.name}: explain lists {where}, render has no cluster or chain for it")
    return problems


# --- the meshes the tests render: the demo, and every golden case ---------------------------------------------


TESTDATA = ROOT / "tests" / "testdata"
CASES: dict[str, Path] = {
    "demo": DEMO,
    "demo-k8s": ROOT / "tests" / "data" / "demo-k8s",
    # every golden case's desired directory (the demo-* ones are the demo again)
    **{p.name.removesuffix(".input"): p for p in sorted(TESTDATA.glob("*.input")) if not p.name.startswith("demo-")},
}


def test_every_golden_case_is_checked() -> None:
    assert len(CASES) >= 15, sorted(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_explain_lists_what_render_records(case: str) -> None:
    desired = load_and_parse(CASES[case])
    assert disagreements(desired) == []


# --- the two disagreements explain had ------------------------------------------------------------------------

def _to_v1(name: str, service: str, prefix: str) -> str:
    """web's MeshHTTPRoute `name` sending `service`'s requests under `prefix` to its version=v1 instances."""
    return route("MeshHTTPRoute", name, service, f"""
        - matches:
            - path: {{type: PathPrefix, value: {prefix}}}
          default:
            backendRefs:
              - {{kind: MeshServiceSubset, name: {service}, tags: {{version: v1}}}}
        """)


ADMIN_ROUTE = _to_v1("backend-admin", "backend", "/admin")


def _demo_with(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "desired"
    for path in DEMO.rglob("*.yaml"):
        target = root / path.relative_to(DEMO)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    return write_desired(root, files)


def test_a_second_http_route_is_listed_rule_by_rule(tmp_path: Path) -> None:
    desired = load_and_parse(_demo_with(tmp_path, {"admin-route.yaml": ADMIN_ROUTE}))
    [web] = [p for p in desired.dataplanes if p.name == "web"]
    config = applied(build_proxy(desired, web)).finish()
    rendered = str(config.listeners)
    assert "/admin" in rendered and "/v2" in rendered  # render emits both rules
    text = render_text(explain_proxy(desired, "web"))
    route = text.split("MeshHTTPRoute to outbound 127.0.1.1:10001 -> backend", 1)[1].split("\n\n", 1)[0]
    assert '"value": "/admin"' in route and '"value": "/v2"' in route
    assert "MeshHTTPRoute/backend-admin to[0]" in route and "MeshHTTPRoute/backend-v2 to[0]" in route
    assert NOT_WRITTEN not in route
    # Both backends are destinations of their own, tuned by the kinds that follow routes (and by no route kind).
    assert "MeshTimeout to backend MeshService 'backend' {version=v1} (named by MeshHTTPRoute/backend-admin)" in text
    assert "MeshHTTPRoute to backend" not in text
    assert disagreements(desired) == []


FAULT_ON_TCP = """
    type: MeshFaultInjection
    mesh: default
    name: db-faults
    spec:
      targetRef: {kind: MeshService, name: db}
      from:
        - targetRef: {kind: Mesh}
          default:
            http: [{abort: {httpStatus: 500, percentage: 50}}]
    """


def test_fault_injection_on_a_tcp_inbound_is_listed_as_producing_nothing(tmp_path: Path) -> None:
    db = dataplane("db", "127.0.1.9", "db", protocol="tcp")
    desired = load_and_parse(_demo_with(tmp_path, {"db.yaml": db, "db-faults.yaml": FAULT_ON_TCP}))
    explanation = explain_proxy(desired, "db")
    [section] = [s for s in explanation.sections if s.kind == "MeshFaultInjection"]
    assert [f.written for f in section.fields] == [False]
    line = next(line for line in render_text(explanation).splitlines() if line.startswith("    http: "))
    assert line.endswith(f"; {NOT_WRITTEN}")
    # the same fault on an HTTP inbound produces its filter
    web = next(s for s in explain_proxy(desired, "backend-1").sections if s.kind == "MeshFaultInjection")
    assert all(f.written for f in web.fields)
    assert disagreements(desired) == []


def test_the_check_sees_a_policy_explain_leaves_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agreement check itself: explain without the backends routes add disagrees with render."""
    real = explain_module.destinations
    monkeypatch.setattr(explain_module, "destinations",
                        lambda build: [(w, d) for w, d in real(build) if not d.backend_of])
    desired = load_and_parse(DEMO)
    assert any("render records MeshTimeout/mesh-defaults" in p for p in disagreements(desired))


DB_ROUTE = _to_v1("db-http", "db", "/x")

TCP_BESIDE_HTTP = route("MeshTCPRoute", "backend-tcp", "backend", """
    - default:
        backendRefs: [{kind: MeshService, name: admin}]
    """)

WEB_TO_HTTPBIN = "    - address: 127.0.1.1\n      port: 10002\n"
WEB_TO_DB = "    - address: 127.0.1.1\n      port: 10005\n      tags:\n        kuma.io/service: db\n"


def test_route_kinds_apply_only_where_render_uses_them(tmp_path: Path) -> None:
    """An HTTP route on a TCP outbound, and a TCP route beside an HTTP route on an HTTP outbound, change nothing: no
    section, no backend destination, and --policy says why."""
    files = {"db.yaml": dataplane("db-1", "127.0.1.9", "db", protocol="tcp"), "db-route.yaml": DB_ROUTE,
             "tcp-route.yaml": TCP_BESIDE_HTTP}
    root = _demo_with(tmp_path, files)
    dataplanes = root / "dataplanes.yaml"
    assert WEB_TO_HTTPBIN in dataplanes.read_text()
    dataplanes.write_text(dataplanes.read_text().replace(WEB_TO_HTTPBIN, WEB_TO_DB + WEB_TO_HTTPBIN, 1))
    desired = load_and_parse(root)
    text = render_text(explain_proxy(desired, "web"))
    assert "MeshHTTPRoute to outbound 127.0.1.1:10001 -> backend" in text
    assert "MeshHTTPRoute to outbound 127.0.1.1:10005" not in text and "MeshTCPRoute" not in text
    assert "backend MeshService 'db'" not in text and "backend MeshService 'admin'" not in text
    http = render_text(explain_policy(desired, "web", "MeshHTTPRoute/db-http"))
    assert "not on outbound 127.0.1.1:10005 -> db: the outbound's protocol is tcp" in http
    tcp = render_text(explain_policy(desired, "web", "MeshTCPRoute/backend-tcp"))
    assert "not on outbound 127.0.1.1:10001 -> backend: a MeshHTTPRoute applies to this outbound" in tcp
    assert disagreements(desired) == []
