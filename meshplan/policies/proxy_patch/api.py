"""MeshProxyPatch's conf: `default.appendModifications`, parsed and checked once (validation and render read the
same dataclasses).

Checked as Kuma v2.14.3 does: exactly one of cluster / listener / networkFilter / httpFilter / virtualHost per
modification; the operations each allows; `value` required for an add and forbidden for a remove; a patch has
exactly one of `value` and `jsonPatches`; AddBefore / AddAfter / a filter Patch name the filter (`match.name`); an
Add of a cluster or listener has no `match`. A `value` must parse as the Envoy resource it is (xds-protos, with
every extension type), and is kept in proto-JSON form with proto field names, so it merges into meshplan's own
resources. Listener tags (`listener.match.tags`, the filters' `match.listenerTags`) are a mapping of tag names to
values (`*`: any value), matched as Kuma matches a listener's `io.kuma.tags` (envoy.py says which tags a listener
has). meshplan differs where it has nothing to match: `match.origin` is `inbound` or `outbound` (the other
origins Kuma knows name resources meshplan never renders).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from meshplan.envoy.typed_json import TYPE_URLS, envoy_form
from meshplan.policies.conf import ConfReader, Setting

Json = dict[str, Any]

CLUSTER, LISTENER, NETWORK_FILTER, HTTP_FILTER, VIRTUAL_HOST = (
    "cluster", "listener", "networkFilter", "httpFilter", "virtualHost")
TARGETS = (CLUSTER, LISTENER, NETWORK_FILTER, HTTP_FILTER, VIRTUAL_HOST)

_RESOURCE_OPS = ("Add", "Patch", "Remove")
_FILTER_OPS = ("AddFirst", "AddLast", "AddBefore", "AddAfter", "Patch", "Remove")
OPERATIONS = {CLUSTER: _RESOURCE_OPS, LISTENER: _RESOURCE_OPS, VIRTUAL_HOST: _RESOURCE_OPS,
              NETWORK_FILTER: _FILTER_OPS, HTTP_FILTER: _FILTER_OPS}

# The match fields Kuma has per modification type; the ones meshplan cannot honour are rejected, with why.
MATCH_FIELDS = {
    CLUSTER: ("name", "origin"),
    LISTENER: ("name", "origin", "tags"),
    NETWORK_FILTER: ("name", "origin", "listenerName", "listenerTags"),
    HTTP_FILTER: ("name", "origin", "listenerName", "listenerTags"),
    VIRTUAL_HOST: ("name", "origin", "routeConfigurationName"),
}

# Kuma's `origin` names the generator of a resource. meshplan's sidecar resources are its inbound listeners and
# local clusters (`inbound`), and its outbound listeners and clusters to services (`outbound`).
ORIGINS = ("inbound", "outbound")
_ELSEWHERE = {
    "transparent": "meshplan renders no transparent-proxy resources (outbounds are explicit listeners)",
    "prometheus": "meshplan renders no Prometheus endpoint listener",
    "direct-access": "meshplan renders no direct-access resources",
    "ingress": "meshplan has no zone ingress",
    "egress": "MeshProxyPatch is not applied on the egress (the placement table puts it out of scope)",
    "gateway": "meshplan has no MeshGateway",
}

PATCH_OPS = ("add", "remove", "replace", "move", "copy", "test")


@dataclass(frozen=True)
class JsonPatch:
    op: str
    path: str
    value: Any
    from_: str | None
    index: int  # its position in `jsonPatches`


@dataclass(frozen=True)
class Match:
    name: str | None
    origin: str | None
    listener_name: str | None
    route_configuration_name: str | None
    listener_tags: dict[str, str] | None = None  # `tags` (listener) or `listenerTags` (filters)


@dataclass(frozen=True)
class Modification:
    target: str  # one of TARGETS
    operation: str
    match: Match
    value: Json | None  # proto JSON, proto field names
    json_patches: tuple[JsonPatch, ...]
    index: int  # its position in `appendModifications`


@dataclass(frozen=True)
class Conf:
    modifications: Setting[tuple[Modification, ...]]


def parse(at: ConfReader) -> Conf | None:
    at.unknown(("appendModifications",))
    if not at.raw.get("appendModifications"):
        at.fail("must not be empty: set `appendModifications`" if "appendModifications" not in at.raw
                else "must not be empty", None if "appendModifications" not in at.raw else "appendModifications")
        return None
    mods = at.list_of("appendModifications", _modification)
    return None if mods is None else Conf(mods)


def _modification(element: Any, at: ConfReader) -> Modification | None:
    if not isinstance(element, dict):
        at.fail("must be a mapping")
        return None
    at.unknown(TARGETS)
    present = [t for t in TARGETS if at.raw.get(t) is not None]
    if len(present) != 1:
        at.fail(f"exactly one modification can be defined at a time ({', '.join(TARGETS)}); "
                f"{len(present)} are defined")
        return None
    target = present[0]
    index = at.path[-1]
    assert isinstance(index, int)
    return at.section(target, lambda mod: _one(target, index, mod))


def _one(target: str, index: int, at: ConfReader) -> Modification | None:
    at.unknown(("match", "operation", "value", "jsonPatches"))
    operation = at.choice("operation", OPERATIONS[target]) if at.has("operation") else None
    if not at.has("operation"):
        at.fail("`operation` is required", None)
    match = at.section("match", lambda m: _match(target, m)) or Match(None, None, None, None, None)
    has_value, has_patches = at.has("value"), at.has("jsonPatches")
    value: Json | None = None
    patches: tuple[JsonPatch, ...] = ()
    op = None if operation is None else operation.value
    if op is None:
        return None
    if op == "Remove":
        if has_value:
            at.fail("must not be defined for a Remove", "value")
        if has_patches:
            at.fail("must not be defined for a Remove", "jsonPatches")
    elif op == "Patch":
        if has_value and has_patches:
            at.fail("set `value` or `jsonPatches`, not both")
        elif not has_value and not has_patches:
            at.fail("a Patch needs exactly one of `value` and `jsonPatches`")
        elif has_value:
            value = _value(target, at)
        else:
            found = at.list_of("jsonPatches", _json_patch)
            patches = () if found is None else found.value
        if target in (NETWORK_FILTER, HTTP_FILTER) and match.name is None:
            at.fail("`match.name` is required: name the filter to patch", "match" if at.has("match") else None)
    else:  # the adds
        if has_patches:
            at.fail(f"not allowed for {op}: only a Patch takes JSON patches", "jsonPatches")
        if op == "Add" and target in (CLUSTER, LISTENER) and at.has("match"):
            at.fail(f"must not be defined: an Add of a {target} matches nothing", "match")
        if op == "Add" and target == VIRTUAL_HOST and match.name is not None:
            at.fail("must not be defined for an Add of a virtual host", "match")
        if op in ("AddBefore", "AddAfter") and match.name is None:
            where = "before" if op == "AddBefore" else "after"
            at.fail(f"`match.name` must be defined: pick the filter {where} which this one is added",
                    "match" if at.has("match") else None)
        if not has_value:
            at.fail(f"`value` is required for {op}")
        else:
            value = _value(target, at)
            if value is not None and not value.get("name") and target in (CLUSTER, LISTENER, HTTP_FILTER,
                                                                           NETWORK_FILTER):
                at.fail(f"an added {target} needs a `name` (Envoy requires one; matches and the plan use it)",
                        "value")
    return Modification(target, op, match, value, patches, index)


def _match(target: str, at: ConfReader) -> Match:
    known = MATCH_FIELDS[target]
    at.unknown(known)
    tags = None
    for key in ("tags", "listenerTags"):
        if key in known and at.has(key):
            tags = at.tags(key)
    origin = at.text("origin")
    if origin is not None and origin.value not in ORIGINS:
        why = _ELSEWHERE.get(origin.value, "not an origin of any resource meshplan renders")
        at.fail(f"origin {origin.value!r} has no meaning here: {why} (meshplan's origins: {', '.join(ORIGINS)})",
                "origin")
        origin = None
    name = at.text("name")
    listener = at.text("listenerName") if "listenerName" in known else None
    route = at.text("routeConfigurationName") if "routeConfigurationName" in known else None
    return Match(None if name is None else name.value, None if origin is None else origin.value,
                 None if listener is None else listener.value, None if route is None else route.value,
                 None if tags is None else tags.value)


def _value(target: str, at: ConfReader) -> Json | None:
    text = at.text("value")
    if text is None:
        return None
    try:
        loaded = yaml.safe_load(text.value)
    except yaml.YAMLError as exc:
        at.fail(f"not YAML: {exc}".replace("\n", " "), "value")
        return None
    if not isinstance(loaded, dict):
        at.fail(f"must be the YAML of an Envoy {_type_name(target)}, got {type(loaded).__name__}", "value")
        return None
    try:
        return envoy_form(loaded, TYPE_URLS[target])
    except ValueError as exc:
        at.fail(f"native Envoy resource is not valid: {exc}", "value")
        return None


def _json_patch(element: Any, at: ConfReader) -> JsonPatch | None:
    if not isinstance(element, dict):
        at.fail("must be a mapping")
        return None
    at.unknown(("op", "path", "value", "from"))
    op = at.choice("op", PATCH_OPS) if at.has("op") else None
    if not at.has("op"):
        at.fail("`op` is required")
    path = at.text("path")
    if path is None:
        at.fail("`path` is required")
    elif path.value and not path.value.startswith("/"):
        at.fail("must be a JSON pointer: empty or starting with /", "path")
    source = at.text("from")
    if op is not None and op.value in ("move", "copy") and source is None:
        at.fail(f"`from` is required for {op.value}")
    if op is not None and op.value in ("add", "replace", "test") and "value" not in at.raw:
        at.fail(f"`value` is required for {op.value}")
    if op is None or path is None:
        return None
    index = at.path[-1]
    assert isinstance(index, int)
    return JsonPatch(op.value, path.value, at.raw.get("value"), None if source is None else source.value, index)


def _type_name(target: str) -> str:
    return TYPE_URLS[target].rpartition(".")[2]
