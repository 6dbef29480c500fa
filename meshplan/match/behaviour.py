"""What a proxy's matched policies mean, per client service and destination: the facts a plan's behaviour summary
compares (`admin → backend: permission Allow → Deny`), read from the one matching result.

A fact is (client, destination, aspect) with the merged value and the policies that set it. `to` kinds: the client
is the proxy's own service (its inbounds' `kuma.io/service`; the egress: `egress`), the destination the service or
external service it calls. `from` kinds: the destination is the inbound's service (on the egress, the external
service), and there is one fact per client service of the mesh, with the rule the client's tags pick (those of all of
its instance's inbounds, as its certificate carries them); when a rule treats some instances of a service apart (a
MeshSubset `version: v2`), each subset gets its own fact, named by the tags that set it apart: `web (version=v2)`.
The single-item kinds (MeshTrace: `trace`, MeshMetric: `metrics`) apply to the whole proxy: destination `*`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshplan.envoy import names
from meshplan.match.matcher import KIND_ORDER, Contribution, FromRule, Merged, rule_for, selects
from meshplan.match.result import ProxyMatch
from meshplan.model import SERVICE_TAG, Dataplane, Desired, Inbound, Policy, ZoneEgress
from meshplan.policies import RULES
from meshplan.policies.clients import rule_matches

ASPECTS = {
    "MeshTrafficPermission": "permission", "MeshTimeout": "timeout", "MeshRetry": "retry",
    "MeshRateLimit": "rate-limit", "MeshFaultInjection": "fault", "MeshHTTPRoute": "route", "MeshTCPRoute": "route",
    "MeshCircuitBreaker": "circuit-breaker", "MeshHealthCheck": "health-check",
    "MeshLoadBalancingStrategy": "load-balancing", "MeshAccessLog": "access-log", "MeshProxyPatch": "patch",
    "MeshTrace": "trace", "MeshMetric": "metrics",
}
WHOLE_PROXY = "*"  # the destination of a single-item kind's fact (MeshTrace, MeshMetric): all of the proxy


@dataclass(frozen=True)
class Fact:
    client: str
    destination: str
    aspect: str
    value: Any  # the merged conf (JSON), or for routes the merged rules
    origins: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.client, self.destination, self.aspect)

    def to_json(self) -> dict[str, Any]:
        return {"client": self.client, "destination": self.destination, "aspect": self.aspect, "value": self.value,
                "origins": list(self.origins)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fact:
        return cls(str(data["client"]), str(data["destination"]), str(data["aspect"]), data["value"],
                   tuple(str(o) for o in data["origins"]))


@dataclass(frozen=True)
class Change:
    """One (client, destination, aspect) whose meaning changes; `before` None: nothing applied before."""

    client: str
    destination: str
    aspect: str
    before: Any
    after: Any
    origins: tuple[str, ...]  # who makes it what it will be (or, when it goes away, who made it what it was)


def facts(desired: Desired, match: ProxyMatch, proxy: Dataplane | ZoneEgress) -> tuple[Fact, ...]:
    """Every fact of one proxy, in a stable order."""
    client = _client(proxy)
    found: dict[tuple[str, str, str], Fact] = {}
    for destination in match.destinations:
        label = destination.destination.name
        for kind in destination.to:
            value: Any = kind.merged.conf
            origins = _origins(kind.merged)
            if kind.rules:
                value = [{"matches": list(r.matches), "default": r.default} for r in kind.rules]
                origins = tuple(sorted({o for r in kind.rules for o in r.origins()}))
            _add(found, Fact(client, label, ASPECTS.get(kind.kind, kind.kind), value, origins))
        for route in destination.routes:  # a policy that targets a MeshHTTPRoute: that route's own meaning
            _add(found, Fact(client, f"{label} ({route.describe()})", ASPECTS.get(route.kind, route.kind),
                             route.merged.conf, _origins(route.merged)))
    for inbound in match.inbounds:
        target = inbound.target
        if isinstance(target, Inbound):  # a sidecar's inbound; the egress's are its external services
            assert isinstance(proxy, Dataplane)
            label, mesh = target.service, proxy.mesh
        else:
            label, mesh = target.name, target.mesh
        clients = _client_tags(desired, mesh) if inbound.from_ else {}
        # The server name a client sends here (render/sidecar.py: each outbound cluster's TLS `sni`).
        server_name = (names.service_sni(mesh, label) if isinstance(target, Inbound)
                       else names.external_sni(mesh, label))
        for from_kind in inbound.from_:
            written = _permission_rules(from_kind.kind, list(from_kind.rules))
            for service, tag_sets in clients.items():
                if written:
                    action, origins = _rules_decide(written, names.spiffe_id(mesh, service), server_name)
                    _add(found, Fact(service, label, ASPECTS.get(from_kind.kind, from_kind.kind), {"action": action},
                                     origins))
                    continue
                picked = []
                for tags in tag_sets:
                    rule = rule_for(list(from_kind.rules), tags)
                    if rule is not None and not rule.merged.empty:
                        picked.append((tags, rule))
                apart = len({json.dumps(rule.merged.conf, sort_keys=True) for _, rule in picked}) > 1
                for tags, rule in picked:
                    who = _subset_name(service, tags, tag_sets) if apart else service
                    _add(found, Fact(who, label, ASPECTS.get(from_kind.kind, from_kind.kind), rule.merged.conf,
                                     _origins(rule.merged)))
    for single in match.singles:
        _add(found, Fact(client, WHOLE_PROXY, ASPECTS.get(single.kind, single.kind), single.merged.conf,
                         _origins(single.merged)))
    if isinstance(proxy, Dataplane):
        patches = proxy_patches(desired, proxy)
        if patches:
            value = [{"policy": p.name, "default": p.spec.get("default")} for p in patches]
            origins = tuple(sorted(f"{p.kind}/{p.name} ({p.source})" for p in patches))
            # A patch is the proxy's own (Dataplane by name): its key names the proxy, so instances of one service
            # patched differently each keep their fact.
            _add(found, Fact(client, f"(proxy {proxy.name})", ASPECTS["MeshProxyPatch"], value, origins))
    return tuple(found[key] for key in sorted(found))


def _client_tags(desired: Desired, mesh: str) -> dict[str, list[dict[str, str]]]:
    """Per client service of the mesh, the distinct tag sets its instances present: a dataplane's certificate carries
    the tags of all of its inbounds (policies/clients.py), so that is what a `from` rule is matched against."""
    found: dict[str, list[dict[str, str]]] = {}
    for dp in desired.dataplanes:
        if dp.mesh != mesh:
            continue
        union = {k: v for inbound in dp.inbounds for k, v in inbound.tags.items() if k != SERVICE_TAG}
        for service in dp.services:
            tags = {**union, SERVICE_TAG: service}
            if tags not in found.setdefault(service, []):
                found[service].append(tags)
    return dict(sorted(found.items()))


def _subset_name(service: str, tags: dict[str, str], tag_sets: list[dict[str, str]]) -> str:
    """A client subset a rule treats apart from the rest of its service: `web (version=v2)`, by the tags whose
    values differ among the service's instances."""
    differing = sorted(k for k in tags if k != SERVICE_TAG and len({t.get(k) for t in tag_sets}) > 1)
    return f"{service} ({', '.join(f'{k}={tags[k]}' for k in differing)})" if differing else service


def proxy_patches(desired: Desired, proxy: Dataplane) -> list[Policy]:
    """The MeshProxyPatch policies that select the proxy, in the order they apply: least specific top-level
    targetRef kind first, then by name descending, the order of every merge (docs/policies.md); Kuma appends the
    lists of `appendModifications` in its merge order, so the most specific policy's modifications apply last."""
    rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
    found = [p for p in desired.policies if p.kind == "MeshProxyPatch" and selects(p, proxy)]
    by_name = sorted(found, key=lambda p: p.name, reverse=True)  # as every merge: the smallest name goes last
    return sorted(by_name, key=lambda p: rank.get(p.target_ref.kind, len(rank)))


def _permission_rules(kind: str, rules: list[FromRule]) -> list[Contribution]:
    """A MeshTrafficPermission's top-level `rules` items on an inbound, once each (they decide alone, as in Kuma)."""
    if kind != "MeshTrafficPermission":
        return []
    out: dict[tuple[str, int], Contribution] = {}
    for rule in rules:
        for c in rule.merged.contributions:
            if c.item.written_as == RULES:
                out.setdefault((c.policy.name, c.item.index), c)
    return list(out.values())


def _rules_decide(written: list[Contribution], san: str, server_name: str) -> tuple[str, tuple[str, ...]]:
    """What the RBAC of traffic_permission/envoy.py decides for a client with this URI SAN that sends this server
    name: any deny match denies, else any allow (or allowWithShadowDeny) match allows, else denied; with the rules
    that decided it."""

    def hits(key: str) -> list[Contribution]:
        return [c for c in written if any(m.matches(san, server_name) for m in rule_matches(c.item.default, (key,)))]

    for key, action in (("deny", "Deny"), ("allowWithShadowDeny", "AllowWithShadowDeny"), ("allow", "Allow")):
        found = hits(key)
        if found:
            if key == "allowWithShadowDeny" and hits("allow"):
                action = "Allow"
            return action, tuple(sorted({str(c.origin()) for c in found}))
    return "Deny", tuple(sorted({str(c.origin()) for c in written}))


def changes(before: Iterable[Fact], after: Iterable[Fact]) -> list[Change]:
    """What changes meaning between two sets of facts (the last applied, the desired), in (client, destination,
    aspect) order."""
    old = {f.key: f for f in before}
    new = {f.key: f for f in after}
    out = []
    for key in sorted(old.keys() | new.keys()):
        was, will = old.get(key), new.get(key)
        if was is not None and will is not None and _same(was.value, will.value):
            continue
        origins = will.origins if will is not None else was.origins if was is not None else ()
        out.append(Change(*key, None if was is None else was.value, None if will is None else will.value, origins))
    return out


def _client(proxy: Dataplane | ZoneEgress) -> str:
    if isinstance(proxy, ZoneEgress):
        return "egress"
    services = sorted({i.tags[SERVICE_TAG] for i in proxy.inbounds if SERVICE_TAG in i.tags})
    return ",".join(services) or proxy.name


def _origins(merged: Merged) -> tuple[str, ...]:
    return tuple(sorted({str(origin.set_by) for origin in merged.origins.values()}))


def _add(found: dict[tuple[str, str, str], Fact], fact: Fact) -> None:
    found.setdefault(fact.key, fact)  # instances of one service agree; the first one's fact stands for them


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
