"""One canonical form for Envoy resources, shared by the rendered side and the live side.

A resource (a cluster or a listener in proto-JSON, with its `@type`) is parsed into the Envoy protos from
`xds-protos` and serialised back with proto field names, default values dropped and the secrets Envoy redacts
redacted. Envoy re-serialises what it was given (`0.25s` comes back `0.250s`, default enums and bools vanish,
integer enums come back as names, private keys come back `[redacted]`); after this round trip a rendered resource
and the same resource read back from `/config_dump` are equal dicts.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib
import json
import pkgutil
import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from udpa.annotations import sensitive_pb2

from meshplan.envoy.types import PROTO_MODULES, type_url_of
from meshplan.errors import MeshplanError

# Every extension meshplan renders, or may find in a proxy it manages: the modules of the types envoy/types.py
# lists. `ParseDict` resolves a `typed_config` Any only when its message type has been imported; an Any of any other
# type falls back to importing every extension (see `_import_everything`), which costs ~0.4 s once.
EXTENSION_MODULES: tuple[str, ...] = tuple(dict.fromkeys(PROTO_MODULES.values()))

# What Envoy puts in place of a sensitive string (and, base64-encoded, of sensitive bytes).
REDACTED = "[redacted]"
_REDACTED_BYTES = base64.b64encode(REDACTED.encode()).decode()

_CACHE_SIZE = 4096


class CanonicalError(MeshplanError):
    """A resource or a config dump that the Envoy protos cannot read."""


for _module in EXTENSION_MODULES:
    importlib.import_module(_module)

_POOL = descriptor_pool.Default()
_imported_everything = False


def _import_everything() -> None:
    """Import every Envoy extension and config module, for a resource that uses one outside the list."""
    global _imported_everything
    if _imported_everything:
        return
    _imported_everything = True
    import envoy.config
    import envoy.extensions

    for package in (envoy.extensions, envoy.config):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if module.name.endswith("_pb2"):
                importlib.import_module(module.name)


def message_descriptor(type_url: str) -> Descriptor:
    """The Envoy proto message type a `@type` names; raises CanonicalError for an unknown one."""
    full_name = type_url.rpartition("/")[2]
    try:
        return _POOL.FindMessageTypeByName(full_name)
    except KeyError:
        _import_everything()
    try:
        return _POOL.FindMessageTypeByName(full_name)
    except KeyError:
        raise CanonicalError(f"unknown resource type {type_url!r}") from None


def canonical(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical form of one resource: a new dict, safe to change.

    Idempotent: the canonical form of a canonical form is itself. Results are cached by content, since a fleet
    repeats the same resources (every sidecar that calls `backend` has the same `backend` cluster).
    """
    result: dict[str, Any] = json.loads(canonical_json(resource))
    return result


def canonical_json(resource: Mapping[str, Any], *, expected: str | None = None) -> str:
    """The canonical form of one resource as compact JSON with sorted keys (what `fingerprint` hashes).

    `expected` is a canonical form the resource may well be already (for a live resource, its desired one): if it
    is, it is its own canonical form and is returned as it is, without the proto round trip.
    """
    try:
        key = json.dumps(resource, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise CanonicalError(f"resource is not JSON data: {exc}") from None
    if key == expected:
        return key
    return _canonical_text(key)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _canonical_text(resource_json: str) -> str:
    resource = json.loads(resource_json)
    if not isinstance(resource, dict):
        raise CanonicalError(f"a resource is a JSON object, not {type(resource).__name__}")
    type_url = resource.get("@type")
    if not isinstance(type_url, str):
        raise CanonicalError(f"resource {resource.get('name', '?')!r} has no @type")
    try:
        descriptor = message_descriptor(type_url)
    except CanonicalError as exc:
        raise CanonicalError(f"resource {resource.get('name', '?')!r}: {exc}") from None
    if "\\u0000" not in resource_json:  # a NUL anywhere could be mistaken for a slot
        strings: list[str] = []
        shape = _hollow(resource, descriptor, strings)
        if strings:
            try:
                text = _canonical_shape(json.dumps(shape, sort_keys=True, separators=(",", ":")))
            except CanonicalError:
                pass  # the round trip of the resource itself says what is wrong, naming it
            else:
                return _SLOT.sub(lambda m: json.dumps(strings[int(m.group(1))]), text)
    return _round_trip(resource, descriptor, type_url)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _canonical_shape(shape_json: str) -> str:
    shape = json.loads(shape_json)
    return _round_trip(shape, message_descriptor(shape["@type"]), shape["@type"])


def _round_trip(resource: dict[str, Any], descriptor: Descriptor, type_url: str) -> str:
    body = {k: v for k, v in resource.items() if k != "@type"}
    message = _parse(body, descriptor, type_url)
    result = json_format.MessageToDict(message, preserving_proto_field_name=True)
    _redact_fields(result, descriptor, sensitive=False)
    result["@type"] = type_url_of(descriptor.full_name)
    return json.dumps(result, sort_keys=True, separators=(",", ":"))


# --- shapes: the proto round trip once per shape rather than once per resource -----------------------------------
# A fleet's resources differ mostly in strings (names, addresses, SNIs, certificate paths), and the round trip
# passes a string field's value through untouched. So each non-empty ASCII value of a string field is swapped for a
# numbered slot ("\0" + n), the resulting shape goes through the round trip (cached: the 25,000 resources of the
# 2,000 proxies in benchmarks/plan_fleet.py have 37 shapes), and the slots left in its canonical text get their
# strings back. A slot in a sensitive field comes back "[redacted]", as the string would. Left in place: an empty
# string (the round trip drops it but would keep its slot), any non-ASCII string, and the whole resource if it
# holds a NUL (a slot's mark).

_SLOT = re.compile(r'"\\u0000(\d+)"')
_VALUE, _STRING, _STRINGS, _MESSAGE, _MESSAGES, _STRING_MAP, _MESSAGE_MAP = range(7)


@functools.cache
def _slot_fields(descriptor: Descriptor) -> dict[str, tuple[int, Descriptor | None]]:
    """How to hollow each field of a message, by every name `ParseDict` accepts for it (the JSON name first)."""
    fields: dict[str, tuple[int, Descriptor | None]] = {}
    for field in descriptor.fields:
        message = field.message_type
        kind = _VALUE
        if message is not None and message.GetOptions().map_entry:
            value = message.fields_by_name["value"]
            if value.type == FieldDescriptor.TYPE_STRING:
                kind = _STRING_MAP
            elif value.message_type is not None and not _is_well_known(value.message_type):
                kind, message = _MESSAGE_MAP, value.message_type
        elif message is not None and not _is_well_known(message):
            kind = _MESSAGES if field.is_repeated else _MESSAGE
        elif field.type == FieldDescriptor.TYPE_STRING:
            kind = _STRINGS if field.is_repeated else _STRING
        fields[field.name] = (kind, message)
    for field in descriptor.fields:
        fields[field.json_name] = fields[field.name]
    return fields


def _is_well_known(descriptor: Descriptor) -> bool:
    """A google.protobuf type other than Any: its JSON form is its own (a duration, a wrapper's bare value...)."""
    return descriptor.full_name.startswith("google.protobuf.") and descriptor.full_name != _ANY


def _hollow(node: Any, descriptor: Descriptor, strings: list[str]) -> Any:
    """A copy of the proto-JSON object `node` of type `descriptor` with its string values in slots, appended to
    `strings`. Anything the round trip would refuse is copied as it is, for the round trip to refuse."""
    if not isinstance(node, dict):
        return node
    if descriptor.full_name == _ANY:
        type_url = node.get("@type")
        if not isinstance(type_url, str):
            return node
        try:
            descriptor = message_descriptor(type_url)
        except Exception:  # whatever is wrong with the type, the round trip reports it in its own words
            return node
        if _is_well_known(descriptor):
            return node
    fields = _slot_fields(descriptor)
    out: dict[str, Any] = {}
    for key, value in node.items():
        kind, message = fields.get(key, (_VALUE, None))
        if kind == _STRING:
            value = _slot(value, strings)
        elif kind == _STRINGS and isinstance(value, list):
            value = [_slot(item, strings) for item in value]
        elif kind == _STRING_MAP and isinstance(value, dict):
            value = {k: _slot(v, strings) for k, v in value.items()}
        elif message is None:
            pass
        elif kind == _MESSAGE:
            value = _hollow(value, message, strings)
        elif kind == _MESSAGES and isinstance(value, list):
            value = [_hollow(item, message, strings) for item in value]
        elif kind == _MESSAGE_MAP and isinstance(value, dict):
            value = {k: _hollow(v, message, strings) for k, v in value.items()}
        out[key] = value
    return out


def _slot(value: Any, strings: list[str]) -> Any:
    if not isinstance(value, str) or not value or not value.isascii():
        return value
    strings.append(value)
    return f"\0{len(strings) - 1}"


def _parse(body: dict[str, Any], descriptor: Descriptor, type_url: str) -> Any:
    cls = message_factory.GetMessageClass(descriptor)
    name = body.get("name", "?")
    for attempt in range(2):
        try:
            return json_format.ParseDict(body, cls())
        except json_format.ParseError as exc:
            # An Any of a type outside EXTENSION_MODULES: import them all once, then try again.
            if attempt == 0 and "Can not find message descriptor" in str(exc) and not _imported_everything:
                _import_everything()
                continue
            raise CanonicalError(f"{type_url.rpartition('/')[2]} {name!r}: {exc}") from None
    raise AssertionError("unreachable")


def fingerprint(resources: Iterable[Mapping[str, Any]]) -> str:
    """sha256 (hex) of the resources' canonical JSON texts, sorted, joined as one JSON array: independent of the
    order the resources come in and of how each was spelled."""
    return fingerprint_canonical(canonical_json(r) for r in resources)


def fingerprint_canonical(texts: Iterable[str]) -> str:
    """`fingerprint` of resources whose canonical JSON texts are already known."""
    return hashlib.sha256(("[" + ",".join(sorted(texts)) + "]").encode()).hexdigest()


# --- Envoy's redaction -------------------------------------------------------------------------------------------
# Envoy's /config_dump replaces every field marked `(udpa.annotations.sensitive)` (a TLS private key, a password),
# and everything beneath it: strings and bytes become "[redacted]", other scalars are cleared. Applying the same
# rule to both sides keeps a rendered private key path from showing as a change forever. A consequence: a change
# confined to a sensitive field cannot be seen in a plan, because Envoy never shows it.

# Types whose proto-JSON form is not an object; beneath a sensitive field they turn into their redacted value.
_REDACTED_SPECIAL: dict[str, Any] = {
    "google.protobuf.StringValue": REDACTED,
    "google.protobuf.BytesValue": _REDACTED_BYTES,
    "google.protobuf.BoolValue": False,
    "google.protobuf.Int32Value": 0,
    "google.protobuf.UInt32Value": 0,
    "google.protobuf.FloatValue": 0,
    "google.protobuf.DoubleValue": 0,
    "google.protobuf.Int64Value": "0",
    "google.protobuf.UInt64Value": "0",
    "google.protobuf.Duration": "0s",
    "google.protobuf.Timestamp": "1970-01-01T00:00:00Z",
}
# Types with a non-object JSON form that Envoy's rule does not reach in a way worth copying (a Struct's map keys).
_OPAQUE = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue",
                     "google.protobuf.FieldMask", "google.protobuf.Empty"})
_ANY = "google.protobuf.Any"
# Well-known types whose proto-JSON form is a scalar, a list or free-form JSON rather than their fields.
WELL_KNOWN_LEAF_TYPES = frozenset(_REDACTED_SPECIAL) | _OPAQUE


def _is_sensitive(field: FieldDescriptor) -> bool:
    return bool(field.GetOptions().Extensions[sensitive_pb2.sensitive])


def _field_message(field: FieldDescriptor) -> Descriptor | None:
    """The message type a field holds (a map's value type for a map), or None for a scalar."""
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        message = message.fields_by_name["value"].message_type
    return message


@functools.cache
def _reaches_sensitive(full_name: str) -> bool:
    """Whether a value of this message type may hold a sensitive field (an Any may hold anything)."""
    seen: set[str] = set()
    stack = [full_name]
    while stack:
        name = stack.pop()
        if name == _ANY:
            return True
        if name in seen or name in _OPAQUE or name in _REDACTED_SPECIAL:
            continue
        seen.add(name)
        for field in _POOL.FindMessageTypeByName(name).fields:
            if _is_sensitive(field):
                return True
            message = _field_message(field)
            if message is not None:
                stack.append(message.full_name)
    return False


@functools.cache
def _redaction_fields(descriptor: Descriptor) -> tuple[tuple[FieldDescriptor, bool], ...]:
    """The fields worth visiting when redacting: the sensitive ones and those that may lead to one."""
    fields = []
    for field in descriptor.fields:
        message = _field_message(field)
        if _is_sensitive(field) or (message is not None and _reaches_sensitive(message.full_name)):
            fields.append((field, _is_sensitive(field)))
    return tuple(fields)


def _redact_fields(node: dict[str, Any], descriptor: Descriptor, *, sensitive: bool) -> None:
    """Redact, in place, the proto-JSON object `node` of message type `descriptor`."""
    if descriptor.full_name == _ANY:
        type_url = node.get("@type")
        if not isinstance(type_url, str):
            return
        inner = message_descriptor(type_url)
        if inner.full_name in _REDACTED_SPECIAL or inner.full_name in _OPAQUE:
            if sensitive and inner.full_name in _REDACTED_SPECIAL:
                node["value"] = _REDACTED_SPECIAL[inner.full_name]
            return
        descriptor = inner
    if sensitive:  # beneath a sensitive field, everything is
        fields: Iterable[tuple[FieldDescriptor, bool]] = ((f, True) for f in descriptor.fields)
    else:
        fields = _redaction_fields(descriptor)
    for field, field_sensitive in fields:
        key = field.name
        if key not in node:
            continue
        hidden = sensitive or field_sensitive
        value = node[key]
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                for map_key, map_value in value.items():
                    value[map_key] = _redact_value(map_value, value_field, hidden)
            elif field.is_repeated:
                node[key] = [_redact_message(v, field.message_type, hidden) for v in value]
            else:
                node[key] = _redact_message(value, field.message_type, hidden)
        elif hidden:
            if field.type == FieldDescriptor.TYPE_STRING:
                node[key] = [REDACTED] * len(value) if isinstance(value, list) else REDACTED
            elif field.type == FieldDescriptor.TYPE_BYTES:
                node[key] = [_REDACTED_BYTES] * len(value) if isinstance(value, list) else _REDACTED_BYTES
            else:
                del node[key]


def _redact_value(value: Any, field: FieldDescriptor, sensitive: bool) -> Any:
    if field.message_type is not None:
        return _redact_message(value, field.message_type, sensitive)
    if not sensitive:
        return value
    if field.type == FieldDescriptor.TYPE_STRING:
        return REDACTED
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _REDACTED_BYTES
    return value  # a cleared scalar map value is its default; Envoy prints it, so keep the entry


def _redact_message(value: Any, descriptor: Descriptor, sensitive: bool) -> Any:
    if descriptor.full_name in _REDACTED_SPECIAL:
        return _REDACTED_SPECIAL[descriptor.full_name] if sensitive else value
    if descriptor.full_name in _OPAQUE or not isinstance(value, dict):
        return value
    _redact_fields(value, descriptor, sensitive=sensitive)
    return value
