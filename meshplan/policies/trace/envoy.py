"""MeshTrace into Envoy: the `tracing` of every HTTP connection manager of the selected sidecar, inbound and
outbound (as Kuma does), and the cluster of the collector.

    backends[0].zipkin          tracing.provider {envoy.tracers.zipkin: ZipkinConfig {collector_cluster,
                                  collector_endpoint (the URL's path), collector_hostname (its host[:port]),
                                  trace_id_128bit, collector_endpoint_version, shared_span_context}}
    backends[0].datadog         tracing.provider {envoy.tracers.datadog: DatadogConfig {collector_cluster,
                                  service_name: the sidecar's service; with splitService <svc>_INBOUND or
                                  <svc>_OUTBOUND_<destination>}}
    backends[0].openTelemetry   tracing.provider {envoy.tracers.opentelemetry: OpenTelemetryConfig {service_name,
                                  grpc_service.envoy_grpc.cluster_name}} (an HTTP/2 cluster)
    sampling.overall|client|random   tracing.overall_sampling|client_sampling|random_sampling {value}
    tags[]                      tracing.custom_tags[] (literal, or request_header {name, default_value}), then
                                  Kuma's own literal tag kuma.mesh unless a tag of that name is written
    the collector               cluster meshtrace:<zipkin|datadog|opentelemetry> to its host and port (STRICT_DNS
                                  for a name, STATIC for an IP; TLS with SNI for an https Zipkin URL)

`spawn_upstream_span` is false, as Kuma sets it on sidecars (only its gateways spawn upstream spans).
"""

from __future__ import annotations

from typing import Any

from meshplan.envoy import names
from meshplan.envoy import types as t
from meshplan.policies.base import Json, ProxyBuild, hcm
from meshplan.policies.trace.api import (
    Backend,
    Collector,
    Conf,
    Datadog,
    OpenTelemetry,
    Tag,
    Zipkin,
    parse,
)

KIND = "MeshTrace"
CONNECT_TIMEOUT = "5s"  # Kuma's DefaultTimeout of the collector's cluster
UNKNOWN = "unknown"


def apply(build: ProxyBuild) -> None:
    found = build.sidecar_conf(KIND, parse)
    if found is None:
        return
    proxy, conf = found
    if conf.backend.value is None:
        return  # `backends: []`: tracing off
    backend = conf.backend.value
    service = proxy.services[0] if proxy.services else UNKNOWN
    origins = sorted({o for setting in (conf.backend, conf.overall, conf.client, conf.random, conf.tags)
                      if setting is not None for o in setting.origins})  # fmt: skip
    cluster = _cluster(backend)
    build.clusters[cluster["name"]] = cluster
    build.mark(cluster, "load_assignment", conf.backend.origins)
    for out in build.outbounds:
        manager = hcm(out.chain)
        if manager is not None:
            build.set(manager, "tracing", _tracing(conf, backend, service, proxy.mesh, f"OUTBOUND_{out.destination.name}"),
                      origins)
    for inbound in build.inbounds:
        manager = hcm(inbound.chain)
        if manager is not None:
            build.set(manager, "tracing", _tracing(conf, backend, service, proxy.mesh, "INBOUND"), origins)


def _tracing(conf: Conf, backend: Backend, service: str, mesh: str, direction: str) -> Json:
    tracing: Json = {"spawn_upstream_span": False}
    for key, setting in (("overall_sampling", conf.overall), ("client_sampling", conf.client),
                         ("random_sampling", conf.random)):  # fmt: skip
        if setting is not None:
            tracing[key] = {"value": float(setting.value)}
    tags = [_tag(tag) for tag in (conf.tags.value if conf.tags is not None else ())]
    if not any(tag["tag"] == "kuma.mesh" for tag in tags):
        tags.append({"tag": "kuma.mesh", "literal": {"value": mesh}})
    tracing["custom_tags"] = tags
    tracing["provider"] = _provider(backend, service, direction)
    return tracing


def _tag(tag: Tag) -> Json:
    if tag.header is not None:
        header: Json = {"name": tag.header}
        if tag.header_default is not None:
            header["default_value"] = tag.header_default
        return {"tag": tag.name, "request_header": header}
    return {"tag": tag.name, "literal": {"value": tag.literal or ""}}


def _provider(backend: Backend, service: str, direction: str) -> Json:
    config: dict[str, Any]
    if isinstance(backend, Zipkin):
        config = {"@type": t.ZIPKIN_TRACER, "collector_cluster": names.trace_cluster("zipkin"),
                  "collector_endpoint": backend.path, "collector_hostname": backend.authority,
                  "collector_endpoint_version": backend.api_version,
                  "shared_span_context": backend.shared_span_context}  # fmt: skip
        if backend.trace_id_128bit:
            config["trace_id_128bit"] = True
        return {"name": t.ZIPKIN_TRACER_NAME, "typed_config": config}
    if isinstance(backend, Datadog):
        name = f"{service}_{direction}" if backend.split_service else service
        config = {"@type": t.DATADOG_TRACER, "collector_cluster": names.trace_cluster("datadog"), "service_name": name}
        return {"name": t.DATADOG_TRACER_NAME, "typed_config": config}
    config = {"@type": t.OPENTELEMETRY_TRACER, "service_name": service,
              "grpc_service": {"envoy_grpc": {"cluster_name": names.trace_cluster("opentelemetry")}}}  # fmt: skip
    return {"name": t.OPENTELEMETRY_TRACER_NAME, "typed_config": config}


def _cluster(backend: Backend) -> Json:
    provider = "zipkin" if isinstance(backend, Zipkin) else "datadog" if isinstance(backend, Datadog) else "opentelemetry"
    name = names.trace_cluster(provider)
    collector: Collector = backend.collector
    cluster: Json = {
        "@type": t.CLUSTER,
        "name": name,
        "type": t.discovery_type([collector.host]),
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": t.load_assignment(name, [(collector.host, collector.port)]),
    }
    if isinstance(backend, OpenTelemetry):
        cluster.update(t.upstream_protocol_options("grpc"))
    if collector.tls:
        cluster["transport_socket"] = t.tls_socket({"@type": t.UPSTREAM_TLS, "sni": collector.host})
    return cluster
