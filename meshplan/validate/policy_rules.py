"""The rules every policy shares: the shape of its top-level and item `targetRef`s, `proxyType`, which of `to` /
`from` its kind has (and, as Kuma, that a policy sets one of them, and which kinds a `to` item may not select), and the
seed's placement table for external services. A kind's own fields are its module's.
"""

from __future__ import annotations

from typing import Any

from meshplan.load.resources import PathKey, RawResource, format_path
from meshplan.model import EGRESS, GATEWAY, SIDECAR, Policy, PolicyItem, TargetRef
from meshplan.policies import FROM, ROUTE_KINDS, SINGLE, TO
from meshplan.policies.registry import BY_KIND, KINDS
from meshplan.validate.check import FieldCheck

PROXY_TYPES = (SIDECAR, GATEWAY, EGRESS)
TARGET_KINDS = ("Mesh", "MeshSubset", "MeshService", "MeshServiceSubset", "Dataplane", "MeshExternalService")

# Kinds a `to` item may not select, per policy kind (as Kuma v2.14.3's validators): a subset of a service's
# endpoints is not a destination these kinds configure, so such an item would apply to nothing.
TO_KINDS_REFUSED = {
    "MeshTimeout": ("MeshSubset", "MeshServiceSubset"),
    "MeshRetry": ("MeshSubset", "MeshServiceSubset"),
    "MeshCircuitBreaker": ("MeshSubset", "MeshServiceSubset"),
}


def target_ref(check: FieldCheck, obj: dict[str, Any], path: PathKey, *, top: bool,
               refused: tuple[str, ...] = ()) -> TargetRef | None:
    ref = check.field(obj, path, "targetRef", dict, required=not top)
    if ref is None:
        return TargetRef("Mesh") if top else None
    rp = path + ("targetRef",)
    # Kuma's `labels`, `sectionName`, `namespace` and `mesh` narrow or move what a targetRef selects: ignoring them
    # would apply a policy where it was not meant to go.
    check.unknown(ref, rp, ("kind", "name", "tags", "proxyType", "proxyTypes"), ("mesh", "namespace", "labels", "sectionName"))
    kind = check.field(ref, rp, "kind", str, required=True)
    if kind is None:
        return None
    if kind not in TARGET_KINDS:
        check.fail(rp + ("kind",), f"unknown targetRef kind {kind!r} (expected one of: {', '.join(TARGET_KINDS)})")
        return None
    if kind in refused:
        check.fail(rp + ("kind",), f"value {kind!r} is not supported here: a subset of a service's endpoints is not a "
                                   "destination this kind configures")
        return None
    name = check.field(ref, rp, "name", str, required=kind in ("MeshService", "MeshServiceSubset", "Dataplane", "MeshExternalService"))
    tags = check.tags(ref, rp, "tags", required=kind in ("MeshSubset", "MeshServiceSubset"))
    proxy_types: set[str] = set()
    keys = [k for k in ("proxyType", "proxyTypes") if k in ref]
    if len(keys) == 2:
        check.fail(rp, "set `proxyType` or `proxyTypes`, not both")
    for key in keys:
        if not top:
            check.fail(rp + (key,), "proxyType is only allowed on the top-level targetRef")
            continue
        values = check.field(ref, rp, key, list, default=[])
        for i, value in enumerate(values):
            if not isinstance(value, str) or value.lower() not in PROXY_TYPES:
                check.fail(rp + (key, i), f"unknown proxy type {value!r} (expected one of: Sidecar, Gateway, Egress)")
            else:
                proxy_types.add(value.lower())
    return TargetRef(kind, name, tags, frozenset(proxy_types))


def parse_policy(check: FieldCheck, res: RawResource, mesh: str) -> Policy | None:
    before = len(check.out)
    kind = KINDS[res.kind]
    body = res.body
    top = target_ref(check, body, (), top=True)
    known = ["targetRef"] + [s for s in (TO, FROM) if s in kind.sections] + (["default"] if SINGLE in kind.sections else [])
    if res.kind == "MeshHTTPRoute" or res.kind == "MeshTCPRoute":
        known.append("rules")
    for section in (TO, FROM):
        if section in body and section not in kind.sections:
            only = " and ".join(f"`{s}`" for s in sorted(kind.sections & {TO, FROM})) or "a single `default`"
            why = " (the seeds make it outbound-only)" if res.kind in ("MeshCircuitBreaker", "MeshRetry") else ""
            check.fail((section,), f"{res.kind} does not support `{section}`: use {only}{why}")
    check.unknown(body, (), tuple(known + [s for s in (TO, FROM) if s not in known]))
    items: dict[str, list[PolicyItem]] = {TO: [], FROM: []}
    sections = [s for s in (TO, FROM) if s in kind.sections]
    if sections and SINGLE not in kind.sections and res.kind not in ROUTE_KINDS and not any(body.get(s) for s in (TO, FROM)):
        # (a section the kind lacks is reported above, on its own; a route with no `to` is valid in Kuma: it routes
        # nothing)
        # As Kuma: a policy that configures nothing is a mistake, not a no-op.
        listed = " or ".join(f"`{s}`" for s in sections)
        check.fail((), f"at least one of {listed} has to be defined (and not be empty)" if len(sections) > 1
                   else f"{listed} has to be defined and not be empty")
    for section in (TO, FROM):
        if section not in kind.sections:
            continue
        for i, item in enumerate(check.field(body, (), section, list, default=[])):
            path: PathKey = (section, i)
            if not isinstance(item, dict):
                check.fail(path, "must be a mapping")
                continue
            refused = TO_KINDS_REFUSED.get(res.kind, ()) if section == TO else ()
            ref = target_ref(check, item, path, top=False, refused=refused)
            payload_key = "rules" if res.kind in ROUTE_KINDS else "default"
            check.unknown(item, path, ("targetRef", payload_key))
            if res.kind in ROUTE_KINDS:
                # As Kuma: no `rules` is the same as none listed, the `to` destination itself.
                rules = check.field(item, path, "rules", list, default=[])
                payload: dict[str, Any] = {"rules": rules}
            else:
                payload = check.field(item, path, "default", dict, required=True, default={})
            module = BY_KIND.get(res.kind)
            if module is not None and isinstance(payload, dict):
                module.validate(payload, path if res.kind in ROUTE_KINDS else path + ("default",), check, section)
            if ref is not None:
                items[section].append(PolicyItem(ref, payload, i))
    if top is not None:
        check_placement(check, res.kind, top, items[TO], items[FROM])
    if SINGLE in kind.sections:
        check.field(body, (), "default", dict, default={})
    if len(check.out) > before or top is None:
        return None
    assert res.name is not None
    lines = {format_path(k): v for k, v in res.lines.items()}
    return Policy(res.kind, res.name, mesh, top, tuple(items[TO]), tuple(items[FROM]), body, res.source,
                  format_path(res.body_path), lines)


def check_placement(check: FieldCheck, kind_name: str, top: TargetRef, to: list[PolicyItem], from_: list[PolicyItem]) -> None:
    """The seed: name the proxy type whenever a MeshExternalService is referenced, and only where the table allows."""
    kind = KINDS[kind_name]
    answer = f"the placement table says {kind_name} for a MeshExternalService is implemented on: {kind.placement}"
    named = top.proxy_types or {SIDECAR, GATEWAY}  # what the policy selects
    if top.kind == "MeshExternalService":
        if not top.proxy_types:
            check.fail(("targetRef",), f"a policy that references a MeshExternalService must set proxyType; {answer}")
        elif not kind.external_from or top.proxy_types != {EGRESS}:
            check.fail(("targetRef",), f"targetRef kind MeshExternalService selects the egress's inbound: {answer}")
        if to:
            check.fail((TO,), f"targetRef kind MeshExternalService takes `from` items only; {answer}")
    for item in to:
        if item.target_ref.kind != "MeshExternalService":
            continue
        path: PathKey = (TO, item.index, "targetRef")
        if not top.proxy_types:
            check.fail(path, f"a policy that references a MeshExternalService must set proxyType in its top-level targetRef; {answer}")
            continue
        wrong = sorted(named - kind.external_to - {GATEWAY})
        if not kind.external_to or wrong:
            where = f" not on the {' or '.join(wrong)}" if kind.external_to else ""
            check.fail(path, f"{kind_name} to a MeshExternalService is{where or ' not implemented'}; {answer}")
    for item in from_:
        if item.target_ref.kind == "MeshExternalService":
            check.fail((FROM, item.index, "targetRef"), f"a `from` item selects clients, and a MeshExternalService is never a client; {answer}")
    if top.kind != "MeshExternalService" and EGRESS in top.proxy_types and kind.external_from and from_:
        check.fail(("targetRef",), f"on the egress, {kind_name} applies per external service: {answer}")
    if EGRESS in top.proxy_types and from_ and not kind.external_from and TO in kind.sections:
        check.fail((FROM,), f"{kind_name} `from` is not implemented on the egress; {answer}")
