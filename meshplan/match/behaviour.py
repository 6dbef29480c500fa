"""What a proxy's matched policies mean, per client service and destination: the facts a plan's behaviour summary
compares (`admin → backend: permission Allow → Deny`), read from the one matching result.

A fact is (client, destination, aspect) with the merged value and the policies that set it. `to` kinds: the client
is the proxy's own service (its inbounds' `kuma.io/service`; the egress: `egress`), the destination the service or
external service it calls. `from` kinds: the destination is the inbound's service (on the egress, the external
service), and there is one fact per client service of the mesh, with the rule that client's `kuma.io/service` tag
picks (a client's other tags, such as `version`, are not looked at: a rule for `version: v2` shows under no client).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshplan.match.matcher import Contribution, FromRule, Merged, rule_for
from meshplan.match.result import ProxyMatch
from meshplan.model import SERVICE_TAG, Dataplane, Desired, Inbound, ZoneEgress
from meshplan.policies import RULES

ASPECTS = {
    "MeshTrafficPermission": "permission", "MeshTimeout": "timeout", "MeshRetry": "retry",
    "MeshRateLimit": "rate-limit", "MeshFaultInjection": "fault", "MeshHTTPRoute": "route", "MeshTCPRoute": "route",
    "MeshCircuitBreaker": "circuit-breaker", "MeshHealthCheck": "health-check",
    "MeshLoadBalancingStrategy": "load-balancing", "MeshAccessLog": "access-log",
}


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
    for inbound in match.inbounds:
        target = inbound.target
        if isinstance(target, Inbound):  # a sidecar's inbound; the egress's are its external services
            assert isinstance(proxy, Dataplane)
            label, mesh = target.service, proxy.mesh
        else:
            label, mesh = target.name, target.mesh
        clients = desired.services(mesh) if inbound.from_ else []
        for from_kind in inbound.from_:
            written = _permission_rules(from_kind.kind, list(from_kind.rules))
            for service in clients:
                if written:
                    action, origins = _rules_decide(written, f"spiffe://{mesh}/{service}")
                    _add(found, Fact(service, label, ASPECTS.get(from_kind.kind, from_kind.kind), {"action": action},
                                     origins))
                    continue
                rule = rule_for(list(from_kind.rules), {SERVICE_TAG: service})
                if rule is not None and not rule.merged.empty:
                    _add(found, Fact(service, label, ASPECTS.get(from_kind.kind, from_kind.kind), rule.merged.conf,
                                     _origins(rule.merged)))
    return tuple(found[key] for key in sorted(found))


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


def _rules_decide(written: list[Contribution], san: str) -> tuple[str, tuple[str, ...]]:
    """What the RBAC of traffic_permission/envoy.py decides for a client with this URI SAN: any deny match denies,
    else any allow (or allowWithShadowDeny) match allows, else denied; with the rules that decided it."""

    def hits(key: str) -> list[Contribution]:
        return [c for c in written for m in c.item.default.get(key) or []
                if (san == m["spiffeID"]["value"] if m["spiffeID"]["type"] == "Exact"
                    else san.startswith(m["spiffeID"]["value"]))]

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
