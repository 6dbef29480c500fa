"""MeshAccessLog's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from typing import Any

from meshplan.envoy import names
from meshplan.envoy import types as t
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
    OtelBackend,
    parse,
)
from meshplan.policies.base import Json, ProxyBuild, hcm, tcp_proxy
from meshplan.policies.conf import ConfReader

# --- rendering --------------------------------------------------------------------------------------------------


CONNECT_TIMEOUT = "5s"  # Kuma's DefaultTimeout of a collector's cluster
LOG_NAME = "MeshAccessLog"  # Kuma's log_name of its OpenTelemetry loggers


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
    manager = hcm(chain) or tcp_proxy(chain)
    if manager is None:
        return  # a chain without a filter that logs (none is rendered today)
    loggers = [_file_logger(backend, default_format, values) if isinstance(backend, FileBackend) else
               _otel_logger(backend, default_format, values, _collector(build, backend, conf.backends.origins))
               for backend in conf.backends.value]  # fmt: skip
    build.set(manager, "access_log", loggers, list(conf.backends.origins))


def _collector(build: ProxyBuild, backend: OtelBackend, origins: tuple[str, ...]) -> str:
    """The cluster of the backend's collector, added once per proxy and endpoint (numbered as Kuma numbers them:
    in the order the proxy's chains meet them), marked with every policy that sends logs to it."""
    taken = [c for c in build.clusters.values() if c["name"].startswith(names.access_log_cluster(0)[:-1])]
    cluster = next((c for c in taken if c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                    == t.socket_address(backend.host, backend.port)), None)  # fmt: skip
    if cluster is None:
        name = names.access_log_cluster(len(taken))
        cluster = {"@type": t.CLUSTER, "name": name, "type": t.discovery_type([backend.host]),
                   "connect_timeout": CONNECT_TIMEOUT,
                   "load_assignment": t.load_assignment(name, [(backend.host, backend.port)]),
                   **t.upstream_protocol_options("grpc")}  # fmt: skip
        if cluster["type"] == "STRICT_DNS":
            cluster["dns_lookup_family"] = "V4_ONLY"  # as Kuma for an IPv4 proxy
        build.clusters[name] = cluster
    build.mark(cluster, "load_assignment", origins)
    return str(cluster["name"])



def _otel_logger(otel: OtelBackend, default_format: str, values: dict[str, str], cluster: str) -> Json:
    body = _interpolate_any(otel.body, values) if otel.body is not None else {
        "string_value": _interpolate(default_format, values)}
    attributes = [{"key": key, "value": {"string_value": _interpolate(value, values)}} for key, value in otel.attributes]
    config = {
        "@type": t.OTEL_ACCESS_LOG,
        # Kuma v2.14.3 writes log_name and grpc_service at the top, Envoy's newer spelling; the Envoy meshplan renders
        # for reads them from common_config (the same meaning).
        "common_config": {"log_name": LOG_NAME, "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                          "transport_api_version": "V3"},
        "body": body,
        "attributes": {"values": attributes},
        "resource_attributes": {"values": [{"key": "kuma.mesh", "value": {"string_value": values["KUMA_MESH"]}}]},
    }
    return {"name": t.OTEL_ACCESS_LOG_NAME, "typed_config": config}


def _interpolate_any(value: Any, values: dict[str, str]) -> Any:
    """Kuma's placeholders filled in within an AnyValue: its strings and a kvlist's keys (not bytes)."""
    if isinstance(value, dict):
        return {k: (_interpolate(v, values) if k in ("string_value", "key") and isinstance(v, str)
                    else _interpolate_any(v, values)) for k, v in value.items()}  # fmt: skip
    if isinstance(value, list):
        return [_interpolate_any(v, values) for v in value]
    return value


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
