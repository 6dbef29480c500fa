"""`meshplan explain`: for one proxy, which policies matched each destination and inbound, in merge order, what they
merged to with each field's origin (and whom it overrode); or, for one policy, where it lands and why not elsewhere.
Reads the desired model only: what it says is what render will do."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.match import matcher as match
from meshplan.match.matcher import Destination, Merged
from meshplan.model import Dataplane, Desired, Inbound, Policy, ZoneEgress
from meshplan.policies import FROM, KINDS, TO
from meshplan.present.text import printable

Proxy = Dataplane | ZoneEgress


@dataclass(frozen=True)
class FieldLine:
    path: str
    value: Any
    set_by: str
    overridden: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """One policy kind's result on one destination (`to`) or inbound (`from`, per client rule)."""

    kind: str
    where: str  # "outbound backend", "inbound 8080 (web)", "external service httpbin"
    side: str  # to | from
    client: str = ""  # for from: which clients the rule is for
    applied: tuple[str, ...] = ()  # the contributing items, least to most specific
    fields: tuple[FieldLine, ...] = ()


@dataclass(frozen=True)
class Explanation:
    proxy: str
    type: str
    mesh: str | None
    sections: tuple[Section, ...] = ()
    lands: tuple[str, ...] = field(default=())  # for --policy: where it applies
    misses: tuple[str, ...] = field(default=())  # for --policy: where it does not, and why


def _find_proxy(desired: Desired, name: str) -> Proxy:
    proxies: list[Proxy] = [*desired.dataplanes, *desired.egresses]
    for proxy in proxies:
        if proxy.name == name:
            return proxy
    raise MeshplanError(f"no proxy named {name!r} (proxies: {', '.join(desired.proxy_names())})")


def destinations(desired: Desired, proxy: Proxy) -> list[tuple[str, Destination]]:
    if isinstance(proxy, ZoneEgress):
        return [(f"external service {m.name} (mesh {m.mesh})", Destination.of_external(m))
                for m in sorted(desired.external_services, key=lambda m: (m.mesh, m.name))]
    return [
        (f"outbound {o.address}:{o.port} -> {'external service ' + o.external if o.external else o.service}",
         Destination.of_outbound(proxy, o))
        for o in proxy.outbounds
    ]


def inbounds(desired: Desired, proxy: Proxy) -> list[tuple[str, Inbound | Destination]]:
    if isinstance(proxy, ZoneEgress):
        return [(f"external service {m.name} (mesh {m.mesh}), its egress side", Destination.of_external(m))
                for m in sorted(desired.external_services, key=lambda m: (m.mesh, m.name))]
    return [(f"inbound {i.address}:{i.port} ({i.service})", i) for i in proxy.inbounds]


def _fields(merged: Merged) -> tuple[FieldLine, ...]:
    def value_at(path: str) -> Any:
        node: Any = merged.conf
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        return node

    return tuple(
        FieldLine(path, value_at(path), str(origin.set_by), tuple(str(o) for o in origin.overridden))
        for path, origin in sorted(merged.origins.items())
    )


def _applied(merged: Merged) -> tuple[str, ...]:
    return tuple(str(c) for c in merged.contributions)


def explain_proxy(desired: Desired, name: str) -> Explanation:
    proxy = _find_proxy(desired, name)
    sections: list[Section] = []
    for kind_name, kind in KINDS.items():
        policies = [p for p in desired.policies if p.kind == kind_name]
        if not policies:
            continue
        if TO in kind.sections:
            for where, destination in destinations(desired, proxy):
                merged = match.merge_to(policies, proxy, destination)
                if not merged.empty:
                    sections.append(Section(kind_name, where, TO, applied=_applied(merged), fields=_fields(merged)))
        if FROM in kind.sections:
            for where, inbound in inbounds(desired, proxy):
                for rule in match.merge_from(policies, proxy, inbound):
                    tags = rule.tags
                    client = "every client" if not tags else "clients with " + ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))
                    sections.append(Section(kind_name, where, FROM, client, _applied(rule.merged), _fields(rule.merged)))
    return Explanation(proxy.name, "egress" if isinstance(proxy, ZoneEgress) else "sidecar",
                       getattr(proxy, "mesh", None), tuple(sections))


def _find_policy(desired: Desired, ref: str) -> Policy:
    kind, _, name = ref.partition("/")
    found = [p for p in desired.policies if p.kind == kind and p.name == name]
    if not found:
        known = ", ".join(f"{p.kind}/{p.name}" for p in desired.policies) or "none"
        raise MeshplanError(f"no policy {ref!r} (policies: {known})")
    return found[0]


def explain_policy(desired: Desired, name: str, ref: str) -> Explanation:
    """Where one policy lands on one proxy, and where it does not and why."""
    proxy = _find_proxy(desired, name)
    policy = _find_policy(desired, ref)
    kind = KINDS[policy.kind]
    lands: list[str] = []
    misses: list[str] = []
    reason = match.why_not(policy, proxy)
    if reason is not None:
        misses.append(f"{proxy.name}: {reason}")
    else:
        if TO in kind.sections:
            for where, destination in destinations(desired, proxy):
                why = match.why_not_to(policy, proxy, destination)
                (misses if why else lands).append(f"{where}{': ' + why if why else ''}")
        if FROM in kind.sections:
            for where, inbound in inbounds(desired, proxy):
                why = match.why_not_from(policy, proxy, inbound)
                (misses if why else lands).append(f"{where}{': ' + why if why else ''}")
    base = explain_proxy(desired, name)
    mine = f"{policy.kind}/{policy.name} "
    sections = tuple(s for s in base.sections if s.kind == policy.kind and any(a.startswith(mine) for a in s.applied))
    return Explanation(base.proxy, base.type, base.mesh, sections, tuple(lands), tuple(misses))


def render_text(e: Explanation) -> str:
    lines = [f"{e.proxy} [{e.type}]" + (f" mesh {e.mesh}" if e.mesh else "")]
    if e.lands or e.misses:
        lines.append("")
        lines += [f"  lands on {w}" for w in e.lands] or ["  lands nowhere on this proxy"]
        lines += [f"  not on {w}" for w in e.misses]
    for s in e.sections:
        lines.append("")
        lines.append(f"{s.kind} {s.side} {s.where}" + (f", for {s.client}" if s.client else ""))
        lines.append("  applied, least to most specific (last wins):")
        lines += [f"    {a}" for a in s.applied]
        lines.append("  result:")
        for f in s.fields:
            over = f"; overrides {', '.join(f.overridden)}" if f.overridden else ""
            lines.append(f"    {f.path}: {_value(f.value)}  # {f.set_by}{over}")
    if not e.sections and not (e.lands or e.misses):
        lines.append("  no policy applies to this proxy")
    # each line is one line: a newline or an escape inside one came from a name or a file name, and is shown escaped
    return "\n".join(printable(line) for line in lines) + "\n"


def _value(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
