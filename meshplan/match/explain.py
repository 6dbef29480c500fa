"""`meshplan explain`: for one proxy, which policies matched each destination and inbound, in merge order, what they
merged to with each field's origin (and whom it overrode), and whether render turned the field into any Envoy field
on this proxy; or, for one policy, where it lands and why not elsewhere.

It reads what render reads: the proxy's `match.result.ProxyMatch` (the placement table applied, MeshCircuitBreaker
in its one spelling, MeshHTTPRoute rules merged by their matches, the destinations route backends add), and the
origins render records on the proxy's clusters and listeners."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from meshplan.envoy import names
from meshplan.errors import MeshplanError
from meshplan.match import matcher as match
from meshplan.match.behaviour import proxy_patches
from meshplan.match.matcher import Destination, FieldOrigin, Merged
from meshplan.match.result import (
    HTTP_ROUTE,
    DestinationMatch,
    KindTo,
    Rule,
    destination_protocol,
    placement_miss,
    route_miss,
)
from meshplan.model import Dataplane, Desired, Inbound, Policy, ZoneEgress
from meshplan.policies import FROM, ROUTE_KINDS, SINGLE, TO
from meshplan.policies.base import ProxyBuild
from meshplan.policies.registry import KINDS
from meshplan.present.text import printable
from meshplan.render.proxies import applied, build_proxy

Proxy = Dataplane | ZoneEgress

NOT_WRITTEN = "no Envoy field on this proxy comes from it"
WHOLE_PROXY = "the whole proxy"  # where a single-item kind (MeshTrace, MeshMetric) applies


@dataclass(frozen=True)
class FieldLine:
    path: str
    value: Any
    set_by: str
    overridden: tuple[str, ...] = ()
    written: bool = True  # render records `set_by` on an Envoy field of this destination or inbound


@dataclass(frozen=True)
class Section:
    """One policy kind's result on one destination (`to`) or inbound (`from`, per client rule)."""

    kind: str
    where: str  # "outbound backend", "inbound 8080 (web)", "external service httpbin"
    side: str  # to | from | single (a kind with one top-level `default`, for the whole proxy)
    client: str = ""  # for from: which clients the rule is for
    applied: tuple[str, ...] = ()  # the contributing items, least to most specific
    fields: tuple[FieldLine, ...] = ()
    route: str = ""  # for to: the Envoy routes of one MeshHTTPRoute rule that a policy targets (else the whole place)


@dataclass(frozen=True)
class Explanation:
    proxy: str
    type: str
    mesh: str | None
    namespace: str | None = None  # a Kubernetes dataplane's namespace (what namespaced policies are scoped by)
    sections: tuple[Section, ...] = ()
    lands: tuple[str, ...] = field(default=())  # for --policy: where it applies
    misses: tuple[str, ...] = field(default=())  # for --policy: where it does not, and why


def _find_proxy(desired: Desired, name: str) -> Proxy:
    proxies: list[Proxy] = [*desired.dataplanes, *desired.egresses]
    for proxy in proxies:
        if proxy.name == name:
            return proxy
    raise MeshplanError(f"no proxy named {name!r} (proxies: {', '.join(desired.proxy_names())})")


def destinations(build: ProxyBuild) -> list[tuple[str, DestinationMatch]]:
    """Every destination of the proxy as explain names it: its outbounds (on the egress, its external services),
    then the backends its routes add."""
    proxy = build.proxy
    out: list[tuple[str, DestinationMatch]] = []
    if isinstance(proxy, ZoneEgress):
        for found in build.match.destinations:
            d = found.destination
            out.append((f"external service {d.name} (mesh {d.mesh})", found))
        return out
    for o in proxy.outbounds:
        outbound = build.match.destination(Destination.of_outbound(proxy, o))
        assert outbound is not None  # match.result lists every outbound's destination
        where = f"{'external service ' + o.external if o.external else o.service}"
        out.append((f"outbound {o.address}:{o.port} -> {where}", outbound))
    for found in build.match.destinations:
        if found.backend_of:
            out.append((f"backend {found.destination} (named by {', '.join(found.backend_of)})", found))
    return out


def inbounds(build: ProxyBuild) -> list[tuple[str, Inbound | Destination]]:
    if isinstance(build.proxy, ZoneEgress):
        return [(f"external service {i.target.name} (mesh {i.target.mesh}), its egress side", i.target)
                for i in build.match.inbounds if isinstance(i.target, Destination)]
    return [(f"inbound {i.address}:{i.port} ({i.service})", i) for i in build.proxy.inbounds]


def written_to(build: ProxyBuild, destination: Destination) -> frozenset[str]:
    """The origins render recorded on the cluster and filter chain of a destination."""
    found: set[str] = set()
    for point in build.outbounds:
        if point.destination == destination:
            found |= build.origins_in(point.cluster) | build.origins_in(point.chain)
    return frozenset(found)


def written_from(build: ProxyBuild, target: Inbound | Destination) -> frozenset[str]:
    """The origins render recorded on an inbound's filter chain (and on a sidecar, its local cluster)."""
    found: set[str] = set()
    for point in build.inbounds:
        if point.target == target:
            found |= build.origins_in(point.chain)
    if isinstance(target, Inbound):
        found |= build.origins_in(build.clusters.get(names.local_cluster(target.service_address, target.service_port)))
    return frozenset(found)


def written_anywhere(build: ProxyBuild) -> frozenset[str]:
    """The origins render recorded on any cluster or listener of the proxy: where a single-item kind writes."""
    found: set[str] = set()
    for resource in [*build.clusters.values(), *build.listeners.values()]:
        found |= build.origins_in(resource)
    return frozenset(found)


def _line(path: str, value: Any, origin: FieldOrigin, written: frozenset[str]) -> FieldLine:
    set_by = str(origin.set_by)
    return FieldLine(path, value, set_by, tuple(str(o) for o in origin.overridden), set_by in written)


def _fields(merged: Merged, written: frozenset[str]) -> tuple[FieldLine, ...]:
    def value_at(path: str) -> Any:
        node: Any = merged.conf
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        return node

    return tuple(_line(path, value_at(path), origin, written) for path, origin in sorted(merged.origins.items()))


def _rule_fields(rules: tuple[Rule, ...], written: frozenset[str]) -> tuple[FieldLine, ...]:
    """MeshHTTPRoute: each rule render emits (merged across policies by its matches), in render's order."""
    lines: list[FieldLine] = []
    for i, rule in enumerate(rules):
        writers = [str(c.origin((f"rules[{ri}]", "matches"))) for c, ri in rule.writers]
        lines.append(FieldLine(f"rules[{i}].matches", list(rule.matches), writers[-1], tuple(writers[:-1]),
                               writers[-1] in written))
        for key in sorted(rule.default):
            set_by = rule.origins(key)[0]
            lines.append(FieldLine(f"rules[{i}].default.{key}", rule.default[key], set_by, (), set_by in written))
    return tuple(lines)


def _to_fields(kind_to: KindTo, written: frozenset[str]) -> tuple[FieldLine, ...]:
    if kind_to.rules:
        return _rule_fields(kind_to.rules, written)
    return _fields(kind_to.merged, written)


def _applied(merged: Merged) -> tuple[str, ...]:
    return tuple(str(c) for c in merged.contributions)


def _client(tags: dict[str, str]) -> str:
    return "every client" if not tags else "clients with " + ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))


def explain_proxy(desired: Desired, name: str) -> Explanation:
    build = applied(build_proxy(desired, _find_proxy(desired, name)))
    proxy = build.proxy
    outs = destinations(build)
    ins = inbounds(build)
    sections: list[Section] = []
    for kind_name in KINDS:
        for where, found in outs:
            kind_to = next((k for k in found.to if k.kind == kind_name), None)
            if kind_to is not None:
                written = written_to(build, found.destination)
                sections.append(Section(kind_name, where, TO, applied=_applied(kind_to.merged),
                                        fields=_to_fields(kind_to, written)))
            for route in found.routes:
                if route.kind == kind_name:  # the Envoy routes of a MeshHTTPRoute that a policy targets
                    sections.append(Section(kind_name, where, TO, applied=_applied(route.merged),
                                            fields=_fields(route.merged, written_to(build, found.destination)),
                                            route=route.describe()))
        for where, target in ins:
            written = written_from(build, target)
            for rule in build.match.from_(kind_name, target):
                sections.append(Section(kind_name, where, FROM, _client(rule.tags), _applied(rule.merged),
                                        _fields(rule.merged, written)))
        single = build.match.single(kind_name)
        if not single.empty:
            sections.append(Section(kind_name, WHOLE_PROXY, SINGLE, applied=_applied(single),
                                    fields=_fields(single, written_anywhere(build))))
    if isinstance(proxy, Dataplane):
        sections += _patch_sections(build, proxy)
    return Explanation(proxy.name, "egress" if isinstance(proxy, ZoneEgress) else "sidecar",
                       getattr(proxy, "mesh", None), getattr(proxy, "namespace", None), tuple(sections))


def _patch_sections(build: ProxyBuild, proxy: Dataplane) -> list[Section]:
    """MeshProxyPatch: its modifications on the proxy as a whole, in the order they apply, each with its line and
    whether an Envoy field carries it (a Remove leaves nothing to carry it, so it counts as written)."""
    patches = proxy_patches(build.desired, proxy)
    if not patches:
        return []
    carried = frozenset().union(*(build.origins_in(r) for r in (*build.clusters.values(), *build.listeners.values())))
    fields = []
    for policy in patches:
        for index, raw in enumerate(policy.spec["default"]["appendModifications"]):
            where = policy.source_at(f"{policy.spec_path}.default.appendModifications[{index}]") or policy.source
            origin = f"{policy.kind}/{policy.name} ({where})"
            removes = any(isinstance(body, dict) and body.get("operation") == "Remove" for body in raw.values())
            fields.append(FieldLine(f"appendModifications[{index}]", raw, origin, written=origin in carried or removes))
    applied = tuple(f"{p.kind}/{p.name} ({p.source})" for p in patches)
    return [Section("MeshProxyPatch", "the proxy (last, after every other kind)", "default", applied=applied,
                    fields=tuple(fields))]


def _find_policy(desired: Desired, ref: str) -> Policy:
    kind, _, name = ref.partition("/")
    found = [p for p in desired.policies if p.kind == kind and p.name == name]
    if not found:
        known = ", ".join(f"{p.kind}/{p.name}" for p in desired.policies) or "none"
        raise MeshplanError(f"no policy {ref!r} (policies: {known})")
    return found[0]


def explain_policy(desired: Desired, name: str, ref: str) -> Explanation:
    """Where one policy lands on one proxy, and where it does not and why."""
    base = explain_proxy(desired, name)
    build = build_proxy(desired, _find_proxy(desired, name))
    proxy = build.proxy
    policy = _find_policy(desired, ref)
    kind = KINDS[policy.kind]
    lands: list[str] = []
    misses: list[str] = []
    reason = match.why_not(policy, proxy)
    on_routes = [f"{where}, {route.describe()}" for where, found in destinations(build) for route in found.routes
                 if route.kind == policy.kind and any(c.policy == policy for c in route.merged.contributions)]
    lands += on_routes
    if reason is not None:
        if not on_routes:
            misses.append(f"{proxy.name}: {reason}")
    else:
        if TO in kind.sections:
            for where, found in destinations(build):
                if found.backend_of and policy.kind in ROUTE_KINDS:
                    why: str | None = (f"{policy.kind} applies to the outbound whose route names this backend, "
                                       "not to the backend again")
                else:
                    why = (match.why_not_to(policy, proxy, found.destination)
                           or placement_miss(KINDS, policy.kind, proxy, TO, found.destination))
                    if why is None and policy.kind in ROUTE_KINDS:
                        http_route = any(k.kind == HTTP_ROUTE for k in found.to)
                        why = route_miss(policy.kind, destination_protocol(desired, found.destination), http_route)
                (misses if why else lands).append(f"{where}{': ' + why if why else ''}")
        if SINGLE in kind.sections:
            lands.append(WHOLE_PROXY)
        if FROM in kind.sections:
            for where, target in inbounds(build):
                why = match.why_not_from(policy, proxy, target) or placement_miss(KINDS, policy.kind, proxy, FROM, target)
                (misses if why else lands).append(f"{where}{': ' + why if why else ''}")
    mine = f"{policy.kind}/{policy.name} "
    sections = tuple(s for s in base.sections if s.kind == policy.kind and any(a.startswith(mine) for a in s.applied))
    return Explanation(base.proxy, base.type, base.mesh, base.namespace, sections, tuple(lands), tuple(misses))


def render_text(e: Explanation) -> str:
    lines = [f"{e.proxy} [{e.type}]" + (f" mesh {e.mesh}" if e.mesh else "")
             + (f" namespace {e.namespace}" if e.namespace else "")]
    if e.lands or e.misses:
        lines.append("")
        lines += [f"  lands on {w}" for w in e.lands] or ["  lands nowhere on this proxy"]
        lines += [f"  not on {w}" for w in e.misses]
    for s in e.sections:
        lines.append("")
        lines.append(f"{s.kind} {s.side} {s.where}" + (f", {s.route}" if s.route else "")
                     + (f", for {s.client}" if s.client else ""))
        lines.append("  applied, least to most specific (last wins):")
        lines += [f"    {a}" for a in s.applied]
        lines.append("  result:")
        for f in s.fields:
            over = f"; overrides {', '.join(f.overridden)}" if f.overridden else ""
            unused = "" if f.written else f"; {NOT_WRITTEN}"
            lines.append(f"    {f.path}: {_value(f.value)}  # {f.set_by}{over}{unused}")
    if not e.sections and not (e.lands or e.misses):
        lines.append("  no policy applies to this proxy")
    # each line is one line: a newline or an escape inside one came from a name or a file name, and is shown escaped
    return "\n".join(printable(line) for line in lines) + "\n"


def _value(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
