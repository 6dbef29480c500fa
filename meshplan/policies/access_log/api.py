"""MeshAccessLog (`to` and `from`): a record per request (HTTP) or connection (TCP), written by Envoy to a file or
exported by Envoy to an OpenTelemetry collector.

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

`openTelemetry` backends (Kuma's meaning: Envoy itself exports each record over OTLP/gRPC to the collector):

    openTelemetry.endpoint                access_log[i] {name: envoy.access_loggers.open_telemetry, typed_config:
                                            OpenTelemetryAccessLogConfig {log_name: MeshAccessLog, grpc_service
                                            {envoy_grpc {cluster_name: meshaccesslog:opentelemetry:<n>}}, ...}};
                                            the cluster: HTTP/2 (gRPC) to host:port (4317 when the port is left
                                            out), STRICT_DNS for a name or STATIC for an IP, connect timeout 5s;
                                            <n> numbers a proxy's distinct endpoints in the order it meets them
    openTelemetry.body                    body: an OTLP AnyValue of the kinds Envoy's logger takes (stringValue,
                                            arrayValue {values}, kvlistValue {values [{key, value}]}; a bool, int,
                                            double or bytes value Envoy refuses, so it is an error here); a string
                                            is a stringValue; without `body`, Kuma's default line
    openTelemetry.attributes [{key, value}]  attributes {values [{key, value {string_value}}]}; keys are static
                                            OpenTelemetry names (Kuma's grammar), values may hold placeholders
    (always)                              resource_attributes {kuma.mesh: <mesh>}, as Kuma writes them

Kuma's placeholders are filled in within the body's strings (and a kvlist's keys) and the attributes' values. A
`backendRef` (a MeshOpenTelemetryBackend) is refused: meshplan has no such resource, and Kuma sends its logs through
kuma-dp.

`type` on a backend (File | Tcp | OpenTelemetry) and on a format (Plain | Json) may be left out, as in Kuma before
2.3; when given it must match the block. `tcp` backends are not supported: Kuma implements them with kuma-dp (a log
forwarder on a unix socket), which plain Envoy has not.

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
class OtelBackend:
    host: str  # the collector: a name or an IP
    port: int
    body: Json | None  # an OTLP AnyValue in Envoy's JSON (placeholders as written); None: Kuma's default line
    attributes: tuple[tuple[str, str], ...]  # (key, value as written)


Backend = FileBackend | OtelBackend


@dataclass(frozen=True)
class Conf:
    # A list is one value of a merged conf (a later policy's replaces it): its origins are the list's. Empty: no log.
    backends: Setting[tuple[Backend, ...]]


def parse(conf: ConfReader) -> Conf | None:
    """A `default` (or what several merged to): None when it has no list of backends."""
    conf.unknown(("backends",))
    if not conf.required("backends"):
        return None
    backends: Setting[tuple[Backend, ...]] | None = conf.entries("backends", _parse_backend,
                            not_a_mapping="must be a mapping with one of `file`, `tcp` or `openTelemetry`")
    return None if backends is None else Conf(backends)


def _parse_backend(backend: ConfReader) -> Backend | None:
    block = backend.typed_block(BACKEND_TYPES, "backend", written_here=False)
    if block is None:
        return None
    if block == "tcp":
        backend.fail("`tcp` backends are not supported: Kuma implements them with kuma-dp (a log forwarder on a unix "
                     "socket), which plain Envoy has not; use a `file` or `openTelemetry` backend", block)
        return None
    if not backend.required(block):
        return None
    if block == "openTelemetry":
        return backend.section("openTelemetry", _parse_otel)
    return backend.section("file", _parse_file)


OTEL_DEFAULT_PORT = 4317  # Kuma's, for an endpoint written without a port
# Kuma's attribute key grammar (validators.ValidateOtelAttributeName): lowercase letters and digits, single `.` or
# `_` between them, starting with a letter; `otel.` is reserved; placeholders are for values only.
_OTEL_KEY = re.compile(r"^[a-z](?:[a-z0-9]|[._][a-z0-9])*$")
_ANY_VALUES = ("stringValue", "boolValue", "intValue", "doubleValue", "bytesValue", "arrayValue", "kvlistValue")
_MAX_BODY_DEPTH = 16  # a body nests at most this deep (bounded recursion)


def _parse_otel(otel: ConfReader) -> OtelBackend | None:
    otel.unknown(("endpoint", "backendRef", "body", "attributes"))
    endpoint = otel.text("endpoint")
    written = endpoint is not None and endpoint.value != ""
    if written and otel.has("backendRef"):
        otel.fail("must have only one type defined: endpoint, backendRef")
        return None
    if otel.has("backendRef"):
        otel.fail("a MeshOpenTelemetryBackend reference is not supported: meshplan has no such resource (Kuma sends "
                  "its logs through kuma-dp); write the collector's `endpoint` instead", "backendRef")
        return None
    if endpoint is None or not written:
        if not otel.has("endpoint") or endpoint is not None:  # a wrong type is reported by `text`
            otel.fail("must have exactly one defined: endpoint, backendRef")
        return None
    where = _endpoint(otel, endpoint.value)
    attributes = otel.entries("attributes", _parse_attribute, not_a_mapping="must be a mapping with `key` and `value`")
    body = _any_value(otel, otel.raw["body"], ("body",), 0) if otel.has("body") else None
    if where is None or (otel.has("body") and body is None):
        return None
    return OtelBackend(where[0], where[1], body, attributes.value if attributes is not None else ())


def _endpoint(otel: ConfReader, text: str) -> tuple[str, int] | None:
    if any(c in text for c in "/?#"):
        otel.fail(f"must be in host:port format, not a URL, got {text!r}", "endpoint")
        return None
    host, sep, port = text.rpartition(":")
    if not sep or (text.count(":") > 1 and not text.startswith("[")):
        host, port = text, ""  # no port, or a bare IPv6 address: Kuma's default port
    host = host.strip("[]")
    if not host or any(c.isspace() for c in host) or (port and not (port.isdigit() and 1 <= int(port) <= 65535)):
        otel.fail(f"must be host:port (the collector's OTLP gRPC address, port 1 to 65535), got {text!r}", "endpoint")
        return None
    return host, int(port) if port else OTEL_DEFAULT_PORT


def _parse_attribute(attribute: ConfReader) -> tuple[str, str] | None:
    attribute.unknown(("key", "value"))
    key = attribute.text("key", required=True)
    value = attribute.text("value", required=True)
    if key is not None:
        problem = ("must be defined" if not key.value else
                   "must be a static OpenTelemetry attribute name; placeholders are only supported in values"
                   if "%" in key.value else
                   "must not use the reserved OpenTelemetry prefix 'otel.'" if key.value.startswith("otel.") else
                   "must start with a lowercase letter, use only lowercase letters, digits, '.' or '_', avoid "
                   "consecutive delimiters, and end with a letter or digit" if not _OTEL_KEY.match(key.value) else
                   None)  # fmt: skip
        if problem is not None:
            attribute.fail(f"{problem}, got {key.value!r}", "key")
            key = None
    if value is not None:
        _placeholders(attribute, value.value, "value")
    return None if key is None or value is None else (key.value, value.value)


def _any_value(at: ConfReader, value: Any, path: tuple[str | int, ...], depth: int) -> Json | None:
    """An OTLP AnyValue as Kuma reads a body (its proto-JSON; a plain string is a stringValue), in Envoy's JSON."""

    def fail(message: str, *below: str | int) -> None:
        at.check.fail(at.path + path + below, message)

    if isinstance(value, str):
        _placeholders(at, value, path)
        return {"string_value": value}
    if isinstance(value, dict):
        at.check.unknown(value, at.path + path, _ANY_VALUES)
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in _ANY_VALUES:
        # Beside one value an unknown key is reported as such (above); otherwise it is not an AnyValue at all.
        if not isinstance(value, dict) or len([k for k in value if k in _ANY_VALUES]) != 1:
            fail("must be a string or an OTLP AnyValue: a mapping with exactly one of " + ", ".join(_ANY_VALUES))
        return None
    if depth >= _MAX_BODY_DEPTH:
        fail(f"nests deeper than {_MAX_BODY_DEPTH} levels")
        return None
    kind, inner = next(iter(value.items()))
    if kind == "stringValue":
        if not isinstance(inner, str):
            fail(f"must be a string, got {inner!r}", kind)
            return None
        _placeholders(at, inner, path + (kind,))
        return {"string_value": inner}
    if kind not in ("arrayValue", "kvlistValue"):
        # Envoy refuses the logger's config ("Only string values, nested key value lists and array values are
        # supported"): Kuma renders it, and the proxy rejects its listener.
        fail(f"`{kind}` is not supported in an access log body: Envoy's OpenTelemetry access logger takes only "
             "stringValue, arrayValue and kvlistValue (a number or a boolean can be written as a string, e.g. "
             "stringValue: \"%RESPONSE_CODE%\")", kind)  # fmt: skip
        return None
    if isinstance(inner, dict):
        at.check.unknown(inner, at.path + path + (kind,), ("values",))
    if not isinstance(inner, dict) or set(inner) - {"values"} or not isinstance(inner.get("values", []), list):
        if not isinstance(inner, dict) or not isinstance(inner.get("values", []), list):
            fail("must be a mapping with a list `values`", kind)
        return None
    values: list[Json] = []
    ok = True
    for i, element in enumerate(inner.get("values", [])):
        here = path + (kind, "values", i)
        if kind == "arrayValue":
            read = _any_value(at, element, here, depth + 1)
        else:
            read = _key_value(at, element, here, depth)
        ok = ok and read is not None
        if read is not None:
            values.append(read)
    return {_SNAKE[kind]: {"values": values}} if ok else None


def _key_value(at: ConfReader, element: Any, path: tuple[str | int, ...], depth: int) -> Json | None:
    if isinstance(element, dict):
        at.check.unknown(element, at.path + path, ("key", "value"))
    if not isinstance(element, dict) or not isinstance(element.get("key"), str) or element.get("value") is None:
        at.check.fail(at.path + path, "must be a mapping with a string `key` and a `value`")
        return None
    if set(element) - {"key", "value"}:
        return None
    _placeholders(at, element["key"], path + ("key",))
    value = _any_value(at, element["value"], path + ("value",), depth + 1)
    return None if value is None else {"key": element["key"], "value": value}


_SNAKE = {"arrayValue": "array_value", "kvlistValue": "kvlist_value"}


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


def _placeholders(at: ConfReader, text: str, key: str | tuple[str | int, ...]) -> None:
    for name in _KUMA_PLACEHOLDER.findall(text):
        if name not in KUMA_PLACEHOLDERS:
            at.check.fail(at.path + ((key,) if isinstance(key, str) else key), f"unknown placeholder %{name}% (Kuma's "
                          f"are: {', '.join('%' + p + '%' for p in sorted(KUMA_PLACEHOLDERS))})")  # fmt: skip


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
