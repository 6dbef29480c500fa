"""Proto-JSON to serialized protobuf, a field at a time, each distinct sub-message encoded once.

`json_format.ParseDict` is pure Python and costs about half a millisecond for a listener; a fleet's listeners all
differ, but only in a few strings: most of what is inside them (filters, TLS contexts, retry policies, routes)
repeats from proxy to proxy. A message's serialization is its fields' encodings one after the other, so each field
is encoded apart, in field-number order as deterministic serialization puts them, and the bytes of every
sub-message (an `Any`'s included) are kept by its JSON text. Scalars, maps, enums and the well-known types go
through `ParseDict` one field at a time, kept the same way. The bytes are those of `ParseDict` followed by
`SerializeToString(deterministic=True)`; tests/test_snapshot.py checks that on every rendered resource it has.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from meshplan.compare.canonical import WELL_KNOWN_LEAF_TYPES, message_descriptor
from meshplan.envoy.types import type_url_of

_ANY = "google.protobuf.Any"
_CACHE_ENTRIES = 200_000  # sub-messages kept (a few hundred bytes each); past it the cache starts over


class EncodeError(ValueError):
    pass


def encode(type_url: str, resource: dict[str, Any]) -> bytes:
    """The serialized message `type_url` names, from its proto-JSON form (without `@type`)."""
    return _message(message_descriptor(type_url), resource)


@functools.cache
def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    fields = {f.name: f for f in descriptor.fields}
    fields.update({f.json_name: f for f in descriptor.fields})
    return fields


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@functools.cache
def _tag(number: int) -> bytes:
    return _varint(number << 3 | 2)  # wire type 2: length-delimited


def _delimited(number: int, body: bytes) -> bytes:
    return _tag(number) + _varint(len(body)) + body


def _is_submessage(field: FieldDescriptor) -> bool:
    message = field.message_type
    return (message is not None and not message.GetOptions().map_entry
            and (message.full_name == _ANY or message.full_name not in WELL_KNOWN_LEAF_TYPES))


def _message(descriptor: Descriptor, value: Any) -> bytes:
    if not isinstance(value, dict):
        raise EncodeError(f"{descriptor.full_name}: expected an object, got {type(value).__name__}")
    fields = _fields(descriptor)
    parts: list[tuple[int, bytes]] = []
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            raise EncodeError(f'Message type "{descriptor.full_name}" has no field named "{key}"')
        sub = field.message_type
        if item is not None and sub is not None and _is_submessage(field):
            items = item if field.is_repeated else [item]
            if not isinstance(items, list):
                raise EncodeError(f"{descriptor.full_name}.{key}: expected a list")
            # Kept: Anys and the elements of lists (filters, routes, chains), where whole repeated things are;
            # a singular sub-message is encoded in place, its own repeated parts kept below it.
            encoded = ((_submessage(sub, i) if field.is_repeated or sub.full_name == _ANY else _message(sub, i))
                       for i in items)
            parts.append((field.number, b"".join(_delimited(field.number, e) for e in encoded)))
        else:
            direct = _direct(field, item)
            parts.append((field.number, direct if direct is not None
                          else _scalar(descriptor.full_name, key, json.dumps(item))))
    parts.sort(key=lambda part: part[0])
    return b"".join(body for _, body in parts)


_VARINT_TYPES = frozenset({FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
                           FieldDescriptor.TYPE_UINT64})


def _direct(field: FieldDescriptor, value: Any) -> bytes | None:
    """The encoding of the commonest scalars (strings, booleans, non-negative integers, enums by name), when their
    value is not the default (a default's presence rules are ParseDict's to apply); None for everything else."""
    if field.message_type is not None:
        return None
    if field.is_repeated:
        if field.type != FieldDescriptor.TYPE_STRING or not isinstance(value, list) or not value:
            return None
        if not all(isinstance(v, str) for v in value):
            return None
        return b"".join(_delimited(field.number, v.encode()) for v in value)
    if field.type == FieldDescriptor.TYPE_STRING and isinstance(value, str) and value:
        return _delimited(field.number, value.encode())
    if field.type == FieldDescriptor.TYPE_BOOL and value is True:
        return _varint(field.number << 3) + b"\x01"
    if field.type in _VARINT_TYPES and type(value) is int and 0 < value < 1 << 31:
        return _varint(field.number << 3) + _varint(value)
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        number = field.enum_type.values_by_name.get(value) if field.enum_type is not None else None
        if number is not None and number.number > 0:
            return _varint(field.number << 3) + _varint(number.number)
    return None


_kept: dict[tuple[str, str], bytes] = {}


def _submessage(descriptor: Descriptor, value: Any) -> bytes:
    key = (descriptor.full_name, json.dumps(value))
    found = _kept.get(key)
    if found is None:
        if len(_kept) >= _CACHE_ENTRIES:
            _kept.clear()
        found = _kept[key] = _any(value) if descriptor.full_name == _ANY else _message(descriptor, value)
    return found


def _any(value: Any) -> bytes:
    type_url = value.get("@type") if isinstance(value, dict) else None
    if not isinstance(type_url, str):
        raise EncodeError("an Any without its @type")
    try:
        inner = message_descriptor(type_url)
    except Exception as e:  # an unknown type: ParseDict's words for it
        raise EncodeError(str(e)) from None
    if inner.full_name in WELL_KNOWN_LEAF_TYPES:  # {"@type": ..., "value": ...}: ParseDict knows the forms
        return _scalar(_ANY, "", json.dumps(value))
    body = _message(inner, {k: v for k, v in value.items() if k != "@type"})
    encoded = _delimited(1, type_url.encode())
    return encoded + _delimited(2, body) if body else encoded


@functools.lru_cache(maxsize=65536)
def _scalar(message: str, key: str, value_json: str) -> bytes:
    """One field of a message (the whole message for key ""), through ParseDict: the bytes it serializes to."""
    instance = message_factory.GetMessageClass(message_descriptor(type_url_of(message)))()
    value = json.loads(value_json)
    try:
        json_format.ParseDict(value if key == "" else {key: value}, instance)
    except json_format.ParseError as e:
        raise EncodeError(str(e)) from None
    encoded: bytes = instance.SerializeToString(deterministic=True)
    return encoded
