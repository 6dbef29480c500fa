"""MeshAccessLog (`to` and `from`): a line per request (HTTP) or connection (TCP), written by Envoy to a file.

Where (the seed's placement table: "Sidecar (to), Egress (to + proxyType: ["egress"])"):
- `to`: a sidecar's outbound listener for the destination; on the egress (proxyType Egress), the filter chain of
  each external service a `to` item names.
- `from`: a sidecar's inbound listeners. As in Kuma, a `from` item selects `kind: Mesh` (every client): the log is
  one per listener, not per client. `from` on the egress is not in the table and is refused.

Envoy fields: `access_log[]` of the chain's HTTP connection manager, or of its tcp_proxy for a TCP destination or
inbound, one entry per backend:

    backends[].file.path                  access_log[i] {name: envoy.access_loggers.file,
                                            typed_config: FileAccessLog {path, log_format}}
    file.format.plain                     log_format.text_format_source.inline_string (a newline appended, as Kuma)
    file.format.json [{key, value}]       log_format.json_format {key: value, ...}; as Kuma, `{"key": "value"}`
                                          written as it stands must be a valid JSON object
    file.format.omitEmptyValues           log_format.omit_empty_values

Defaults: without `format`, Kuma's default line for the protocol (HTTP_FORMAT or TCP_FORMAT below). Kuma's own
placeholders are filled in at render time, as Kuma does, because Envoy does not know them: %KUMA_MESH%,
%KUMA_SOURCE_SERVICE% (the sidecar's first service on an outbound, `unknown` on an inbound or the egress),
%KUMA_DESTINATION_SERVICE% (the service or external service, the inbound's service on an inbound),
%KUMA_SOURCE_ADDRESS% (`<proxy address>:0`), %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%, %KUMA_TRAFFIC_DIRECTION%
(INBOUND | OUTBOUND) and %KUMA_ZONE% / %KUMA_WORKLOAD% (empty: meshplan has no zones or workloads). Any other %...%
operator is Envoy's own (its validation catches a misspelt one).

Envoy opens each file when it loads the listener: a path whose directory does not exist where the proxy runs makes
Envoy reject the listener (and `envoy --mode validate` fail), so meshplan only checks that the path is absolute.

`type` on a backend (File | Tcp | OpenTelemetry) and on a format (Plain | Json) may be left out, as in Kuma before
2.3; when given it must match the block. `tcp` and `openTelemetry` backends are not supported: Kuma implements `tcp`
with kuma-dp (a log forwarder on a unix socket), which plain Envoy has not; `openTelemetry` Kuma renders as Envoy's
OpenTelemetry access logger with a cluster to the collector (or through kuma-dp for a `backendRef`), which meshplan
does not render yet.

The conf (policies/conf.py): `parse` is the one reader of a `default`, for validation (every violation at its path;
the `from` targetRef rule is checked by `validate`, after the default's own fields) and for render, which reads what
the items merged to as a `Conf`: the backends, each a file path and its format, as one Setting whose origins are the
list's (a list is set whole by one policy). Placeholders are kept as written and filled in per chain.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from meshplan.load.resources import PathKey
from meshplan.policies import BOTH_TO, FROM, TO, placement_row
from meshplan.policies.base import Json
from meshplan.policies.conf import ConfReader, Setting
from meshplan.validate.check import FieldCheck

KIND = "MeshAccessLog"
PLACEMENT = placement_row(KIND, {TO, FROM}, {"sidecar", "egress"}, False, BOTH_TO)  # the seed's placement table, for external services

# Kuma's default formats (pkg/plugins/policies/meshaccesslog/plugin/xds/configurer.go).
HTTP_FORMAT = (
    '[%START_TIME%] %KUMA_MESH% "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%KUMA_SOURCE_SERVICE%" "%KUMA_DESTINATION_SERVICE%" "%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%" '
    '"%UPSTREAM_HOST%"'
)
TCP_FORMAT = (
    "[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)->"
    "%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, sent %BYTES_SENT% bytes, "
    "received: %BYTES_RECEIVED% bytes"
)
HTTP_PROTOCOLS = ("http", "http2", "grpc")
UNKNOWN = "unknown"  # Kuma's name for a service it cannot tell

KUMA_PLACEHOLDERS = (
    "KUMA_SOURCE_ADDRESS_WITHOUT_PORT", "KUMA_SOURCE_ADDRESS", "KUMA_SOURCE_SERVICE", "KUMA_DESTINATION_SERVICE",
    "KUMA_MESH", "KUMA_TRAFFIC_DIRECTION", "KUMA_ZONE", "KUMA_WORKLOAD",
)  # fmt: skip
_KUMA_PLACEHOLDER = re.compile(r"%(KUMA_[A-Z_]*)%")
BACKEND_TYPES = {"File": "file", "Tcp": "tcp", "OpenTelemetry": "openTelemetry"}
FORMAT_TYPES = {"Plain": "plain", "Json": "json"}


# --- the conf ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonField:
    key: str
    value: str  # as written: Kuma's placeholders are filled in at render time, per chain


@dataclass(frozen=True)
class Format:
    plain: str | None  # a `plain` format's line (without the newline Envoy needs), or None for a `json` one
    json: tuple[JsonField, ...] | None
    omit_empty_values: bool


@dataclass(frozen=True)
class FileBackend:
    path: str
    format: Format | None  # None: Kuma's default line for the protocol


@dataclass(frozen=True)
class Conf:
    # A list is one value of a merged conf (a later policy's replaces it): its origins are the list's. Empty: no log.
    backends: Setting[tuple[FileBackend, ...]]


def parse(conf: ConfReader) -> Conf | None:
    """A `default` (or what several merged to): None when it has no list of backends."""
    conf.unknown(("backends",))
    if not conf.required("backends"):
        return None
    backends = conf.entries("backends", _parse_backend,
                            not_a_mapping="must be a mapping with one of `file`, `tcp` or `openTelemetry`")
    return None if backends is None else Conf(backends)


def _parse_backend(backend: ConfReader) -> FileBackend | None:
    block = backend.typed_block(BACKEND_TYPES, "backend", written_here=False)
    if block is None:
        return None
    if block != "file":
        why = ("Kuma implements them with kuma-dp (a log forwarder on a unix socket), which plain Envoy has not"
               if block == "tcp" else
               "meshplan does not render Envoy's OpenTelemetry access logger (Kuma v2.14.3 sends an `endpoint`'s logs "
               "from Envoy over a cluster it adds, and a `backendRef`'s through kuma-dp)")
        backend.fail(f"`{block}` backends are not supported: {why}; use a `file` backend", block)
        return None
    if not backend.required("file"):
        return None
    return backend.section("file", _parse_file)


def _parse_file(file: ConfReader) -> FileBackend | None:
    file.unknown(("path", "format"))
    path = file.text("path", required=True)
    if path is not None and (not path.value.startswith("/") or "\x00" in path.value or "\n" in path.value):
        file.fail(f"must be an absolute file path, got {path.value!r}", "path")
        path = None
    fmt = file.section("format", _parse_format)
    return None if path is None else FileBackend(path.value, fmt)


def _parse_format(fmt: ConfReader) -> Format | None:
    omit = fmt.boolean("omitEmptyValues")
    omit_empty_values = omit is not None and omit.value
    block = fmt.typed_block(FORMAT_TYPES, "format", also=("omitEmptyValues",), written_here=False)
    if block is None:
        return None
    if block == "plain":
        plain = fmt.text("plain", required=True)
        if plain is None:
            return None
        if not plain.value.strip():
            fmt.fail("must not be empty", "plain")
        _placeholders(fmt, plain.value, "plain")
        return Format(plain.value, None, omit_empty_values)
    if not fmt.required("json"):
        return None
    if fmt.raw["json"] == []:
        fmt.fail("must not be empty", "json")
    seen: set[str] = set()

    def json_field(field: ConfReader) -> JsonField | None:
        field.unknown(("key", "value"))
        key = field.text("key", required=True)
        value = field.text("value", required=True)
        if key is not None:
            if not key.value:
                field.fail("must not be empty", "key")
            elif key.value in seen:
                field.fail(f"key {key.value!r} is listed twice", "key")
            seen.add(key.value)
        if value is not None:
            if not value.value:
                field.fail("must not be empty", "value")
            _placeholders(field, value.value, "value")
        if key is not None and value is not None and not _json_object(key.value, value.value):
            # Kuma's rule: the pair, written into a JSON object as it stands (no escaping), must be valid JSON.
            field.fail(f"is not a valid JSON object: {{\"{key.value}\": \"{value.value}\"}}")
        return None if key is None or value is None else JsonField(key.value, value.value)

    fields = fmt.entries("json", json_field, not_a_mapping="must be a mapping with `key` and `value`")
    return None if fields is None else Format(None, fields.value, omit_empty_values)


def _json_object(key: str, value: str) -> bool:
    try:
        json.loads(f'{{"{key}": "{value}"}}')
    except ValueError:
        return False
    return True


def _placeholders(at: ConfReader, text: str, key: str) -> None:
    for name in _KUMA_PLACEHOLDER.findall(text):
        if name not in KUMA_PLACEHOLDERS:
            at.fail(f"unknown placeholder %{name}% (Kuma's are: "
                    f"{', '.join('%' + p + '%' for p in sorted(KUMA_PLACEHOLDERS))})", key)  # fmt: skip


# --- validation -------------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    parse(_FromItem(default, path, check) if section == FROM else ConfReader(default, path, check))


class _FromItem(ConfReader):
    """A `from` item's `default`: Kuma's rule for its targetRef is checked right after the default's own fields are
    (before its backends), where its violation has always come."""

    def unknown(self, known: tuple[str, ...]) -> None:
        super().unknown(known)
        _validate_from_item(self.check, self.path)


def _validate_from_item(check: FieldCheck, path: PathKey) -> None:
    """Kuma's rule for `from`: clients are all of the mesh. (No `from` on the egress is a rule of policy_rules.py.)

    A module sees only the item's `default`; the item's targetRef is read from the resource."""
    item = _at(check.res.body, path[:-1])
    ref = item.get("targetRef") if isinstance(item, dict) else None
    if isinstance(ref, dict) and isinstance(ref.get("kind"), str) and ref["kind"] != "Mesh":
        check.fail(path[:-1] + ("targetRef", "kind"),
                   f"MeshAccessLog `from` items select every client (kind Mesh), got {ref['kind']!r}: the access log "
                   "belongs to the inbound listener, not to one client")  # fmt: skip


def _at(node: Any, path: PathKey) -> Any:
    for key in path:
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            node = node[key]
        elif isinstance(key, str) and isinstance(node, dict):
            node = node.get(key)
        else:
            return None
    return node
