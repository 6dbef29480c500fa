"""MeshAccessLog's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from meshplan.envoy.types import FILE_ACCESS_LOG as FILE_LOGGER_TYPE
from meshplan.envoy.types import FILE_ACCESS_LOG_NAME as FILE_LOGGER
from meshplan.match.matcher import FromRule, Merged, rule_for
from meshplan.model import SIDECAR, Dataplane, Inbound
from meshplan.policies.access_log.api import (
    _KUMA_PLACEHOLDER,
    HTTP_FORMAT,
    HTTP_PROTOCOLS,
    KIND,
    TCP_FORMAT,
    UNKNOWN,
    FileBackend,
    parse,
)
from meshplan.policies.base import Json, ProxyBuild, hcm, tcp_proxy
from meshplan.policies.conf import ConfReader

# --- rendering --------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    proxy = build.proxy
    source_service = proxy.services[0] if isinstance(proxy, Dataplane) and proxy.services else UNKNOWN
    for out in build.outbounds:
        merged = build.match.to(KIND, out.destination)
        if merged.empty:
            continue
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
    conf = parse(ConfReader.of_merged(merged))
    if conf is None or not conf.backends.value:
        return  # `backends: []` from a more specific policy turns the log off
    address = build.proxy.address
    values = {**values, "KUMA_SOURCE_ADDRESS": f"{address}:0", "KUMA_SOURCE_ADDRESS_WITHOUT_PORT": address,
              "KUMA_ZONE": "", "KUMA_WORKLOAD": ""}  # fmt: skip
    default_format = HTTP_FORMAT if protocol in HTTP_PROTOCOLS else TCP_FORMAT
    loggers = [_file_logger(backend, default_format, values) for backend in conf.backends.value]
    manager = hcm(chain) or tcp_proxy(chain)
    if manager is None:
        return  # a chain without a filter that logs (none is rendered today)
    build.set(manager, "access_log", loggers, list(conf.backends.origins))


def _file_logger(file: FileBackend, default_format: str, values: dict[str, str]) -> Json:
    fmt = file.format
    log_format: Json
    if fmt is not None and fmt.json is not None:
        log_format = {"json_format": {f.key: _interpolate(f.value, values) for f in fmt.json}}
    else:
        # Envoy writes a text format as is: the newline ends the line (Kuma appends it too).
        plain = fmt.plain if fmt is not None and fmt.plain is not None else default_format
        text = _interpolate(plain, values) + "\n"
        log_format = {"text_format_source": {"inline_string": text}}
    if fmt is not None and fmt.omit_empty_values:
        log_format["omit_empty_values"] = True
    config = {"@type": FILE_LOGGER_TYPE, "path": file.path, "log_format": log_format}
    return {"name": FILE_LOGGER, "typed_config": config}


def _interpolate(text: str, values: dict[str, str]) -> str:
    return _KUMA_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
