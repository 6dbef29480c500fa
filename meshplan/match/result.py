"""What matched on one proxy, computed once: every destination (its outbounds, and on a sidecar the backends its
routes add) and every inbound, with, per policy kind, the policies that matched in merge order and what they merged
to, each field with its origin. Kuma's MatchedPolicies is the model: `to` rules per destination, `from` rules per
inbound.

Render (every policy module, through `ProxyBuild.match`) and `meshplan explain` both read `match_proxy`'s answer, so
what explain says is what render does. The seed's placement table (`policies.registry.KINDS`, given to `match_proxy`: which kinds apply to a
MeshExternalService on the sidecar, on the egress, on the egress's inbound) is applied here and nowhere else.

Plain frozen data: the matcher's `Merged` and `FromRule`, and for MeshHTTPRoute its rules merged by their matches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshplan.match.matcher import (
    Contribution,
    Destination,
    FromRule,
    Merged,
    merge_from,
    merge_patch,
    merge_route,
    merge_single,
    merge_to,
)
from meshplan.match.spelling import NORMALISERS
from meshplan.model import (
    EGRESS,
    SERVICE_TAG,
    SIDECAR,
    Dataplane,
    Desired,
    Inbound,
    Policy,
    ZoneEgress,
)
from meshplan.policies import FROM, ROUTE_FIELDS, ROUTE_KINDS, SINGLE, TO, PolicyKind

# The seed's placement table (`policies.registry.KINDS`), given by the caller: the registry sits above this stage.
Placements = Mapping[str, PolicyKind]

Proxy = Dataplane | ZoneEgress
Json = dict[str, Any]

HTTP_ROUTE = "MeshHTTPRoute"
TCP_ROUTE = "MeshTCPRoute"
# The filter type of a MeshHTTPRoute rule that copies requests to a backend, and the field that holds it.
MIRROR_FILTER = ("RequestMirror", "requestMirror")

NOTHING = Merged({}, {}, ())
# The protocols a sidecar's outbound speaks through an HTTP connection manager (the others: a TCP proxy).
HTTP_PROTOCOLS = ("http", "http2", "grpc")


@dataclass(frozen=True)
class Rule:
    """A MeshHTTPRoute rule after merging: its matches, its merged `default`, and the items that wrote it (least
    specific first)."""

    matches: tuple[Json, ...]
    default: Json
    writers: tuple[tuple[Contribution, int], ...]  # (item, index of the rule in its `rules`)

    def origins(self, key: str | None = None) -> list[str]:
        """Who set `default.<key>` (the last writer that wrote it), or, without a key or when none did, every
        writer of the rule."""
        if key is not None:
            for c, ri in reversed(self.writers):
                conf = c.item.default["rules"][ri].get("default")
                if isinstance(conf, dict) and conf.get(key) is not None:
                    return [str(c.origin((f"rules[{ri}]", "default", key)))]
        return sorted({str(c.origin((f"rules[{ri}]", "matches"))) for c, ri in self.writers})


@dataclass(frozen=True)
class KindTo:
    """One kind's `to` items on one destination, merged (MeshHTTPRoute: also its rules merged by their matches)."""

    kind: str
    merged: Merged
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class RouteTo:
    """One kind's settings on the Envoy routes one merged MeshHTTPRoute rule made on a destination, where a policy
    targets a MeshHTTPRoute that wrote the rule (`matcher.merge_route`): what those routes take instead of the
    destination's merge."""

    kind: str
    matches: tuple[Json, ...]  # the rule's matches: which rule of the destination's MeshHTTPRoute KindTo
    routes: tuple[str, ...]  # the MeshHTTPRoute policies that wrote the rule
    merged: Merged

    def describe(self) -> str:
        """The rule in words, for explain: its matches, and the routes that wrote it."""
        shown = json.dumps(list(self.matches), sort_keys=True) if self.matches else "(no matches: every request)"
        return f"route {shown} of {', '.join(f'{HTTP_ROUTE}/{r}' for r in self.routes)}"


@dataclass(frozen=True)
class KindFrom:
    """One kind's `from` rules on one inbound, most specific client subset first (`matcher.rule_for` picks)."""

    kind: str
    rules: tuple[FromRule, ...]


@dataclass(frozen=True)
class DestinationMatch:
    """Traffic from the proxy to one destination. `backend_of`: for a destination that is only a route's backend (no
    outbound of its own), the route policies that name it; route kinds do not apply to it again."""

    destination: Destination
    to: tuple[KindTo, ...]  # in the placement table's order, only kinds whose merge has contributions
    backend_of: tuple[str, ...] = ()
    routes: tuple[RouteTo, ...] = ()  # per kind and MeshHTTPRoute rule, where a policy targets the route


@dataclass(frozen=True)
class InboundMatch:
    """Traffic into the proxy: a sidecar inbound, or on the egress one external service."""

    target: Inbound | Destination
    from_: tuple[KindFrom, ...]  # in the placement table's order, only kinds with at least one rule


@dataclass(frozen=True)
class ProxyMatch:
    proxy: str
    destinations: tuple[DestinationMatch, ...]
    inbounds: tuple[InboundMatch, ...]
    # The single-item kinds (one top-level `default`: MeshTrace, MeshMetric) that selected the proxy, merged; in
    # KINDS order, only kinds with contributions. Sidecars only: the seed's placement keeps them off the egress.
    singles: tuple[KindTo, ...] = ()

    def single(self, kind: str) -> Merged:
        """One single-item kind's merged `default` on this proxy (empty when no policy of the kind selects it)."""
        return next((k.merged for k in self.singles if k.kind == kind), NOTHING)

    def destination(self, destination: Destination) -> DestinationMatch | None:
        return next((d for d in self.destinations if d.destination == destination), None)

    def inbound(self, target: Inbound | Destination) -> InboundMatch | None:
        return next((i for i in self.inbounds if i.target == target), None)

    def kind_to(self, kind: str, destination: Destination) -> KindTo | None:
        found = self.destination(destination)
        return None if found is None else next((k for k in found.to if k.kind == kind), None)

    def to(self, kind: str, destination: Destination) -> Merged:
        """One kind's merged `to` items on a destination (empty when none applies)."""
        found = self.kind_to(kind, destination)
        return NOTHING if found is None else found.merged

    def route_to(self, kind: str, destination: Destination, rule: Rule) -> Merged | None:
        """One kind's settings on the Envoy routes a MeshHTTPRoute rule made on a destination, where a policy targets
        a route that wrote the rule; None where none does (the routes take the destination's merge)."""
        found = self.destination(destination)
        if found is None:
            return None
        return next((r.merged for r in found.routes if r.kind == kind and r.matches == rule.matches), None)

    def from_(self, kind: str, target: Inbound | Destination) -> list[FromRule]:
        """One kind's `from` rules on an inbound, most specific first (empty when none applies)."""
        found = self.inbound(target)
        rules = None if found is None else next((k.rules for k in found.from_ if k.kind == kind), None)
        return list(rules or ())


# --- the placement table --------------------------------------------------------------------------------------


def placement_miss(kinds: Placements, kind: str, proxy: Proxy, side: str, where: Inbound | Destination) -> str | None:
    """None when the seed's placement table lets `kind` apply on this side of this proxy for `where`; otherwise why
    not, in words for `explain`. Only traffic to or from a MeshExternalService is restricted."""
    placement = kinds.get(kind)
    if placement is None:
        return None
    here = EGRESS if isinstance(proxy, ZoneEgress) else SIDECAR
    if side == TO and isinstance(where, Destination) and where.external and here not in placement.external_to:
        # e.g. a circuit breaker to an external service lives on the egress, never the sidecar.
        return f"for a MeshExternalService, {kind} is implemented on: {placement.placement} (not on the {here})"
    if side == FROM and isinstance(proxy, ZoneEgress) and not placement.external_from:
        return (f"for a MeshExternalService, {kind} is implemented on: {placement.placement} "
                "(not on the egress's inbound)")
    return None


def destination_protocol(desired: Desired, destination: Destination) -> str:
    """The protocol a sidecar speaks to a destination: an external service's own, else that of the service's first
    instance (tcp when it has none)."""
    if destination.external:
        return desired.external_service(destination.mesh, destination.name).protocol
    instances = desired.instances(destination.mesh, destination.name)
    return instances[0][1].protocol if instances else "tcp"


def route_miss(kind: str, protocol: str, http_route_applies: bool) -> str | None:
    """None when a route kind takes effect on an outbound of this protocol; otherwise why not (Kuma's rules): an HTTP
    route changes nothing on a TCP outbound, and on an HTTP outbound an HTTP route wins over a TCP route."""
    if kind == HTTP_ROUTE and protocol not in HTTP_PROTOCOLS:
        return f"the outbound's protocol is {protocol}: an HTTP route changes nothing on it (use MeshTCPRoute)"
    if kind == TCP_ROUTE and protocol in HTTP_PROTOCOLS and http_route_applies:
        return "a MeshHTTPRoute applies to this outbound, and on an HTTP outbound an HTTP route wins over a TCP route"
    return None


# --- matching one proxy ---------------------------------------------------------------------------------------


def match_proxy(desired: Desired, proxy: Proxy, kinds: Placements) -> ProxyMatch:
    by_kind: dict[str, list[Policy]] = {}
    for policy in desired.policies:
        by_kind.setdefault(policy.kind, []).append(NORMALISERS.get(policy.kind, _same)(policy))
    found: list[DestinationMatch] = []
    for destination in [_in_namespace(desired, d) for d in _destinations(desired, proxy)]:
        if not any(d.destination == destination for d in found):
            found_to = _to(kinds, by_kind, proxy, destination, routes=True)
            routes: tuple[RouteTo, ...] = ()
            if isinstance(proxy, Dataplane):  # routes live on the sidecar (the placement table)
                found_to = _routes_in_effect(found_to, destination_protocol(desired, destination))
                routes = _route_targets(kinds, by_kind, proxy, destination, found_to)
            found.append(DestinationMatch(destination, found_to, routes=routes))
    for destination, named_by in _backends(proxy, found):
        destination = _in_namespace(desired, destination)
        found.append(DestinationMatch(destination, _to(kinds, by_kind, proxy, destination, routes=False), named_by))
    inbounds = tuple(InboundMatch(target, _from(kinds, by_kind, proxy, target)) for target in _inbounds(desired, proxy))
    return ProxyMatch(proxy.name, tuple(found), inbounds, _singles(kinds, by_kind, proxy))


def _in_namespace(desired: Desired, destination: Destination) -> Destination:
    """The destination with its service's namespace and its one port's name, which a `to` item naming a service in a
    namespace, or one port of it (`sectionName`), compares."""
    if destination.external:
        return destination
    return replace(destination, namespace=desired.service_namespace(destination.mesh, destination.name),
                   section=desired.service_section(destination.mesh, destination.name))


def _singles(kinds: Placements, by_kind: dict[str, list[Policy]], proxy: Proxy) -> tuple[KindTo, ...]:
    """The single-`default` kinds' merged confs on a sidecar. MeshProxyPatch is not among them: its modifications
    append in order rather than merge (match.behaviour.proxy_patches orders them)."""
    if isinstance(proxy, ZoneEgress):
        return ()  # the placement table: "Out of scope (single item)" (policy_rules rejects proxyType Egress)
    out = []
    for kind, placement in kinds.items():
        policies = by_kind.get(kind)
        if policies and SINGLE in placement.sections and kind != "MeshProxyPatch":
            merged = merge_single(policies, proxy)
            if not merged.empty:
                out.append(KindTo(kind, merged))
    return tuple(out)


def _route_targets(kinds: Placements, by_kind: dict[str, list[Policy]], proxy: Proxy, destination: Destination,
                   found_to: tuple[KindTo, ...]) -> tuple[RouteTo, ...]:
    """For each kind that has policies targeting a MeshHTTPRoute, its settings on the routes each merged rule of the
    destination's MeshHTTPRoutes made, where such a policy targets a route that wrote the rule."""
    http = next((k for k in found_to if k.kind == HTTP_ROUTE), None)
    if http is None:
        return ()
    out = []
    for kind, placement in kinds.items():
        policies = by_kind.get(kind)
        if not policies or TO not in placement.sections or kind in ROUTE_KINDS or not any(_targets_route(p) for p in policies):
            continue
        if placement_miss(kinds, kind, proxy, TO, destination) is not None:
            continue  # e.g. a load balancer towards an external service lives on the egress, not on a sidecar's route
        for rule in http.rules:
            writers = tuple(dict.fromkeys(c.policy.name for c, _ in rule.writers))
            merged = merge_route(policies, proxy, destination, writers)
            if not merged.empty:
                out.append(RouteTo(kind, rule.matches, writers, _only(merged, ROUTE_FIELDS.get(kind, ()))))
    return tuple(out)


def _only(merged: Merged, fields: tuple[str, ...]) -> Merged:
    """A merge cut down to the fields that take effect on a route (the destination's items may set others, which
    stay the destination's)."""

    def kept(path: str) -> bool:
        return any(path == f or path.startswith(f + ".") or f.startswith(path + ".") for f in fields)

    def prune(conf: Json, prefix: str) -> Json:
        out: Json = {}
        for key, value in conf.items():
            path = f"{prefix}{key}"
            if not kept(path):
                continue
            out[key] = prune(value, path + ".") if isinstance(value, dict) and path not in fields else value
        return out

    return Merged(prune(merged.conf, ""), {k: v for k, v in merged.origins.items() if kept(k)}, merged.contributions,
                  {k: v for k, v in merged.removed.items() if kept(k)})


def _targets_route(policy: Policy) -> bool:
    return policy.target_ref.kind == HTTP_ROUTE or any(i.target_ref.kind == HTTP_ROUTE for i in policy.to)


def _same(policy: Policy) -> Policy:
    return policy


def _to(kinds: Placements, by_kind: dict[str, list[Policy]], proxy: Proxy, destination: Destination, *, routes: bool) -> tuple[KindTo, ...]:
    out = []
    for kind, placement in kinds.items():
        policies = by_kind.get(kind)
        if not policies or TO not in placement.sections or (kind in ROUTE_KINDS and not routes):
            continue
        if placement_miss(kinds, kind, proxy, TO, destination) is not None:
            continue
        merged = merge_to(policies, proxy, destination)
        if not merged.empty:
            out.append(KindTo(kind, merged, tuple(merge_rules(merged)) if kind == HTTP_ROUTE else ()))
    return tuple(out)


def _routes_in_effect(kinds: tuple[KindTo, ...], protocol: str) -> tuple[KindTo, ...]:
    http_route = any(k.kind == HTTP_ROUTE for k in kinds)
    return tuple(k for k in kinds if k.kind not in ROUTE_KINDS or route_miss(k.kind, protocol, http_route) is None)


def _from(kinds: Placements, by_kind: dict[str, list[Policy]], proxy: Proxy, target: Inbound | Destination) -> tuple[KindFrom, ...]:
    out = []
    for kind, placement in kinds.items():
        policies = by_kind.get(kind)
        if not policies or FROM not in placement.sections or placement_miss(kinds, kind, proxy, FROM, target) is not None:
            continue
        rules = merge_from(policies, proxy, target)
        if rules:
            out.append(KindFrom(kind, tuple(rules)))
    return tuple(out)


def _destinations(desired: Desired, proxy: Proxy) -> list[Destination]:
    if isinstance(proxy, ZoneEgress):
        return [Destination.of_external(m) for m in sorted(desired.external_services, key=lambda m: (m.mesh, m.name))]
    return [Destination.of_outbound(proxy, o) for o in proxy.outbounds]


def _inbounds(desired: Desired, proxy: Proxy) -> list[Inbound | Destination]:
    if isinstance(proxy, ZoneEgress):
        return [Destination.of_external(m) for m in sorted(desired.external_services, key=lambda m: (m.mesh, m.name))]
    return list(proxy.inbounds)


def _backends(proxy: Proxy, outbounds: list[DestinationMatch]) -> list[tuple[Destination, tuple[str, ...]]]:
    """The destinations the routes of the proxy's outbounds send to (or mirror to) that are no outbound's: each
    gets a cluster of its own on the sidecar (policies/backend_refs.py), tuned by the kinds that follow routes."""
    if not isinstance(proxy, Dataplane):
        return []  # routes live on the sidecar
    named: list[tuple[Destination, list[str]]] = []
    for match in outbounds:
        for kind_to in match.to:
            if kind_to.kind not in ROUTE_KINDS:
                continue
            for ref, writer in _route_backend_refs(kind_to):
                destination = backend_destination(proxy.mesh, ref)
                if any(o.destination == destination for o in outbounds):
                    continue
                entry = next((e for e in named if e[0] == destination), None)
                if entry is None:
                    entry = (destination, [])
                    named.append(entry)
                policy = f"{kind_to.kind}/{writer}"
                if policy not in entry[1]:
                    entry[1].append(policy)
    return [(destination, tuple(owners)) for destination, owners in named]


def _route_backend_refs(kind_to: KindTo) -> Iterator[tuple[Json, str]]:
    """Every backendRef that takes traffic (weight above 0) or mirrors it, in the rules render uses, with the name
    of the policy whose rule wrote it."""
    if kind_to.kind == HTTP_ROUTE:
        confs = [(rule.default, _writer(rule)) for rule in kind_to.rules]
    else:
        rules = _list(kind_to.merged.conf.get("rules"))
        writer = kind_to.merged.origins["rules"].set_by.name if "rules" in kind_to.merged.origins else ""
        confs = [(rules[0].get("default") or {}, writer)] if rules and isinstance(rules[0], dict) else []
    for conf, writer in confs:
        for ref in _list(conf.get("backendRefs")):
            if isinstance(ref, dict) and (ref.get("weight") is None or int(ref["weight"]) > 0):
                yield ref, writer
        for flt in _list(conf.get("filters")):
            mirror = flt.get(MIRROR_FILTER[1]) if isinstance(flt, dict) and flt.get("type") == MIRROR_FILTER[0] else None
            if isinstance(mirror, dict) and isinstance(mirror.get("backendRef"), dict):
                yield mirror["backendRef"], writer


def _writer(rule: Rule) -> str:
    return rule.writers[-1][0].policy.name


def backend_destination(mesh: str, ref: Json) -> Destination:
    """Where a backendRef sends traffic: an external service, a whole service, or the instances a subset's tags
    pick. (A MeshService's `port` narrows the cluster, not the destination its policies are matched for.)"""
    if ref.get("kind") == "MeshExternalService":
        return Destination(mesh, str(ref["name"]), external=True)
    tags = {k: v for k, v in (ref.get("tags") or {}).items() if k != SERVICE_TAG}
    return Destination(mesh, str(ref["name"]), tags=tags if ref.get("kind") == "MeshServiceSubset" else {})


# --- MeshHTTPRoute rules --------------------------------------------------------------------------------------


def merge_rules(merged: Merged) -> list[Rule]:
    """Kuma's merge of route rules across the `to` items that apply (least to most specific in `merged`).

    Each item's rules go in reversed; a rule whose matches equal an earlier one's takes that one's writers and its
    place moves to the later (more specific) writer; the list is reversed at the end, so the most specific policy's
    rules lead, in the order they were written.
    """
    pending: list[tuple[str, list[tuple[Contribution, int]]] | None] = []
    for c in merged.contributions:
        rules = _list(c.item.default.get("rules"))
        for ri in reversed(range(len(rules))):
            key = json.dumps(rules[ri].get("matches"), sort_keys=True)
            writers = [(c, ri)]
            for j, entry in enumerate(pending):
                if entry is not None and entry[0] == key:
                    writers = entry[1] + writers
                    pending[j] = None
            pending.append((key, writers))
    out = []
    for entry in reversed(pending):
        if entry is None:
            continue
        conf: Json = {}
        for c, ri in entry[1]:
            conf = merge_patch(conf, c.item.default["rules"][ri].get("default") or {})
        first, index = entry[1][-1]
        matches = tuple(first.item.default["rules"][index].get("matches") or ())
        out.append(Rule(matches, conf, tuple(entry[1])))
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
