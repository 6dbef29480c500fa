"""`@type` URLs of the Envoy v3 messages meshplan renders, and small builders for the shapes it repeats."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshplan.envoy import names

_PREFIX = "type.googleapis.com/"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
HCM = _PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = _PREFIX + "envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = _PREFIX + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
UPSTREAM_TLS = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_INSPECTOR = _PREFIX + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HTTP_PROTOCOL_OPTIONS = _PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

Json = dict[str, Any]


def socket_address(address: str, port: int) -> Json:
    return {"socket_address": {"address": address, "port_value": port}}


def load_assignment(cluster: str, endpoints: list[tuple[str, int]]) -> Json:
    return {
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(a, p)}} for a, p in endpoints]}],
    }


def tls_socket(context: Json) -> Json:
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


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


def secret_names(resources: Iterable[Json]) -> set[str]:
    """The SDS secrets some resources refer to (by name)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "tls_certificate_sds_secret_configs" and isinstance(value, list):
                    found.update(v["name"] for v in value if isinstance(v, dict) and isinstance(v.get("name"), str))
                elif key == "validation_context_sds_secret_config" and isinstance(value, dict):
                    if isinstance(value.get("name"), str):
                        found.add(value["name"])
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(list(resources))
    return found


def uri_sans(exact: list[str] | None = None, prefix: str | None = None) -> list[Json]:
    if prefix is not None:
        return [{"san_type": "URI", "matcher": {"prefix": prefix}}]
    return [{"san_type": "URI", "matcher": {"exact": value}} for value in exact or []]


def http_connection_manager(stat_prefix: str, route_name: str, cluster: str) -> Json:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            "route_config": {
                "name": route_name,
                "virtual_hosts": [
                    {"name": route_name, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}
                ],
            },
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        },
    }


def tcp_proxy(stat_prefix: str, cluster: str) -> Json:
    return {
        "name": "envoy.filters.network.tcp_proxy",
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
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    }


def stat_name(name: str) -> str:
    """A stat prefix from a resource name: Envoy splits stat names on dots."""
    return name.replace(".", "_").replace(":", "_")
