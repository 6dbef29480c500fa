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
    file.format.json [{key, value}]       log_format.json_format {key: value, ...}
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
2.3; when given it must match the block. `tcp` and `openTelemetry` backends are not supported: Kuma implements them
with kuma-dp (a log forwarder on a unix socket, an OTel collector pipe), which plain Envoy does not have.
"""

from __future__ import annotations

import re
from typing import Any

from meshplan.envoy.types import FILE_ACCESS_LOG as FILE_LOGGER_TYPE
from meshplan.envoy.types import FILE_ACCESS_LOG_NAME as FILE_LOGGER
from meshplan.load.resources import PathKey
from meshplan.match.matcher import FromRule, Merged, rule_for
from meshplan.model import SIDECAR, Dataplane, Inbound
from meshplan.policies import FROM
from meshplan.policies.base import Json, ProxyBuild, hcm, origins_of, tcp_proxy
from meshplan.validate.check import FieldCheck

KIND = "MeshAccessLog"
ORDER = 60  # run order on a proxy (registry.py): after the inbound filters; it adds loggers, which no other kind reads

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


# --- validation -------------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    check.unknown(default, path, ("backends",))
    if section == FROM:
        _validate_from_item(check, path)
    backends = check.field(default, path, "backends", list, required=True)
    for i, backend in enumerate(backends or []):
        bp = path + ("backends", i)
        if not isinstance(backend, dict):
            check.fail(bp, "must be a mapping with one of `file`, `tcp` or `openTelemetry`")
            continue
        _validate_backend(check, backend, bp)


def _validate_from_item(check: FieldCheck, path: PathKey) -> None:
    """Kuma's rule for `from`: clients are all of the mesh. (No `from` on the egress is a rule of policy_rules.py.)

    A module sees only the item's `default`; the item's targetRef is read from the resource."""
    item = _at(check.res.body, path[:-1])
    ref = item.get("targetRef") if isinstance(item, dict) else None
    if isinstance(ref, dict) and isinstance(ref.get("kind"), str) and ref["kind"] != "Mesh":
        check.fail(path[:-1] + ("targetRef", "kind"),
                   f"MeshAccessLog `from` items select every client (kind Mesh), got {ref['kind']!r}: the access log "
                   "belongs to the inbound listener, not to one client")  # fmt: skip


def _chosen_block(check: FieldCheck, node: Json, path: PathKey, types: dict[str, str], what: str,
                  blocks_named: str) -> str | None:
    """The block a `type`-tagged union of `types` (type -> block key) uses: the one its `type` names, or without a
    type the only block present. Reports an unknown type, no or several blocks without a type, and each block the
    type does not use; None where there is no block to read further."""
    blocks = [b for b in types.values() if b in node]
    kind = check.field(node, path, "type", str)
    if kind is not None and kind not in types:
        check.fail(path + ("type",), f"must be one of {', '.join(types)}, got {kind!r}")
        return None
    block = types[kind] if kind is not None else (blocks[0] if len(blocks) == 1 else None)
    if block is None:
        got = f", got {len(blocks)}" if blocks else ""
        check.fail(path, f"must have exactly one of {blocks_named}{got}")
        return None
    for other in blocks:
        if other != block:
            check.fail(path + (other,), f"`{other}` is not used by a {what} of type {kind}")
    return block


def _validate_backend(check: FieldCheck, backend: Json, bp: PathKey) -> None:
    check.unknown(backend, bp, ("type",) + tuple(BACKEND_TYPES.values()))
    block = _chosen_block(check, backend, bp, BACKEND_TYPES, "backend", "`file`, `tcp` or `openTelemetry`")
    if block is None:
        return
    if block != "file":
        check.fail(bp + (block,), f"`{block}` backends are not supported: Kuma implements them with kuma-dp (a log "
                                  "forwarder and an OpenTelemetry pipe), which plain Envoy has not; use a `file` "
                                  "backend")  # fmt: skip
        return
    file = check.field(backend, bp, "file", dict, required=True)
    if file is None:
        return
    fp = bp + ("file",)
    check.unknown(file, fp, ("path", "format"))
    file_path = check.field(file, fp, "path", str, required=True)
    if file_path is not None and (not file_path.startswith("/") or "\x00" in file_path or "\n" in file_path):
        check.fail(fp + ("path",), f"must be an absolute file path, got {file_path!r}")
    fmt = check.field(file, fp, "format", dict)
    if fmt is not None:
        _validate_format(check, fmt, fp + ("format",))


def _validate_format(check: FieldCheck, fmt: Json, fp: PathKey) -> None:
    check.unknown(fmt, fp, ("type", "plain", "json", "omitEmptyValues"))
    check.field(fmt, fp, "omitEmptyValues", bool)
    block = _chosen_block(check, fmt, fp, FORMAT_TYPES, "format", "`plain` or `json`")
    if block is None:
        return
    if block == "plain":
        plain = check.field(fmt, fp, "plain", str, required=True)
        if plain is not None:
            if not plain.strip():
                check.fail(fp + ("plain",), "must not be empty")
            _placeholders(check, plain, fp + ("plain",))
        return
    fields = check.field(fmt, fp, "json", list, required=True)
    if fields is None:
        return
    if not fields:
        check.fail(fp + ("json",), "must not be empty")
    seen: set[str] = set()
    for i, field in enumerate(fields):
        jp = fp + ("json", i)
        if not isinstance(field, dict):
            check.fail(jp, "must be a mapping with `key` and `value`")
            continue
        check.unknown(field, jp, ("key", "value"))
        key = check.field(field, jp, "key", str, required=True)
        value = check.field(field, jp, "value", str, required=True)
        if key is not None:
            if not key:
                check.fail(jp + ("key",), "must not be empty")
            elif key in seen:
                check.fail(jp + ("key",), f"key {key!r} is listed twice")
            seen.add(key)
        if value is not None:
            if not value:
                check.fail(jp + ("value",), "must not be empty")
            _placeholders(check, value, jp + ("value",))


def _placeholders(check: FieldCheck, text: str, path: PathKey) -> None:
    for name in _KUMA_PLACEHOLDER.findall(text):
        if name not in KUMA_PLACEHOLDERS:
            check.fail(path, f"unknown placeholder %{name}% (Kuma's are: "
                             f"{', '.join('%' + p + '%' for p in sorted(KUMA_PLACEHOLDERS))})")  # fmt: skip


def _at(node: Any, path: PathKey) -> Any:
    for key in path:
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            node = node[key]
        elif isinstance(key, str) and isinstance(node, dict):
            node = node.get(key)
        else:
            return None
    return node


# --- rendering --------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    proxy = build.proxy
    source_service = proxy.services[0] if isinstance(proxy, Dataplane) and proxy.services else UNKNOWN
    for out, merged in build.merged_outbounds(KIND):
        values = {
            "KUMA_MESH": out.destination.mesh,
            "KUMA_SOURCE_SERVICE": source_service if build.type == SIDECAR else UNKNOWN,
            "KUMA_DESTINATION_SERVICE": out.destination.name,
            "KUMA_TRAFFIC_DIRECTION": "OUTBOUND",
        }
        _configure_chain(build, out.chain, out.protocol, merged, values)
    for inbound_point in build.inbounds:
        inbound = inbound_point.target
        rule = _mesh_rule(build.match.from_(KIND, inbound))
        if rule is None:
            continue
        # The placement table has no MeshAccessLog `from` on the egress (match.result): an inbound is a sidecar's.
        assert isinstance(inbound, Inbound) and isinstance(proxy, Dataplane)
        values = {
            "KUMA_MESH": proxy.mesh,
            "KUMA_SOURCE_SERVICE": UNKNOWN,
            "KUMA_DESTINATION_SERVICE": inbound.service,
            "KUMA_TRAFFIC_DIRECTION": "INBOUND",
        }
        _configure_chain(build, inbound_point.chain, inbound_point.protocol, rule.merged, values)


def _mesh_rule(rules: list[FromRule]) -> FromRule | None:
    # `from` items are all kind Mesh (validation), so the rule for a client without tags is the only one.
    rule = rule_for(rules, {})
    return None if rule is None or rule.merged.empty else rule


def _configure_chain(build: ProxyBuild, chain: Json, protocol: str, merged: Merged, values: dict[str, str]) -> None:
    backends = merged.conf.get("backends")
    if not isinstance(backends, list) or not backends:
        return  # `backends: []` from a more specific policy turns the log off
    address = build.proxy.address
    values = {**values, "KUMA_SOURCE_ADDRESS": f"{address}:0", "KUMA_SOURCE_ADDRESS_WITHOUT_PORT": address,
              "KUMA_ZONE": "", "KUMA_WORKLOAD": ""}  # fmt: skip
    default_format = HTTP_FORMAT if protocol in HTTP_PROTOCOLS else TCP_FORMAT
    loggers = [_file_logger(backend["file"], default_format, values) for backend in backends]
    manager = hcm(chain) or tcp_proxy(chain)
    if manager is None:
        return  # a chain without a filter that logs (none is rendered today)
    build.set(manager, "access_log", loggers, origins_of(merged, "backends"))


def _file_logger(file: Json, default_format: str, values: dict[str, str]) -> Json:
    fmt = file.get("format") or {}
    log_format: Json
    if "json" in fmt:
        log_format = {"json_format": {f["key"]: _interpolate(f["value"], values) for f in fmt["json"]}}
    else:
        # Envoy writes a text format as is: the newline ends the line (Kuma appends it too).
        text = _interpolate(fmt.get("plain", default_format), values) + "\n"
        log_format = {"text_format_source": {"inline_string": text}}
    if fmt.get("omitEmptyValues"):
        log_format["omit_empty_values"] = True
    config = {"@type": FILE_LOGGER_TYPE, "path": file["path"], "log_format": log_format}
    return {"name": FILE_LOGGER, "typed_config": config}


def _interpolate(text: str, values: dict[str, str]) -> str:
    return _KUMA_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
