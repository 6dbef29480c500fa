"""The rules every policy shares: the shape of its top-level and item `targetRef`s, `proxyType`, which of `to` /
`from` its kind has (and, as Kuma, that a policy sets one of them, and which kinds a `to` item may not select), and the
seed's placement table for external services. A kind's own fields are its module's.
"""

from __future__ import annotations

from typing import Any

from meshplan.load.resources import PathKey, RawResource, format_path
from meshplan.model import (
    EGRESS,
    GATEWAY,
    NAMESPACE_TAG,
    SIDECAR,
    SYSTEM_NAMESPACE,
    Desired,
    Policy,
    PolicyItem,
    TargetRef,
)
from meshplan.policies import EMPTY_TO_KINDS, FROM, ROUTE_FIELDS, ROUTE_KINDS, RULES, SINGLE, TO
from meshplan.policies.registry import BY_KIND, KINDS
from meshplan.validate.check import FieldCheck
from meshplan.validate.namespaces import DNS_LABEL, check_policy_labels, policy_namespace, policy_role

PROXY_TYPES = (SIDECAR, GATEWAY, EGRESS)
DISPLAY_NAME = "kuma.io/display-name"
SERVICE_NAME_LABEL = "k8s.kuma.io/service-name"  # Kuma's label of a MeshService with its Kubernetes Service's name
SERVICE_LABELS = (DISPLAY_NAME, SERVICE_NAME_LABEL, NAMESPACE_TAG)  # what a `to` MeshService's labels may hold
# The kinds with a top-level `rules` list for inbound traffic in Kuma v2.14.3 (each api/v1alpha1 Spec's `Rules`).
TOP_LEVEL_RULES = ("MeshTimeout", "MeshFaultInjection", "MeshRateLimit", "MeshTrafficPermission", "MeshAccessLog",
                   "MeshCircuitBreaker")
# Of those, the kinds whose `rules[i].default` is the same conf as a `from` item's: meshplan reads a rule as a `from`
# item of kind Mesh (all inbound traffic of the selected inbounds), as Kuma's inbound rules do for a rule without
# `matches`. Kuma also forbids `to` beside `rules` in all of them but MeshFaultInjection (which has no `to` here).
RULES_AS_FROM = ("MeshTimeout", "MeshFaultInjection", "MeshRateLimit", "MeshAccessLog")
# The top-level targetRef kinds Kuma's validators allow a policy outside the system namespace (its non-system roles).
NAMESPACED_TOP_KINDS = ("Mesh", "Dataplane", "MeshSubset", "MeshService", "MeshServiceSubset")
TARGET_KINDS = ("Mesh", "MeshSubset", "MeshService", "MeshServiceSubset", "Dataplane", "MeshExternalService",
                "MeshHTTPRoute")
HTTP_ROUTE = "MeshHTTPRoute"

# Policies that target a MeshHTTPRoute (Kuma v2.14.3's validators): as the top-level targetRef (Kuma's older form,
# its `to` items then kind Mesh) and as a `to` item's targetRef; per kind, what takes effect on the route is
# `policies.ROUTE_FIELDS`. The kinds Kuma accepts that meshplan does not implement on a route are refused with the
# reason (docs/policies.md).
ROUTE_TOP_KINDS = ("MeshTimeout", "MeshRetry", "MeshRateLimit")  # Kuma: a top-level MeshHTTPRoute
# Kinds whose top-level MeshHTTPRoute Kuma v2.14.3 accepts, but configures only on MeshGateways: MeshRateLimit (its
# plugin applies `to` rules to gateway routes only, and its validator takes `to` only where the top-level targetRef
# includes gateways). meshplan has no gateways: the targetRef itself is read as Kuma reads it, and the `to` that would
# configure the gateway is refused there (`GATEWAY_ONLY_TO`); a `from` or `rules` under it is refused as Kuma does.
ROUTE_TOP_GATEWAY_ONLY = ("MeshRateLimit",)
GATEWAY_ONLY_TO = {
    "MeshRateLimit": "MeshRateLimit `to` configures MeshGateways only (Kuma v2.14.3: its validator takes `to` only "
                     "where the top-level targetRef includes gateways, a MeshHTTPRoute included, and its plugin "
                     "applies `to` to gateway routes; on a sidecar it configures nothing), and meshplan has no "
                     "gateways; limit on the destination's inbound with `from` or `rules` instead",
}
ROUTE_TO_KINDS = ("MeshTimeout", "MeshRetry", "MeshAccessLog", "MeshLoadBalancingStrategy")  # Kuma: in `to`
# Where Kuma's validator itself refuses the other fields of a `to` item of kind MeshHTTPRoute, its words.
KUMA_REFUSED_ON_ROUTE = {
    "MeshLoadBalancingStrategy": "field is not allowed when targetRef.kind is MeshHTTPRoute, only hashPolicies is supported",
}
# What Kuma's validator itself refuses under a top-level MeshHTTPRoute (the rest it accepts and does not apply).
KUMA_REFUSED_UNDER_ROUTE = {
    "MeshTimeout": ("connectionTimeout", "idleTimeout", "http.maxStreamDuration", "http.maxConnectionDuration"),
}

# Kinds a `to` item may not select, per policy kind (as Kuma v2.14.3's validators): a subset of a service's
# endpoints is not a destination these kinds configure, so such an item would apply to nothing.
TO_KINDS_REFUSED = {
    "MeshTimeout": ("MeshSubset", "MeshServiceSubset"),
    "MeshRetry": ("MeshSubset", "MeshServiceSubset"),
    "MeshCircuitBreaker": ("MeshSubset", "MeshServiceSubset"),
    "MeshLoadBalancingStrategy": ("MeshSubset", "MeshServiceSubset"),
}


def target_ref(check: FieldCheck, obj: dict[str, Any], path: PathKey, *, top: bool, inbound_policy: bool = False,
               refused: tuple[str, ...] = (), policy_namespace: str | None = None, policy_kind: str = "",
               item_section: str = TO, destination: bool = False) -> TargetRef | None:
    """A targetRef, checked. `inbound_policy`: the policy has `from` items, so a top-level `sectionName` may pick one
    of the inbounds it configures (Kuma allows `sectionName` only there). `destination`: a `to` item's, where a
    MeshService's `sectionName` picks one of its ports. `refused`: kinds this place does not take.
    `policy_namespace`: the policy's namespace outside the system one, where Kuma resolves a `name` written without a
    `namespace` (given for the top-level targetRef and `to` items; a `from` item's name selects clients by tags).
    `policy_kind` and `item_section`: whether a MeshHTTPRoute may be targeted here."""
    ref = check.field(obj, path, "targetRef", dict, required=not top)
    if ref is None:
        return TargetRef("Mesh") if top else None
    rp = path + ("targetRef",)
    # `mesh` would move what a targetRef selects: ignoring it would apply a policy where it was not meant to go, so it
    # is refused; `labels`, `sectionName` and `namespace` are read below where meshplan has their meaning.
    check.unknown(ref, rp, ("kind", "name", "tags", "proxyType", "proxyTypes", "labels", "sectionName", "namespace", "mesh"))
    if "mesh" in ref:
        check.fail(rp + ("mesh",), "not supported by meshplan (it would be ignored): a targetRef selects within the "
                   "policy's own mesh in meshplan (Kuma reserves it too); remove it")
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
    if kind == HTTP_ROUTE:
        return _route_ref(check, ref, rp, "top" if top else item_section, policy_kind)
    namespace = _ref_namespace(check, ref, rp, kind, top=top, policy_namespace=policy_namespace)
    dataplane_top = top and kind == "Dataplane"
    service_by_labels = kind == "MeshService" and not top and "labels" in ref
    name = check.field(ref, rp, "name", str,
                       required=kind in ("MeshService", "MeshServiceSubset", "MeshExternalService") and not service_by_labels)
    if kind == "Mesh" and "name" in ref:
        check.fail(rp + ("name",), "must not be set with kind Mesh (as Kuma: \"using name with kind Mesh is not yet "
                   "supported\"); kind Mesh is the policy's own mesh")
    tags = check.tags(ref, rp, "tags", required=kind in ("MeshSubset", "MeshServiceSubset"))
    if "tags" in ref and kind not in ("MeshSubset", "MeshServiceSubset"):
        # Ignored, the tags would widen the selection (a Dataplane targetRef without a name is every dataplane).
        hint = "; a Dataplane targetRef selects by `labels`" if kind == "Dataplane" else ""
        check.fail(rp + ("tags",), f"must not be set with kind {kind} (as Kuma: tags select only with MeshSubset and "
                   f"MeshServiceSubset){hint}")
        tags = {}
    labels: dict[str, str] | None = None
    if "labels" in ref:
        if dataplane_top:
            labels = check.tags(ref, rp, "labels")
            if name is not None:
                check.fail(rp + ("labels",), "set either `labels` or `name`, not both (as Kuma: a Dataplane targetRef "
                           "selects by one or the other)")
        elif kind == "Dataplane":
            check.fail(rp + ("labels",), "`labels` selects dataplanes only in the top-level targetRef")
        elif service_by_labels:
            name, namespace = _service_by_display_name(check, ref, rp, name)
        elif kind in ("MeshService", "MeshExternalService"):
            check.fail(rp + ("labels",), f"not supported by meshplan (it would be ignored): labels select {kind} "
                       "resources, and meshplan's services are kuma.io/service tags, not labelled resources; use `name`")
        else:
            check.fail(rp + ("labels",), f"not allowed with kind {kind} (Kuma allows labels with Dataplane, MeshService, "
                       "MeshExternalService)")
    section = None
    if "sectionName" in ref:
        if dataplane_top and not inbound_policy:
            check.fail(rp + ("sectionName",), "can only be used in a policy with `from` items: it picks one inbound, "
                       "and only `from` configures inbounds")
        elif dataplane_top:
            section = check.field(ref, rp, "sectionName", str)
            if section == "":
                check.fail(rp + ("sectionName",), "must not be empty")
        elif kind == "MeshService" and destination:
            # One port of the service (Kuma: the port's name, or its number when unnamed); which ports the service
            # has is checked once every Dataplane is known (`section_problem`).
            section = check.field(ref, rp, "sectionName", str)
            if section == "":
                check.fail(rp + ("sectionName",), "must not be empty")
        elif kind == "MeshService":
            check.fail(rp + ("sectionName",), "not allowed here: sectionName picks one port of a destination "
                       "MeshService, in a `to` item; a `from` item selects clients by their tags")
        else:
            check.fail(rp + ("sectionName",), f"not allowed here: sectionName picks one inbound of a top-level "
                       f"Dataplane targetRef{'' if top else ', and this is an item targetRef'} (kind {kind})")
    proxy_types: set[str] = set()
    keys = [k for k in ("proxyType", "proxyTypes") if k in ref]
    if len(keys) == 2:
        check.fail(rp, "set `proxyType` or `proxyTypes`, not both")
    for key in keys:
        if not top:
            check.fail(rp + (key,), "proxyType is only allowed on the top-level targetRef")
            continue
        if kind == "Dataplane" and ref.get(key):
            # Kuma: "must not be set with kind Dataplane" (a Dataplane targetRef selects sidecars by what they are).
            check.fail(rp + (key,), "must not be set with kind Dataplane (as Kuma: a Dataplane targetRef selects "
                       "dataplanes, never the egress or a gateway); remove it")
            continue
        values = check.field(ref, rp, key, list, default=[])
        for i, value in enumerate(values):
            if not isinstance(value, str) or value.lower() not in PROXY_TYPES:
                check.fail(rp + (key, i), f"unknown proxy type {value!r} (expected one of: Sidecar, Gateway, Egress)")
            else:
                proxy_types.add(value.lower())
    return TargetRef(kind, name, tags, frozenset(proxy_types), labels, section or None,
                     namespace if name is not None else None)


def _ref_namespace(check: FieldCheck, ref: dict[str, Any], rp: PathKey, kind: str, *, top: bool,
                   policy_namespace: str | None) -> str | None:
    """The namespace a targetRef's `name` is resolved in, as Kuma's TargetRefToKRI: its own `namespace`, else the
    policy's (outside the system namespace); None where meshplan resolves the name mesh-wide (a system policy)."""
    written = check.field(ref, rp, "namespace", str) if "namespace" in ref else None
    named = isinstance(ref.get("name"), str)
    if "namespace" in ref and kind in ("Mesh", "MeshSubset", "MeshServiceSubset"):
        check.fail(rp + ("namespace",), f"must not be set with kind {kind} (as Kuma: it names no resource)")
        return None
    if written is not None and not DNS_LABEL.fullmatch(written):
        check.fail(rp + ("namespace",), f"{written!r} is not a Kubernetes namespace name")
        return None
    if written is not None and "labels" in ref:
        check.fail(rp + ("labels",), "either labels or name and namespace must be specified (as Kuma)")
        return None
    if written is not None and not named:
        if kind == "Dataplane" and top:
            check.fail(rp + ("namespace",), f"selects no dataplane in Kuma without a `name` (a Dataplane targetRef "
                       f"by namespace alone matches none); to select a namespace's dataplanes write labels: "
                       f"{{{NAMESPACE_TAG}: {written}}}")
        return None
    if "namespace" in ref and kind == "Dataplane" and not top:
        return None  # (a Dataplane item is refused on its own)
    resolved = written if written is not None else policy_namespace
    if kind == "MeshExternalService":
        if resolved not in (None, SYSTEM_NAMESPACE):
            how = "its `namespace`" if written is not None else "the policy's namespace (it has no `namespace`)"
            check.fail(rp + ("namespace",) if written is not None else rp + ("name",),
                       f"names a MeshExternalService in namespace {resolved!r} ({how}), and Kuma keeps "
                       f"MeshExternalServices in the system namespace only, so it would select nothing: write "
                       f"namespace: {SYSTEM_NAMESPACE}")
        return None  # meshplan's MeshExternalServices are the system namespace's: mesh-wide
    return resolved if named and kind in ("Dataplane", "MeshService") else None


def _service_by_display_name(check: FieldCheck, ref: dict[str, Any], rp: PathKey,
                             name: str | None) -> tuple[str | None, str | None]:
    """A `to` item's `{kind: MeshService, labels: {kuma.io/display-name: backend}}`: the MeshService named backend, as
    Kuma's docs write it; `k8s.kuma.io/service-name` names it too (on Kubernetes Kuma labels each MeshService with
    its Service's name, which is its display name), and `k8s.kuma.io/namespace` narrows it to that namespace's (as
    Kuma's docs write a consumer policy). Returns the name and that namespace. Any other label selects MeshService
    resources by labels meshplan's services (kuma.io/service tags) do not have, so it is refused rather than matched
    against nothing."""
    labels = check.tags(ref, rp, "labels")
    if name is not None:
        check.fail(rp + ("labels",), "set either `labels` or `name`, not both (as Kuma)")
        return name, None
    others = sorted(set(labels) - set(SERVICE_LABELS))
    if others:
        check.fail(rp + ("labels",), f"not supported by meshplan (it would be ignored): {', '.join(others)}: meshplan's "
                   f"services are kuma.io/service tags, not labelled MeshService resources; only {DISPLAY_NAME} or "
                   f"{SERVICE_NAME_LABEL} (the service's name) and {NAMESPACE_TAG} (its namespace) can be matched")
        return None, None
    names = {labels[key] for key in (DISPLAY_NAME, SERVICE_NAME_LABEL) if key in labels}
    if not names:
        check.fail(rp + ("labels",), f"must name the service: {DISPLAY_NAME}: <name> (or use `name`)")
        return None, None
    if len(names) > 1:
        check.fail(rp + ("labels",), f"{DISPLAY_NAME} and {SERVICE_NAME_LABEL} name different services, so no "
                   "MeshService has both")
        return None, None
    namespace = labels.get(NAMESPACE_TAG)
    if namespace is not None and not DNS_LABEL.fullmatch(namespace):
        check.fail(rp + ("labels", NAMESPACE_TAG), f"{namespace!r} is not a Kubernetes namespace name")
        return None, None
    return names.pop(), namespace


def _route_ref(check: FieldCheck, ref: dict[str, Any], rp: PathKey, place: str, policy_kind: str) -> TargetRef | None:
    """A targetRef of kind MeshHTTPRoute: by `name`, or by `labels: {kuma.io/display-name: <name>}` (Kuma's checks:
    no tags, proxyTypes, sectionName or mesh; name or labels, not both)."""
    where = {"top": "the top-level targetRef", TO: "a `to` item"}.get(place, f"a `{place}` item")
    kuma_allows = policy_kind in {"top": ROUTE_TOP_KINDS, TO: ROUTE_TO_KINDS}.get(place, ())
    gateway_only = place == "top" and policy_kind in ROUTE_TOP_GATEWAY_ONLY  # its `to` is refused where it stands
    if (policy_kind not in ROUTE_FIELDS or not kuma_allows) and not gateway_only:
        if kuma_allows:
            check.fail(rp + ("kind",), f"not implemented by meshplan (it would be ignored): {policy_kind} on the routes "
                       f"of a MeshHTTPRoute ({where}); target the route's destination (MeshService) instead")
        else:
            check.fail(rp + ("kind",), f"value 'MeshHTTPRoute' is not supported: {policy_kind} cannot target a "
                       f"MeshHTTPRoute in {where} (as Kuma)")
        return None
    for key in ("tags", "proxyTypes", "proxyType", "sectionName"):
        if key in ref:
            check.fail(rp + (key,), "must not be set with kind MeshHTTPRoute")
    if "namespace" in ref:
        check.fail(rp + ("namespace",), "not supported by meshplan (it would be ignored): meshplan names a "
                   "MeshHTTPRoute by its name in the mesh; remove `namespace`")
    name = check.field(ref, rp, "name", str)
    if "labels" in ref:
        labels = check.tags(ref, rp, "labels")
        if name is not None:
            check.fail(rp + ("labels",), "either labels or name must be specified (as Kuma)")
        elif set(labels) != {DISPLAY_NAME}:
            check.fail(rp + ("labels",), f"not supported by meshplan (it would be ignored): a MeshHTTPRoute is selected "
                       f"by its name; write `labels: {{{DISPLAY_NAME}: <route name>}}` (Kuma sets that label on every "
                       "route) or `name`")
        else:
            name = labels[DISPLAY_NAME]
    elif name is None:
        check.fail(rp, "name or labels must be set when kind is MeshHTTPRoute")
    if name is None or any(key in ref for key in ("tags", "proxyTypes", "proxyType", "sectionName", "namespace")) or (
            "labels" in ref and "name" in ref):
        return None
    return TargetRef(HTTP_ROUTE, name)


def _route_default(check: FieldCheck, kind: str, default: Any, path: PathKey, top_level: bool) -> None:
    """A `default` that applies on a MeshHTTPRoute's routes sets only what takes effect per route (ROUTE_FIELDS):
    Kuma refuses some of the rest (KUMA_REFUSED_UNDER_ROUTE, KUMA_REFUSED_ON_ROUTE) and accepts the others and
    ignores them there, which meshplan refuses rather than ignore."""
    if not isinstance(default, dict):
        return
    allowed = ROUTE_FIELDS[kind]
    per_route = f"per route, {kind} sets only {', '.join(allowed)}"

    def refuse(at: PathKey) -> None:
        dotted = ".".join(str(k) for k in at[len(path):])
        if top_level and dotted in KUMA_REFUSED_UNDER_ROUTE.get(kind, ()):
            check.fail(at, f"can't be specified when top-level TargetRef is referencing MeshHTTPRoute ({per_route})")
        elif not top_level and kind in KUMA_REFUSED_ON_ROUTE:
            check.fail(at, KUMA_REFUSED_ON_ROUTE[kind])
        else:
            check.fail(at, f"not supported on a MeshHTTPRoute's routes (Kuma accepts it and ignores it there); {per_route}")

    for key, value in default.items():
        if key in allowed:
            continue
        inner = [a.split(".", 1)[1] for a in allowed if a.startswith(key + ".")]
        if inner and isinstance(value, dict):
            for sub in value:
                if sub not in inner:
                    refuse(path + (key, sub))
            continue
        refuse(path + (key,))


def parse_policy(check: FieldCheck, res: RawResource, mesh: str) -> Policy | None:
    before = len(check.out)
    namespace = policy_namespace(check.out, res)
    kind = KINDS[res.kind]
    body = res.body
    role, no_role = policy_role(body, namespace, kind.sections)
    if no_role is not None:
        check.fail((), no_role)
    check_policy_labels(check.out, res, namespace, role)
    has_rules = res.kind in TOP_LEVEL_RULES and bool(body.get(RULES))
    top = target_ref(check, body, (), top=True,
                     inbound_policy=(FROM in kind.sections and bool(body.get(FROM))) or has_rules,
                     policy_namespace=namespace, policy_kind=res.kind)
    if top is not None and namespace is not None:
        _check_scoped_top(check, top, role, namespace)
    written_top = body.get("targetRef")
    top_route = isinstance(written_top, dict) and written_top.get("kind") == HTTP_ROUTE
    if top_route:
        for section in (FROM, RULES):
            if body.get(section):
                what = ("a route's traffic on a MeshGateway, not an inbound" if res.kind in ROUTE_TOP_GATEWAY_ONLY
                        else "that route's outbound traffic (`to` items of kind Mesh)")
                check.fail((section,), f"must not be defined: a top-level MeshHTTPRoute targetRef configures {what}")
    known = ["targetRef"] + [s for s in (TO, FROM) if s in kind.sections] + (["default"] if SINGLE in kind.sections else [])
    if res.kind == "MeshHTTPRoute" or res.kind == "MeshTCPRoute":
        known.append("rules")
    for section in (TO, FROM):
        if section in body and section not in kind.sections:
            only = " and ".join(f"`{s}`" for s in sorted(kind.sections & {TO, FROM})) or "a single `default`"
            why = " (the seeds make it outbound-only)" if res.kind in ("MeshCircuitBreaker", "MeshRetry") else ""
            if section == TO and res.kind in GATEWAY_ONLY_TO:
                check.fail((section,), f"not supported by meshplan: {GATEWAY_ONLY_TO[res.kind]}")
            else:
                check.fail((section,), f"{res.kind} does not support `{section}`: use {only}{why}")
    check.unknown({k: v for k, v in body.items() if not (k == RULES and res.kind in TOP_LEVEL_RULES)}, (),
                  tuple(known + [s for s in (TO, FROM) if s not in known]))
    items: dict[str, list[PolicyItem]] = {TO: [], FROM: []}
    if RULES in body and res.kind in TOP_LEVEL_RULES:
        items[FROM].extend(_top_level_rules(check, res, body, mesh))
    sections = [s for s in (TO, FROM) if s in kind.sections] + ([RULES] if res.kind in TOP_LEVEL_RULES else [])
    empty_to_allowed = res.kind in EMPTY_TO_KINDS and body.get(TO) == [] and not any(body.get(s) for s in sections)
    if (sections and SINGLE not in kind.sections and res.kind not in ROUTE_KINDS and not empty_to_allowed
            and not any(body.get(s) for s in sections) and not any(s in body for s in (TO, FROM) if s not in sections)):
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
            ref = target_ref(check, item, path, top=False, refused=refused,
                             policy_namespace=namespace if section == TO else None,
                             policy_kind=res.kind, item_section=section, destination=section == TO)
            on_route = section == TO and res.kind in ROUTE_FIELDS and (
                (top is not None and top.kind == HTTP_ROUTE) or (ref is not None and ref.kind == HTTP_ROUTE))
            if on_route and top_route and ref is not None and ref.kind != "Mesh":
                check.fail(path + ("targetRef", "kind"), f"value {ref.kind!r} is not supported: under a top-level "
                           "MeshHTTPRoute targetRef a `to` item is kind Mesh (the route's own destinations)")
                ref = None
            if on_route:
                _route_default(check, res.kind, item.get("default"), path + ("default",), top_route)
            payload_key = "rules" if res.kind in ROUTE_KINDS else "default"
            if res.kind == "MeshHTTPRoute" and "hostnames" in item:
                check.fail(path + ("hostnames",), "not supported by meshplan: hostnames match on a MeshGateway's "
                           "listeners, and meshplan has no gateways")
            check.unknown({k: v for k, v in item.items() if k != "hostnames" or res.kind != "MeshHTTPRoute"}, path,
                          ("targetRef", payload_key))
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
        written = body.get("targetRef")
        check_placement(check, res.kind, top, items[TO], items[FROM], written if isinstance(written, dict) else None)
    if SINGLE in kind.sections:
        default = check.field(body, (), "default", dict, default={})
        module = BY_KIND.get(res.kind)
        if module is not None and isinstance(default, dict):
            module.validate(default, ("default",), check, SINGLE)
    if len(check.out) > before or top is None:
        return None
    assert res.name is not None
    lines = {format_path(k): v for k, v in res.lines.items()}
    return Policy(res.kind, res.name, mesh, top, tuple(items[TO]), tuple(items[FROM]), body, res.source,
                  format_path(res.body_path), lines, namespace, role)


def _check_scoped_top(check: FieldCheck, top: TargetRef, role: str, namespace: str) -> None:
    """A policy outside the system namespace: Kuma's validators take only Mesh, Dataplane, MeshSubset, MeshService and
    MeshServiceSubset as its top-level kind; and it never configures the egress, which lives in the system namespace
    (Kuma scopes a consumer or workload-owner policy to its namespace's dataplanes)."""
    if top.kind not in NAMESPACED_TOP_KINDS:
        check.fail(("targetRef", "kind"), f"value {top.kind!r} is not supported in a policy outside "
                   f"{SYSTEM_NAMESPACE} (Kuma allows {', '.join(NAMESPACED_TOP_KINDS)}); put the policy in "
                   f"{SYSTEM_NAMESPACE}")
    elif EGRESS in top.proxy_types:
        check.fail(("targetRef",), f"a {role} policy in namespace {namespace!r} cannot configure the egress: the "
                   f"ZoneEgress lives in {SYSTEM_NAMESPACE}; put the policy in {SYSTEM_NAMESPACE}")


def _top_level_rules(check: FieldCheck, res: RawResource, body: dict[str, Any], mesh: str) -> list[PolicyItem]:
    """Kuma 2.12+'s top-level `rules` (inbound policies), checked as Kuma's validators check them (same field paths),
    each rule read as a `from` item of kind Mesh: all inbound traffic of the selected inbounds. Rules merge in the
    order written, after the policies ordered before this one and before those ordered after it, as Kuma's inbound
    rules merge a policy's rules (`written_as` keeps `rules[i]` for origins)."""
    rules = check.field(body, (), RULES, list, default=[])
    if res.kind == "MeshCircuitBreaker":
        check.fail((RULES,), "MeshCircuitBreaker does not support `rules`: they configure inbounds, and the seeds make "
                   "MeshCircuitBreaker outbound-only; use `to`")
        return []
    if rules and (body.get(TO) or body.get(FROM)):
        check.fail((), "field 'from' must be empty when 'rules' is defined"
                   if res.kind in ("MeshFaultInjection", "MeshTrafficPermission")
                   else "fields 'to' and 'from' must be empty when 'rules' is defined")
    if res.kind == "MeshRateLimit" and rules and _includes_gateways(body.get("targetRef")):
        check.fail((RULES,), "must not be defined: the top-level targetRef (kind Mesh or MeshSubset without proxyTypes "
                   "excluding Gateway) includes gateways, as Kuma refuses; set proxyTypes: [Sidecar] or select "
                   "kind Dataplane")
        return []
    module = BY_KIND.get(res.kind)
    items = []
    for i, rule in enumerate(rules):
        path: PathKey = (RULES, i)
        if not isinstance(rule, dict):
            check.fail(path, "must be a mapping")
            continue
        if res.kind == "MeshTrafficPermission":
            # Its rules have no `matches`: their `default` lists the clients, by SPIFFE ID.
            check.unknown(rule, path, ("default",))
            payload = check.field(rule, path, "default", dict, required=True, default={})
            if module is not None and isinstance(payload, dict):
                module.validate(payload, path + ("default",), check, RULES)
            items.append(PolicyItem(TargetRef("Mesh"), payload, i, RULES))
            continue
        check.unknown(rule, path, ("matches", "default"))
        matches = check.field(rule, path, "matches", list, default=[])
        _check_matches(check, res.kind, path, matches)
        payload = check.field(rule, path, "default", dict, required=True, default={})
        if module is not None and isinstance(payload, dict):
            module.validate(payload, path + ("default",), check, FROM)
        items.append(PolicyItem(TargetRef("Mesh"), payload, i, RULES))
    return items


def _check_matches(check: FieldCheck, kind: str, path: PathKey, matches: list[Any]) -> None:
    """A rule's `matches` as Kuma checks them (spiffeID or sni; spiffeID `type` Exact or Prefix), then refused: a
    matched rule applies to some clients only, by the SPIFFE ID (or SNI) of their certificate, and meshplan does not
    yet render an inbound conf conditioned on one (a rule without `matches` applies to every client)."""
    for j, match in enumerate(matches):
        mp = path + ("matches", j)
        if not isinstance(match, dict):
            check.fail(mp, "must be a mapping")
            continue
        check.unknown(match, mp, ("spiffeID", "sni"))
        if "spiffeID" not in match and "sni" not in match:
            check.fail(mp, "must specify at least one of 'spiffeID' or 'sni'")
            continue
        spiffe = match.get("spiffeID")
        if isinstance(spiffe, dict):
            check.unknown(spiffe, mp + ("spiffeID",), ("type", "value"))
            kind_of = spiffe.get("type")
            if kind_of in (None, ""):
                check.fail(mp + ("spiffeID", "type"), "must be set")
            elif kind_of not in ("Exact", "Prefix"):
                check.fail(mp + ("spiffeID", "type"), f"unrecognized type {kind_of!r}, supported values are: Exact, Prefix")
            check.field(spiffe, mp + ("spiffeID",), "value", str, required=True)
        elif "spiffeID" in match:
            check.fail(mp + ("spiffeID",), "must be a mapping")
    if matches:
        check.fail(path + ("matches",), f"not implemented by meshplan (it would be ignored): a rule with `matches` "
                   f"applies only to clients whose certificate SPIFFE ID (or SNI) matches, and meshplan's {kind} "
                   "inbound conf is not conditioned on one yet; drop `matches` to apply the rule to every client")


def _includes_gateways(ref: Any) -> bool:
    """Kuma's IncludesGateways for a top-level targetRef as written: kind Mesh or MeshSubset with no proxyTypes, or
    with Gateway among them."""
    if not isinstance(ref, dict):
        return True  # no targetRef: kind Mesh, every proxy type
    types = ref.get("proxyTypes", ref.get("proxyType")) or []
    named = {t.lower() for t in types if isinstance(t, str)} if isinstance(types, list) else set()
    return ref.get("kind") in ("Mesh", "MeshSubset") and (not named or GATEWAY in named)


def check_placement(check: FieldCheck, kind_name: str, top: TargetRef, to: list[PolicyItem], from_: list[PolicyItem],
                    written: dict[str, Any] | None = None) -> None:
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
    if EGRESS in top.proxy_types and SINGLE in kind.sections:
        at: PathKey = ("targetRef", "proxyTypes" if written is not None and "proxyTypes" in written else "proxyType")
        check.fail(at, f"{kind_name} is not implemented on the egress; {answer}")
    if EGRESS in top.proxy_types and from_ and not kind.external_from and TO in kind.sections:
        check.fail((FROM,), f"{kind_name} `from` is not implemented on the egress; {answer}")


def check_route_placement(policy: Policy, desired: Desired, check: FieldCheck) -> None:
    """A policy on a MeshHTTPRoute's routes lives where those routes are, on the sidecar: where the route sends to a
    MeshExternalService and the seed's placement table keeps the kind off the sidecar for one (MeshLoadBalancingStrategy:
    egress only), it would change nothing there, so it is refused (checked once every resource is known)."""
    kind = KINDS[policy.kind]
    if SIDECAR in kind.external_to:
        return
    targets: list[tuple[PathKey, TargetRef]] = (
        [(("targetRef",), policy.target_ref)] if policy.target_ref.kind == HTTP_ROUTE else [])
    targets += [((TO, item.index, "targetRef"), item.target_ref) for item in policy.to
                if item.target_ref.kind == HTTP_ROUTE]
    for path, ref in targets:
        for route in desired.policies:
            if route.kind != HTTP_ROUTE or route.name != ref.name or route.mesh != policy.mesh:
                continue
            external = sorted({i.target_ref.name or "" for i in route.to if i.target_ref.kind == "MeshExternalService"})
            if external:
                check.fail(path, f"MeshHTTPRoute {ref.name!r} routes to MeshExternalService {', '.join(external)} on the "
                           f"sidecar, where {policy.kind} for a MeshExternalService is not implemented: the placement "
                           f"table says {kind.placement}")
