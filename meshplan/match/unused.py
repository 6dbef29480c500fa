"""Warnings, not errors: a policy that selects no proxy, and a name in a targetRef that nothing in the desired
directory has. Both are valid input (the proxy or service may come later), and both are most often a typo, so each
says where it was written and, when a name is close to one that exists, which one was probably meant."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshplan.envoy import names
from meshplan.errors import Source
from meshplan.match.matcher import HTTP_ROUTE, selects, why_not_from
from meshplan.model import (
    Dataplane,
    Desired,
    Policy,
    TargetRef,
    ZoneEgress,
)
from meshplan.policies import EMPTY_TO_KINDS, RULES

# targetRef kinds whose `name` is a service (kuma.io/service of some inbound), a Dataplane, or an external service
SERVICE_KINDS = ("MeshService", "MeshServiceSubset")


def warnings(desired: Desired) -> list[str]:
    """Every warning, as `file:line: Kind/name: message`, in file order."""
    proxies: list[Dataplane | ZoneEgress] = [*desired.dataplanes, *desired.egresses]
    by_mesh: dict[str, _Names] = {}
    found: list[tuple[Source, str]] = []
    for policy in desired.policies:
        if policy.kuma_default:
            continue  # Kuma's initial policies are in every mesh, used or not: nothing to warn the user about
        label = f"{policy.kind}/{policy.name}"
        if not policy.to and not policy.from_ and policy.kind in EMPTY_TO_KINDS:
            found.append((_line(policy, "to"), f"{label}: `to` is empty, so it configures nothing. Kuma accepts an "
                          "empty `to` as an override, but its rules, as meshplan's merge, take each `to` item on "
                          "its own: it clears no other policy's settings (to turn them off, set the values in a "
                          "`to` item)"))
            continue
        if policy.mesh not in by_mesh:
            by_mesh[policy.mesh] = _Names.of(desired, policy.mesh)
        known = by_mesh[policy.mesh]
        top = _name_miss(policy.target_ref, known)
        if top is not None:
            found.append((_line(policy, "targetRef.name"), f"{label}: {top}"))
        elif policy.target_ref.kind == HTTP_ROUTE:
            pass  # it goes where that route goes: the route's own warning says when that is nowhere
        elif not any(selects(policy, proxy) for proxy in proxies):
            found.append((_line(policy, "targetRef"), f"{label}: selects no proxy, so it changes nothing"))
        for section, items in (("to", policy.to), ("from", policy.from_)):
            for item in items:
                miss = _name_miss(item.target_ref, known)
                if miss is not None:
                    found.append((_line(policy, f"{section}[{item.index}].targetRef.name"), f"{label}: {miss}"))
    found += _permissions_set_aside(desired)
    found += _server_names_never_sent(desired)
    found.sort(key=lambda pair: (pair[0].file, pair[0].line))
    return [f"{source}: {message}" for source, message in found]


def _permissions_set_aside(desired: Desired) -> list[tuple[Source, str]]:
    """A `from`-form MeshTrafficPermission on an inbound that a `rules`-form one also selects takes no part there: as
    in Kuma, the inbound's RBAC is built from the rules alone (traffic_permission/envoy.py)."""
    out: list[tuple[Source, str]] = []
    permissions = [p for p in desired.policies if p.kind == "MeshTrafficPermission"]
    with_rules = [p for p in permissions if any(i.written_as == RULES for i in p.from_)]
    if not with_rules:
        return out
    for dp in desired.dataplanes:
        for inbound in dp.inbounds:
            ruled = [p for p in with_rules if why_not_from(p, dp, inbound) is None]
            if not ruled:
                continue
            for policy in permissions:
                if policy not in with_rules and why_not_from(policy, dp, inbound) is None:
                    out.append((_line(policy, "from"), f"{policy.kind}/{policy.name}: takes no part on dataplane "
                                f"{dp.name!r} inbound :{inbound.port}: {ruled[0].kind}/{ruled[0].name} selects it with "
                                "top-level `rules`, and then, as in Kuma, only `rules` decide who may connect"))
    return out


def _server_names_never_sent(desired: Desired) -> list[tuple[Source, str]]:
    """A MeshTrafficPermission rule's `sni` that no meshplan sidecar sends to the inbounds the policy selects: each
    sends `<service>.<mesh>.mesh` to a service (`names.service_sni`; `<name>.<mesh>.mes` to an external service
    through the egress), so such a match matches none of them. Valid (Kuma accepts any server name), most often a
    typo or the wrong service."""
    out: list[tuple[Source, str]] = []
    for policy in desired.policies:
        rules = [i for i in policy.from_ if i.written_as == RULES] if policy.kind == "MeshTrafficPermission" else []
        if not rules:
            continue
        if policy.target_ref.kind == "MeshExternalService":
            sent = {names.external_sni(policy.mesh, policy.target_ref.name or "")}
        else:
            sent = {names.service_sni(dp.mesh, inbound.service) for dp in desired.dataplanes for inbound in dp.inbounds
                    if why_not_from(policy, dp, inbound) is None}
        if not sent:
            continue  # it selects nothing: said on its own
        for item in rules:
            for key in ("deny", "allow", "allowWithShadowDeny"):
                for j, match in enumerate(item.default.get(key) or []):
                    value = (match.get("sni") or {}).get("value")
                    if value is None or value in sent:
                        continue
                    out.append((_line(policy, f"rules[{item.index}].default.{key}[{j}].sni.value"),
                                f"{policy.kind}/{policy.name}: `sni` {value!r} is no server name meshplan's sidecars "
                                f"send to the inbounds it selects (they send {', '.join(sorted(sent))}), so that "
                                f"match matches no meshplan client{_closest_server_name(value, sent)}"))
    return out


def _closest_server_name(value: str, sent: set[str]) -> str:
    """`_did_you_mean` by the service part (the first label): the `.<mesh>.mesh` they share would make any two close."""
    by_service = {name.split(".")[0]: name for name in sent}
    close = difflib.get_close_matches(value.split(".")[0], sorted(by_service), n=1, cutoff=0.6)
    return f" (did you mean {by_service[close[0]]!r}?)" if close else ""


@dataclass(frozen=True)
class _Names:
    """What a targetRef `name` may name in one mesh (built once per mesh): services, Dataplanes, MeshExternalServices
    (mesh-wide, as before), MeshHTTPRoutes, and the namespace of each service and Dataplane."""

    services: frozenset[str]
    dataplanes: frozenset[str]
    externals: frozenset[str]
    routes: frozenset[str]
    namespaces: dict[tuple[str, str], str | None]  # ("MeshService" | "Dataplane", name) -> its namespace

    @classmethod
    def of(cls, desired: Desired, mesh: str) -> _Names:
        namespaces: dict[tuple[str, str], str | None] = {
            ("MeshService", service): desired.service_namespace(mesh, service) for service in desired.services(mesh)}
        namespaces.update({("Dataplane", dp.name): dp.namespace for dp in desired.dataplanes if dp.mesh == mesh})
        return cls(frozenset(desired.services(mesh)), frozenset(dp.name for dp in desired.dataplanes),
                   frozenset(mes.name for mes in desired.external_services),
                   frozenset(p.name for p in desired.policies if p.kind == HTTP_ROUTE and p.mesh == mesh), namespaces)


def _namespace_miss(ref: TargetRef, namespaces: Mapping[tuple[str, str], str | None]) -> str | None:
    """A name resolved in a namespace (Kuma: the targetRef's `namespace`, else the policy's) that is somewhere else."""
    if ref.namespace is None or ref.kind not in SERVICE_KINDS + ("Dataplane",):
        return None
    what = "Dataplane" if ref.kind == "Dataplane" else "MeshService"
    there = namespaces.get((what, ref.name or ""))
    if there == ref.namespace:
        return None
    where = f"in namespace {there!r}" if there is not None else "in no namespace"
    return (f"targetRef names {ref.kind} {ref.name!r} in namespace {ref.namespace!r}, and {what} {ref.name!r} is "
            f"{where}, so it selects nothing")


def _name_miss(ref: TargetRef, names_in: _Names) -> str | None:
    if ref.name is None:
        return None
    known: frozenset[str]
    if ref.kind in SERVICE_KINDS:
        known, what = names_in.services, "service that no Dataplane inbound provides"
    elif ref.kind == "Dataplane":
        known, what = names_in.dataplanes, "Dataplane that does not exist"
    elif ref.kind == "MeshExternalService":
        known, what = names_in.externals, "MeshExternalService that does not exist"
    elif ref.kind == HTTP_ROUTE:
        known = names_in.routes
        what = "MeshHTTPRoute that does not exist in the policy's mesh, so the policy changes nothing"
    else:
        return None
    if ref.name in known:
        return _namespace_miss(ref, names_in.namespaces)
    return f"targetRef names {ref.kind} {ref.name!r}, a {what}{_did_you_mean(ref.name, known)}"


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _line(policy: Policy, field: str) -> Source:
    """Where a field of the spec was written: its own line, else the nearest enclosing one that has a line."""
    path = f"{policy.spec_path}.{field}"
    while path:
        if path in policy.lines:
            return Source(policy.source.file, policy.lines[path])
        path = path.rpartition(".")[0]
    return policy.source
