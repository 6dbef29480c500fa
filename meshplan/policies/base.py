"""What a policy module sees: the proxy being built, the points where `to` and `from` sections attach, and a way to
set a field that remembers which policy set it.

A policy kind is a package `policies/<kind>/` (registered with one line in `policies/registry.py`) whose `__init__`
gives, as `PolicyModule` below:
    KIND: str                      the policy kind it implements
    ORDER: int                     where it runs on a proxy among the kinds, with why
    PLACEMENT: PolicyKind          its row of the seed's placement table
    def validate(default, path, check, section) -> None
                                   check one `to`/`from` item's `default` (or a route kind's item), every violation
    def apply(build) -> None
                                   change the proxy's resources for the policies of its kind: what matched where, and
                                   merged to what, is `build.match` (computed once per proxy by `match.result`)
    check_references(policy, desired, check) -> None, or None
                                   check what the policy names in other resources (a route's backendRefs), once
                                   every resource is loaded
Its api.py holds KIND, PLACEMENT, the typed conf, `parse` and `validate` (Kuma's api/v1alpha1); its envoy.py `apply`
(Kuma's plugin/v1alpha1).
Modules run in the registry's order and only change resources the base render or an earlier module created.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from meshplan.envoy.types import HCM_NAME, TCP_PROXY_NAME
from meshplan.load.resources import PathKey
from meshplan.match.matcher import Destination, Merged
from meshplan.match.result import ProxyMatch, Rule
from meshplan.model import (
    Dataplane,
    Desired,
    Inbound,
    Mesh,
    MeshExternalService,
    Policy,
    ProxyConfig,
    ZoneEgress,
)
from meshplan.policies import PolicyKind
from meshplan.policies.conf import ConfReader, HeaderMatch
from meshplan.validate.check import FieldCheck

Json = dict[str, Any]
C = TypeVar("C")  # a kind's typed conf
Steps = tuple[str | int, ...]  # keys and list positions from a resource's top to one of its fields


class PolicyModule(Protocol):
    """What a policy kind's module provides; mypy checks every module in the registry against it."""

    KIND: str
    ORDER: int  # where it runs on a proxy, among the kinds: lowest first; declared next to the kind, with why

    def validate(self, default: Json, path: PathKey, check: FieldCheck, section: str) -> None: ...

    def apply(self, build: ProxyBuild) -> None: ...

    @property
    def PLACEMENT(self) -> PolicyKind: ...  # noqa: N802 - its row of the seed's placement table

    @property
    def check_references(self) -> Callable[[Policy, Desired, FieldCheck], None] | None:
        """Its check of what a policy names in other resources (a route's backendRefs), once every resource is
        loaded; None for a kind that names none."""


@dataclass
class OutboundPoint:
    """Traffic from this proxy to one destination: the cluster, and the filter chain whose filter routes to it."""

    destination: Destination
    cluster: Json
    chain: Json
    listener: str
    protocol: str


@dataclass
class InboundPoint:
    """Traffic into this proxy: a sidecar inbound, or on the egress the filter chain of one external service."""

    target: Inbound | Destination
    chain: Json
    listener: str
    protocol: str


@dataclass
class ProxyBuild:
    proxy: Dataplane | ZoneEgress
    desired: Desired
    type: str
    clusters: dict[str, Json]
    listeners: dict[str, Json]
    match: ProxyMatch  # what matched on this proxy: every module reads its kind's entries here
    outbounds: list[OutboundPoint] = field(default_factory=list)
    inbounds: list[InboundPoint] = field(default_factory=list)
    mtls: bool = False  # whether a sidecar's mesh has mTLS (its certificates are SDS secrets, docs/names.md)
    # (id of a dict inside a resource, key) -> origins; turned into field paths by `finish`
    _marks: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    _keep: list[Any] = field(default_factory=list)  # keeps marked dicts alive, so their ids stay theirs
    _made_by: dict[int, str] = field(default_factory=dict)  # id of a dict inside a resource -> who it comes from
    _route_rules: dict[int, Rule] = field(default_factory=dict)  # id of an Envoy route -> the MeshHTTPRoute rule it is

    def route_made(self, route: Json, rule: Rule) -> None:
        """Record that an Envoy route (of an outbound's route configuration) is what a merged MeshHTTPRoute rule made:
        the kinds that can target a MeshHTTPRoute find their settings for it with `route_merged`."""
        self._route_rules[id(route)] = rule
        self._keep.append(route)

    def route_merged(self, kind: str, out: OutboundPoint, route: Json) -> Merged | None:
        """What the `kind` policies that target the MeshHTTPRoute behind this Envoy route merged to on it, or None
        where none targets it (or the route is no MeshHTTPRoute's): the route then takes the destination's merge."""
        rule = self._route_rules.get(id(route))
        return None if rule is None else self.match.route_to(kind, out.destination, rule)

    def made_by(self, node: Json, resource: Dataplane | ZoneEgress | MeshExternalService | Mesh) -> None:
        """Record which desired resource `node` (a resource, a filter chain, an endpoint) comes from."""
        if resource.source is not None:
            kind = type(resource).__name__
            self._made_by[id(node)] = f"{kind}/{resource.name} ({resource.source})"
            self._keep.append(node)

    def merged_outbounds(self, kind: str) -> Iterator[tuple[OutboundPoint, Merged]]:
        """Each outbound (in order) with what the `kind` policies merged to for its destination; an outbound they
        set nothing for is skipped."""
        for out in self.outbounds:
            merged = self.match.to(kind, out.destination)
            if not merged.empty:
                yield out, merged

    def outbound_confs(self, kind: str, parse: Callable[[ConfReader], C | None]) -> Iterator[tuple[OutboundPoint, C]]:
        """Each outbound with the typed conf (`parse`) of what the `kind` policies merged to for it; skipped where they
        set nothing, or where the conf is None (nothing to render)."""
        for out, merged in self.merged_outbounds(kind):
            conf = parse(ConfReader.of_merged(merged))
            if conf is not None:
                yield out, conf

    def sidecar_conf(self, kind: str, parse: Callable[[ConfReader], C | None]) -> tuple[Dataplane, C] | None:
        """For a kind with one top-level `default` (MeshTrace, MeshMetric): this sidecar and the typed conf of what
        its policies merged to; None on the egress, where none selects it, or where the conf is None."""
        merged = self.match.single(kind)
        if merged.empty or not isinstance(self.proxy, Dataplane):
            return None
        conf = parse(ConfReader.of_merged(merged))
        return None if conf is None else (self.proxy, conf)

    def set(self, container: Json, key: str, value: Any, origins: Iterable[str]) -> None:
        """Set `container[key]` and remember who set it (shown beside the field in a plan)."""
        container[key] = value
        self.mark(container, key, origins)

    def mark(self, container: Json, key: str, origins: Iterable[str]) -> None:
        self._marks[(id(container), key)] = sorted(set(self._marks.get((id(container), key), [])) | set(origins))
        self._keep.append(container)

    def replace_marks(self, container: Json, key: str, origins: Iterable[str]) -> None:
        """Who set `container[key]`, replacing whoever set it before (a later writer replaced the value)."""
        self._marks[(id(container), key)] = sorted(set(origins))
        self._keep.append(container)

    def finish(self) -> ProxyConfig:
        origins: dict[str, dict[str, dict[Steps, list[str]]]] = {"cluster": {}, "listener": {}}
        structure: dict[str, dict[str, dict[Steps, str]]] = {"cluster": {}, "listener": {}}
        for kind, resources in (("cluster", self.clusters), ("listener", self.listeners)):
            for name, resource in resources.items():
                found = dict(self._paths(resource, ()))
                if found:
                    origins[kind][name] = found
                made = dict(self._made(resource, ()))
                if made:
                    structure[kind][name] = made
        return ProxyConfig(
            name=self.proxy.name,
            type=self.type,
            mesh=getattr(self.proxy, "mesh", None),
            address=self.proxy.address,
            admin_port=self.proxy.admin_port,
            clusters=tuple(self.clusters[n] for n in sorted(self.clusters)),
            listeners=tuple(self.listeners[n] for n in sorted(self.listeners)),
            origins=origins,
            structure=structure,
        )

    def origins_in(self, node: Any) -> frozenset[str]:
        """Every origin recorded on a field inside `node` (a cluster, a filter chain): what render says set it."""
        return frozenset(origin for _, origins in self._paths(node, ()) for origin in origins)

    def _made(self, node: Any, prefix: Steps) -> Iterator[tuple[Steps, str]]:
        if isinstance(node, dict):
            if id(node) in self._made_by:
                yield prefix, self._made_by[id(node)]
            for key, value in node.items():
                yield from self._made(value, prefix + (key,))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                yield from self._made(item, prefix + (i,))

    def _paths(self, node: Any, prefix: Steps) -> Iterator[tuple[Steps, list[str]]]:
        """Every marked field, as the steps (keys and list positions) that lead to it inside the resource."""
        if isinstance(node, dict):
            for key, value in node.items():
                marked = self._marks.get((id(node), key))
                if marked:
                    yield prefix + (key,), marked
                yield from self._paths(value, prefix + (key,))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                yield from self._paths(item, prefix + (i,))


def validator(parse: Callable[[ConfReader], object]) -> Callable[[Json, PathKey, FieldCheck, str], None]:
    """The `validate` of a kind whose parse of one item's `default` reports every violation (the section does not
    change what it checks)."""

    def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
        parse(ConfReader(default, path, check))

    return validate


def network_filter(chain: Json, name: str) -> Json | None:
    """The typed_config of the named network filter in a filter chain."""
    for f in chain.get("filters", []):
        if f.get("name") == name:
            config: Json = f["typed_config"]
            return config
    return None


def hcm(chain: Json) -> Json | None:
    return network_filter(chain, HCM_NAME)


def tcp_proxy(chain: Json) -> Json | None:
    return network_filter(chain, TCP_PROXY_NAME)


def routes(chain: Json) -> list[Json]:
    """Every route of the inline route configuration of a chain's HTTP connection manager."""
    manager = hcm(chain)
    if manager is None:
        return []
    return [route for vhost in manager["route_config"]["virtual_hosts"] for route in vhost["routes"]]


def insert_http_filter(manager: Json, http_filter: Json) -> None:
    """Add an HTTP filter before the router (which must stay last)."""
    filters: list[Json] = manager["http_filters"]
    filters.insert(len(filters) - 1, http_filter)


def header_matcher(header: HeaderMatch) -> Json:
    """A header match as Envoy's route HeaderMatcher (a Prefix with an empty value matches presence, as Kuma)."""
    if header.type == "Present" or (header.type == "Prefix" and not header.value):
        return {"name": header.name, "present_match": True}
    if header.type == "Absent":
        return {"name": header.name, "present_match": False}
    return {"name": header.name, "string_match": string_match(header.type, header.value or "")}


def string_match(kind: str, value: str) -> Json:
    """Envoy's StringMatcher for a Kuma match type (Exact, Prefix, RegularExpression)."""
    if kind == "RegularExpression":
        return {"safe_regex": {"regex": value}}
    if kind == "Prefix":
        return {"prefix": value}
    return {"exact": value}
