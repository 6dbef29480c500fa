"""Envoy as meshplan names it, in one place: the `@type` URL of every Envoy message meshplan writes or reads, the
names of the filters, transport sockets and other extensions it configures, and small builders for the shapes it
repeats. No other module of meshplan spells one of these (tests/test_envoy_names.py).

A new `@type` is one line here, `_message(<full name>, <proto file>)`: the proto file names the xds-protos module
that defines the message, which compare/canonical.py imports so that a resource's `typed_config` of that type
parses; tests/test_envoy_names.py checks that every type resolves there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any

from meshplan.envoy import names

TYPE_URL_PREFIX = "type.googleapis.com/"

# type URL -> the xds-protos module defining its message, for every resource and extension meshplan renders or may
# find in a proxy it manages (compare/canonical.py imports them all)
PROTO_MODULES: dict[str, str] = {}
# type URL -> module, for the admin API's /config_dump sections (read by envoy/config_dump.py, never canonicalised)
ADMIN_PROTO_MODULES: dict[str, str] = {}


def type_url_of(full_name: str) -> str:
    """The `@type` of a protobuf message, by its full name."""
    return TYPE_URL_PREFIX + full_name


def _message(full_name: str, proto_file: str, table: dict[str, str] = PROTO_MODULES) -> str:
    """The `@type` of the message `full_name`, defined in `<proto_file>.proto` of the message's package; recorded in
    `table` with its Python module."""
    url = type_url_of(full_name)
    table[url] = f"{full_name.rpartition('.')[0]}.{proto_file}_pb2"
    return url


# --- resources ----------------------------------------------------------------------------------------------------
CLUSTER = _message("envoy.config.cluster.v3.Cluster", "cluster")
LISTENER = _message("envoy.config.listener.v3.Listener", "listener")
ROUTE_CONFIGURATION = _message("envoy.config.route.v3.RouteConfiguration", "route")
SECRET = _message("envoy.extensions.transport_sockets.tls.v3.Secret", "secret")

# --- extensions meshplan renders, each with the name a resource gives it (`name` beside its `typed_config`) --------
HCM = _message("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
               "http_connection_manager")
HCM_NAME = "envoy.filters.network.http_connection_manager"
NETWORK_FILTER_PREFIX = "envoy.filters.network."  # what `meshplan inspect` and the plan drop from a filter's name
HTTP_FILTER_PREFIX = "envoy.filters.http."
TCP_PROXY = _message("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "tcp_proxy")
TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
NETWORK_RBAC = _message("envoy.extensions.filters.network.rbac.v3.RBAC", "rbac")
NETWORK_RBAC_NAME = "envoy.filters.network.rbac"
NETWORK_LOCAL_RATE_LIMIT = _message("envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
                                    "local_rate_limit")
NETWORK_LOCAL_RATE_LIMIT_NAME = "envoy.filters.network.local_ratelimit"

ROUTER = _message("envoy.extensions.filters.http.router.v3.Router", "router")
ROUTER_NAME = "envoy.filters.http.router"
HTTP_RBAC = _message("envoy.extensions.filters.http.rbac.v3.RBAC", "rbac")
HTTP_RBAC_NAME = "envoy.filters.http.rbac"
HTTP_FAULT = _message("envoy.extensions.filters.http.fault.v3.HTTPFault", "fault")
HTTP_FAULT_NAME = "envoy.filters.http.fault"
HTTP_LOCAL_RATE_LIMIT = _message("envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                                 "local_rate_limit")
HTTP_LOCAL_RATE_LIMIT_NAME = "envoy.filters.http.local_ratelimit"

TLS_INSPECTOR = _message("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector", "tls_inspector")
TLS_INSPECTOR_NAME = "envoy.filters.listener.tls_inspector"

# the TLS transport socket, and its two contexts
TLS_NAME = "envoy.transport_sockets.tls"
UPSTREAM_TLS = _message("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "tls")
DOWNSTREAM_TLS = _message("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", "tls")

# a cluster's `typed_extension_protocol_options` are keyed by the full message name
HTTP_PROTOCOL_OPTIONS_NAME = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS = _message(HTTP_PROTOCOL_OPTIONS_NAME, "http_protocol_options")

FILE_ACCESS_LOG = _message("envoy.extensions.access_loggers.file.v3.FileAccessLog", "file")
FILE_ACCESS_LOG_NAME = "envoy.access_loggers.file"
OTEL_ACCESS_LOG = _message("envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
                           "logs_service")
OTEL_ACCESS_LOG_NAME = "envoy.access_loggers.open_telemetry"

# MeshTrace: the tracer of an HTTP connection manager's `tracing.provider`
ZIPKIN_TRACER = _message("envoy.config.trace.v3.ZipkinConfig", "zipkin")
ZIPKIN_TRACER_NAME = "envoy.tracers.zipkin"
DATADOG_TRACER = _message("envoy.config.trace.v3.DatadogConfig", "datadog")
DATADOG_TRACER_NAME = "envoy.tracers.datadog"
OPENTELEMETRY_TRACER = _message("envoy.config.trace.v3.OpenTelemetryConfig", "opentelemetry")
OPENTELEMETRY_TRACER_NAME = "envoy.tracers.opentelemetry"
HEALTH_CHECK_EVENT_FILE_SINK = _message("envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
                                        "file")
HEALTH_CHECK_EVENT_FILE_SINK_NAME = "envoy.health_check.event_sinks.file"

PREVIOUS_HOSTS = _message("envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate", "previous_hosts")
PREVIOUS_HOSTS_NAME = "envoy.retry_host_predicates.previous_hosts"
OMIT_HOST_METADATA = _message("envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
                              "omit_host_metadata_config")
OMIT_HOST_METADATA_NAME = "envoy.retry_host_predicates.omit_host_metadata"
PREVIOUS_PRIORITIES = _message("envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                               "previous_priorities_config")
PREVIOUS_PRIORITIES_NAME = "envoy.retry_priorities.previous_priorities"
# the endpoint metadata namespace Envoy's load balancer (and the omit_host_metadata predicate) matches on
LB_METADATA = "envoy.lb"

# a filter that applies to some clients only: wrapped in a matcher on the peer certificate's URI SANs
EXTENSION_WITH_MATCHER = _message("envoy.extensions.common.matching.v3.ExtensionWithMatcher", "extension_matcher")
SKIP_FILTER = _message("envoy.extensions.filters.common.matcher.action.v3.SkipFilter", "skip_action")
URI_SAN_INPUT = _message("envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput", "ssl_inputs")
URI_SAN_INPUT_NAME = "envoy.matching.inputs.uri_san"
XDS_MATCHER = _message("xds.type.matcher.v3.Matcher", "matcher")

# --- extensions meshplan does not render but may find in a proxy it manages ---------------------------------------
STDOUT_ACCESS_LOG = _message("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog", "stream")
STDERR_ACCESS_LOG = _message("envoy.extensions.access_loggers.stream.v3.StderrAccessLog", "stream")
HTTP_HEALTH_CHECK = _message("envoy.extensions.filters.http.health_check.v3.HealthCheck", "health_check")
HTTP_INSPECTOR = _message("envoy.extensions.filters.listener.http_inspector.v3.HttpInspector", "http_inspector")
ORIGINAL_DST = _message("envoy.extensions.filters.listener.original_dst.v3.OriginalDst", "original_dst")
DIRECT_RESPONSE = _message("envoy.extensions.filters.network.direct_response.v3.Config", "config")
SNI_CLUSTER = _message("envoy.extensions.filters.network.sni_cluster.v3.SniCluster", "sni_cluster")
RAW_BUFFER = _message("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer", "raw_buffer")
SPIFFE_CERT_VALIDATOR = _message("envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
                                 "tls_spiffe_validator_config")
_LB_POLICIES = "envoy.extensions.load_balancing_policies."
CLIENT_SIDE_WEIGHTED_ROUND_ROBIN = _message(
    _LB_POLICIES + "client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin", "client_side_weighted_round_robin")
LEAST_REQUEST = _message(_LB_POLICIES + "least_request.v3.LeastRequest", "least_request")
MAGLEV = _message(_LB_POLICIES + "maglev.v3.Maglev", "maglev")
RANDOM = _message(_LB_POLICIES + "random.v3.Random", "random")
RING_HASH = _message(_LB_POLICIES + "ring_hash.v3.RingHash", "ring_hash")
ROUND_ROBIN = _message(_LB_POLICIES + "round_robin.v3.RoundRobin", "round_robin")
WRR_LOCALITY = _message(_LB_POLICIES + "wrr_locality.v3.WrrLocality", "wrr_locality")

# --- the admin API: the sections of a /config_dump (envoy/config_dump.py) ------------------------------------------
BOOTSTRAP_CONFIG_DUMP = _message("envoy.admin.v3.BootstrapConfigDump", "config_dump", ADMIN_PROTO_MODULES)
CLUSTERS_CONFIG_DUMP = _message("envoy.admin.v3.ClustersConfigDump", "config_dump_shared", ADMIN_PROTO_MODULES)
LISTENERS_CONFIG_DUMP = _message("envoy.admin.v3.ListenersConfigDump", "config_dump_shared", ADMIN_PROTO_MODULES)
SECRETS_CONFIG_DUMP = _message("envoy.admin.v3.SecretsConfigDump", "config_dump", ADMIN_PROTO_MODULES)

Json = dict[str, Any]


def socket_address(address: str, port: int) -> Json:
    return {"socket_address": {"address": address, "port_value": port}}


def load_assignment(cluster: str, endpoints: list[tuple[str, int]]) -> Json:
    return {
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(a, p)}} for a, p in endpoints]}],
    }


def tls_socket(context: Json) -> Json:
    return {"name": TLS_NAME, "typed_config": context}


def _sds(name: str) -> Json:
    # Secrets come over the same ADS stream as the clusters and listeners that use them (meshplan serve).
    return {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}


def mesh_tls_context(mesh: str, peers: list[Json]) -> Json:
    """The common TLS context of mesh mTLS: this proxy's identity, and peers checked against the mesh CA and `peers`
    (SAN matchers). Both secrets are SDS secrets, by name (docs/names.md)."""
    return {
        "tls_certificate_sds_secret_configs": [_sds(names.identity_secret(mesh))],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": peers},
            "validation_context_sds_secret_config": _sds(names.ca_secret(mesh)),
        },
    }


def _address(holder: Any) -> tuple[str, int] | None:
    socket = holder.get("address", {}).get("socket_address") if isinstance(holder, dict) else None
    if isinstance(socket, dict) and "address" in socket and "port_value" in socket:
        return str(socket["address"]), int(socket["port_value"])
    return None


def listener_addresses(listener: Json) -> list[tuple[str, int]]:
    """Where a listener listens: its address and its additional addresses, as (address, port)."""
    found = [_address(h) for h in [listener, *listener.get("additional_addresses", [])]]
    return [a for a in found if a is not None]


def cluster_endpoints(cluster: Json) -> list[tuple[str, int]]:
    """The (address, port) of every endpoint of a cluster's load assignment."""
    found = [_address(lb.get("endpoint")) for group in cluster.get("load_assignment", {}).get("endpoints", [])
             for lb in group.get("lb_endpoints", [])]
    return [a for a in found if a is not None]


def json_fields(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of every mapping inside `node` (JSON: dicts and lists), depth first, in order."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from json_fields(value)
    elif isinstance(node, list):
        for item in node:
            yield from json_fields(item)


def secret_names(resources: Iterable[Json]) -> set[str]:
    """The SDS secrets some resources refer to (by name)."""
    found: set[str] = set()
    for key, value in json_fields(list(resources)):
        if key == "tls_certificate_sds_secret_configs" and isinstance(value, list):
            found.update(v["name"] for v in value if isinstance(v, dict) and isinstance(v.get("name"), str))
        elif key == "validation_context_sds_secret_config" and isinstance(value, dict):
            if isinstance(value.get("name"), str):
                found.add(value["name"])
    return found


def uri_sans(exact: list[str] | None = None, prefix: str | None = None) -> list[Json]:
    if prefix is not None:
        return [{"san_type": "URI", "matcher": {"prefix": prefix}}]
    return [{"san_type": "URI", "matcher": {"exact": value}} for value in exact or []]


def http_connection_manager(stat_prefix: str, route_name: str, cluster: str) -> Json:
    return {
        "name": HCM_NAME,
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            "route_config": {
                "name": route_name,
                "virtual_hosts": [
                    {"name": route_name, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}
                ],
            },
            "http_filters": [{"name": ROUTER_NAME, "typed_config": {"@type": ROUTER}}],
        },
    }


def tcp_proxy(stat_prefix: str, cluster: str) -> Json:
    return {
        "name": TCP_PROXY_NAME,
        "typed_config": {"@type": TCP_PROXY, "stat_prefix": stat_prefix, "cluster": cluster},
    }


def network_filter(protocol: str, stat_prefix: str, route_name: str, cluster: str) -> Json:
    if protocol in ("http", "http2", "grpc"):
        return http_connection_manager(stat_prefix, route_name, cluster)
    return tcp_proxy(stat_prefix, cluster)


def upstream_protocol_options(protocol: str) -> Json:
    """HTTP/2 towards the upstream for http2 and gRPC services; nothing for the others."""
    if protocol not in ("http2", "grpc"):
        return {}
    return {
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS_NAME: {
                "@type": HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    }


def stat_name(name: str) -> str:
    """A stat prefix from a resource name: Envoy splits stat names on dots."""
    return name.replace(".", "_").replace(":", "_")


def is_ip(host: str) -> bool:
    """An endpoint host that is an IP address (v4 or v6), not a name to resolve."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def discovery_type(hosts: Iterable[str]) -> str:
    """A cluster's discovery type for its endpoints' hosts: STATIC when every one is an IP, else STRICT_DNS."""
    return "STATIC" if all(is_ip(host) for host in hosts) else "STRICT_DNS"
