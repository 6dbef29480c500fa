"""Desired against live: per resource (create, update, delete), then per field (path, before, after).

Both sides go through `canonical` first, so only real differences remain. `before` is the live value and `after`
the desired one: a plan says what applying it would change. A value of None means the field is not set.

Field paths use proto field names, dots between fields and brackets for elements:

    circuit_breakers.thresholds[0].max_connections
    filter_chains["inbound:10.0.0.1:8080"].filters["envoy.filters.network.http_connection_manager"]
        .typed_config.route_config.virtual_hosts["backend"].routes[0].route.timeout
    typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]

`["..."]` is a map key, or the `name` of an element of a list whose elements all have distinct names (filter
chains, filters, HTTP filters, virtual hosts, access logs...): adding or removing one HTTP filter shows as that
filter added or removed, not as every later filter changed, and a changed filter keeps its name in the path
whatever else moved. Order matters in those lists (HTTP filters run in order), so when the elements both sides
share are in a different order, the list is compared by position instead.

`[0]` is a position: in the desired list, or in the live one for an element only live has. Elements are lined up
by equal runs first (like a text diff), so an endpoint inserted in the middle of `lb_endpoints` is one added
element; between equal runs, elements pair by position and are compared field by field.

A scalar field that proto3 drops at its default (an enum's first value, false, 0, "") shows its default rather
than None when the other side sets it: `lb_policy: "ROUND_ROBIN" -> "LEAST_REQUEST"`. A message field (including
wrappers such as `max_connections`) has presence, so None there means "not set, Envoy's default applies".
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from deepdiff import DeepDiff
from deepdiff.helper import NotPresent
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from meshplan.compare.canonical import (
    WELL_KNOWN_LEAF_TYPES,
    CanonicalError,
    canonical_json,
    message_descriptor,
)

Kind = Literal["cluster", "listener"]

_ANY = "google.protobuf.Any"
_LEAF_MESSAGES = WELL_KNOWN_LEAF_TYPES  # the walk stops at them
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


class Action(str, Enum):
    CREATE = "+"
    UPDATE = "~"
    DELETE = "-"


@dataclass(frozen=True)
class FieldChange:
    path: str
    before: Any  # the live value; None when not set
    after: Any  # the desired value; None when not set


@dataclass(frozen=True)
class ResourceChange:
    kind: Kind
    name: str
    action: Action
    before: dict[str, Any] | None  # canonical live resource (None for a create)
    after: dict[str, Any] | None  # canonical desired resource (None for a delete)
    fields: tuple[FieldChange, ...] = field(default=())  # for an update


def diff_resources(
    desired: Iterable[Mapping[str, Any]], live: Iterable[Mapping[str, Any]], kind: Kind
) -> list[ResourceChange]:
    """Every resource that differs, by name, in name order; resources that are the same are left out."""
    wanted = canonical_by_name(desired, "desired")
    return diff_canonical(wanted, canonical_by_name(live, "live", expected=wanted), kind)


def diff_canonical(wanted: Mapping[str, str], running: Mapping[str, str], kind: Kind) -> list[ResourceChange]:
    """`diff_resources` of resources already in canonical form: their canonical JSON texts by name."""
    changes = []
    for name in sorted(wanted.keys() | running.keys()):
        after_text, before_text = wanted.get(name), running.get(name)
        if after_text == before_text:  # canonical JSON texts: equal text, equal resource
            continue
        after = json.loads(after_text) if after_text is not None else None
        before = json.loads(before_text) if before_text is not None else None
        if before is None:
            changes.append(ResourceChange(kind, name, Action.CREATE, None, after))
        elif after is None:
            changes.append(ResourceChange(kind, name, Action.DELETE, before, None))
        else:
            changes.append(ResourceChange(kind, name, Action.UPDATE, before, after, tuple(diff_fields(before, after))))
    return changes


def diff_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[FieldChange]:
    """The changed fields between two canonical forms of one resource, in path order."""
    type_url = after.get("@type") or before.get("@type")
    if not isinstance(type_url, str):
        raise ValueError("a canonical resource has an @type")
    descriptor = message_descriptor(type_url)
    old, new = _align_messages(before, after, descriptor)
    # threshold_to_diff_deeper=0: always report the changed leaves, never a whole object because few keys match
    report = DeepDiff(old, new, view="tree", verbose_level=2, threshold_to_diff_deeper=0)
    changes: list[tuple[tuple[Any, ...], FieldChange]] = []
    for items in report.values():
        for item in items:
            steps = item.path(output_format="list")
            change = FieldChange(_format_path(steps), _plain(item.t1), _plain(item.t2))
            changes.append((_sort_key(steps), change))
    # deepdiff reports in an order that follows set iteration (the hash seed): two changes at one place (an element
    # removed and another added at one list index) must sort the same in every run, so the path and the side break ties
    changes.sort(key=lambda pair: (pair[0], pair[1].path, pair[1].after is not None))
    return [change for _, change in changes]


class DuplicateName(CanonicalError, ValueError):
    """Two resources of one kind with one name (a ValueError too, as it always was)."""


def canonical_by_name(
    resources: Iterable[Mapping[str, Any]], side: str, *, expected: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Canonical JSON text by resource name (a name is a plain string field: canonicalising keeps it). A live
    resource that is already its desired canonical form (`expected`, by name), as Envoy prints most, needs no
    proto round trip: a canonical form is its own."""
    by_name: dict[str, str] = {}
    for resource in resources:
        name = str(resource.get("name", "")) if isinstance(resource, Mapping) else ""
        text = canonical_json(resource, expected=expected.get(name) if expected is not None else None)
        if name in by_name:
            raise DuplicateName(f"two {side} resources are named {name!r}")
        by_name[name] = text
    return by_name


# --- alignment: turn name-keyed lists and map keys into dict keys deepdiff can follow ---------------------------


@dataclass(frozen=True)
class _Named:
    """The key of a list element addressed by its name."""

    name: str
    position: int = field(default=0, compare=False)  # only for ordering the changes


@dataclass(frozen=True)
class _Position:
    """The key of a list element addressed by position; the two sides' elements with one pair_id are compared."""

    pair_id: int
    index: int = field(compare=False)  # shown in the path


@dataclass(frozen=True)
class _MapKey:
    """The key of a proto map entry."""

    key: str


_MISSING: Any = object()


def _align_messages(a: Any, b: Any, descriptor: Descriptor) -> tuple[Any, Any]:
    """Both sides of one message field, rewritten for deepdiff; either may be _MISSING."""
    if descriptor.full_name in _LEAF_MESSAGES:
        return a, b
    if descriptor.full_name == _ANY:
        type_a = a.get("@type") if isinstance(a, dict) else None
        type_b = b.get("@type") if isinstance(b, dict) else None
        if type_a != type_b:  # different types: nothing in common to align
            return _align_one(a, type_a), _align_one(b, type_b)
        if not isinstance(type_a, str):
            return a, b
        descriptor = message_descriptor(type_a)
        if descriptor.full_name in _LEAF_MESSAGES:
            return a, b
    if not isinstance(a, dict) and not isinstance(b, dict):
        return a, b
    a_dict = a if isinstance(a, dict) else {}
    b_dict = b if isinstance(b, dict) else {}
    out_a: dict[Any, Any] = {}
    out_b: dict[Any, Any] = {}
    for key in sorted(a_dict.keys() | b_dict.keys()):
        value_a, value_b = a_dict.get(key, _MISSING), b_dict.get(key, _MISSING)
        field_descriptor = descriptor.fields_by_name.get(key)
        if field_descriptor is None:  # "@type"
            new_a, new_b = value_a, value_b
        else:
            new_a, new_b = _align_field(value_a, value_b, field_descriptor, both=a is not _MISSING and b is not _MISSING)
        if new_a is not _MISSING:
            out_a[key] = new_a
        if new_b is not _MISSING:
            out_b[key] = new_b
    return (out_a if a is not _MISSING else _MISSING), (out_b if b is not _MISSING else _MISSING)


def _align_one(value: Any, type_url: str | None) -> Any:
    if not isinstance(value, dict) or not isinstance(type_url, str):
        return value
    return _align_messages(value, _MISSING, message_descriptor(type_url))[0]


def _align_field(a: Any, b: Any, field_descriptor: FieldDescriptor, *, both: bool) -> tuple[Any, Any]:
    message = field_descriptor.message_type
    if message is not None and message.GetOptions().map_entry:
        return _align_map(a, b, message.fields_by_name["value"])
    if field_descriptor.is_repeated:
        if message is None:
            return a, b
        return _align_list(a, b, message)
    if message is not None:
        return _align_messages(a, b, message)
    if both and not field_descriptor.has_presence:
        # proto3 drops a scalar at its default: show the default rather than "not set"
        if a is _MISSING and b is not _MISSING:
            a = _default(field_descriptor)
        elif b is _MISSING and a is not _MISSING:
            b = _default(field_descriptor)
    return a, b


def _align_map(a: Any, b: Any, value_field: FieldDescriptor) -> tuple[Any, Any]:
    a_map = a if isinstance(a, dict) else {}
    b_map = b if isinstance(b, dict) else {}
    out_a: dict[Any, Any] = {}
    out_b: dict[Any, Any] = {}
    for key in sorted(a_map.keys() | b_map.keys()):
        value_a, value_b = a_map.get(key, _MISSING), b_map.get(key, _MISSING)
        if value_field.message_type is not None:
            value_a, value_b = _align_messages(value_a, value_b, value_field.message_type)
        if value_a is not _MISSING:
            out_a[_MapKey(key)] = value_a
        if value_b is not _MISSING:
            out_b[_MapKey(key)] = value_b
    return (out_a if a is not _MISSING else _MISSING), (out_b if b is not _MISSING else _MISSING)


def _align_list(a: Any, b: Any, message: Descriptor) -> tuple[Any, Any]:
    a_list = a if isinstance(a, list) else []
    b_list = b if isinstance(b, list) else []
    if "name" in message.fields_by_name and _keyable(a_list, b_list):
        a_items = {item["name"]: item for item in a_list}
        b_items = {item["name"]: item for item in b_list}
        # where each element sorts among the changes: its place in the desired list, else in the live one
        order = {name: i for i, name in enumerate(a_items)} | {name: i for i, name in enumerate(b_items)}
        aligned = {
            name: _align_messages(a_items.get(name, _MISSING), b_items.get(name, _MISSING), message)
            for name in order
        }
        named_a = {_Named(name, order[name]): aligned[name][0] for name in a_items}
        named_b = {_Named(name, order[name]): aligned[name][1] for name in b_items}
        return (named_a if a is not _MISSING else _MISSING), (named_b if b is not _MISSING else _MISSING)
    # Elsewhere, pair elements by position after lining up the equal ones, so that inserting one element shows
    # as one added element rather than every later element changed.
    out_a: dict[_Position, tuple[int, Any]] = {}
    out_b: dict[_Position, tuple[int, Any]] = {}
    for pair_id, (i, j) in enumerate(_pair_elements(a_list, b_list)):
        shown = j if j is not None else i  # its place in the desired list, else in the live one
        assert shown is not None
        key = _Position(pair_id, shown)
        value_a, value_b = _align_messages(
            a_list[i] if i is not None else _MISSING, b_list[j] if j is not None else _MISSING, message
        )
        if i is not None:
            out_a[key] = (i, value_a)
        if j is not None:
            out_b[key] = (j, value_b)
    # each side keeps its own order
    ordered_a = {k: v for k, (_, v) in sorted(out_a.items(), key=lambda kv: kv[1][0])}
    ordered_b = {k: v for k, (_, v) in sorted(out_b.items(), key=lambda kv: kv[1][0])}
    return (ordered_a if a is not _MISSING else _MISSING), (ordered_b if b is not _MISSING else _MISSING)


def _pair_elements(a: list[Any], b: list[Any]) -> list[tuple[int | None, int | None]]:
    """Which element of `a` is compared with which of `b`: equal runs line up; in between, elements pair by
    position and the surplus is added or removed."""
    if not a or not b:
        return [(i, None) for i in range(len(a))] + [(None, j) for j in range(len(b))]
    a_keys = [json.dumps(x, sort_keys=True) for x in a]
    b_keys = [json.dumps(x, sort_keys=True) for x in b]
    pairs: list[tuple[int | None, int | None]] = []
    for _, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a_keys, b_keys, autojunk=False).get_opcodes():
        common = min(i2 - i1, j2 - j1)
        pairs += [(i1 + k, j1 + k) for k in range(common)]
        pairs += [(i, None) for i in range(i1 + common, i2)]
        pairs += [(None, j) for j in range(j1 + common, j2)]
    return pairs


def _keyable(a: list[Any], b: list[Any]) -> bool:
    """Whether two lists can be compared by element name: all named, names distinct, shared ones in one order."""
    names = []
    for items in (a, b):
        item_names = [item.get("name") if isinstance(item, dict) else None for item in items]
        if not all(isinstance(n, str) and n for n in item_names) or len(set(item_names)) != len(item_names):
            return False
        names.append(item_names)
    shared = set(names[0]) & set(names[1])
    return [n for n in names[0] if n in shared] == [n for n in names[1] if n in shared]


def _default(field_descriptor: FieldDescriptor) -> Any:
    if field_descriptor.enum_type is not None:
        return field_descriptor.enum_type.values_by_number[0].name
    if field_descriptor.type == FieldDescriptor.TYPE_BOOL:
        return False
    if field_descriptor.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return ""
    if field_descriptor.type in _INT64_TYPES:
        return "0"  # proto-JSON writes 64-bit integers as strings
    return 0


# --- from deepdiff's report back to plain data ------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A value from the aligned form, back in proto-JSON form (None for deepdiff's "not present")."""
    if isinstance(value, NotPresent):
        return None
    if isinstance(value, dict):
        if value and all(isinstance(k, (_Named, _Position)) for k in value):
            return [_plain(v) for v in value.values()]
        return {(k.key if isinstance(k, _MapKey) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _format_path(steps: list[Any]) -> str:
    text = ""
    for step in steps:
        if isinstance(step, _Named):
            text += f"[{json.dumps(step.name)}]"
        elif isinstance(step, _MapKey):
            text += f"[{json.dumps(step.key)}]"
        elif isinstance(step, _Position):
            text += f"[{step.index}]"
        elif isinstance(step, int):
            text += f"[{step}]"
        else:
            text += f".{step}" if text else str(step)
    return text


def _sort_key(steps: list[Any]) -> tuple[Any, ...]:
    key: list[tuple[int, Any]] = []
    for step in steps:
        if isinstance(step, int):
            key.append((0, step))
        elif isinstance(step, _Position):
            key.append((0, step.index))
        elif isinstance(step, _Named):
            key.append((0, step.position))
        elif isinstance(step, _MapKey):
            key.append((1, step.key))
        else:
            key.append((1, str(step)))
    return tuple(key)
