"""How fast is the canonicaliser? Prints times; asserts nothing.

    .venv/bin/python benchmarks/canonicalise.py [N]

N distinct sidecar-like resources (half clusters with TLS and circuit breakers, half HCM listeners with an inline
route, ~1-1.6 KB of JSON each) are canonicalised cold (every one a cache miss: the proto round trip), then again
warm (cache hits, as for the same outbound cluster on many sidecars), then diffed unchanged against themselves.
"""

from __future__ import annotations

import sys
import time
from typing import Any

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

started = time.perf_counter()
from meshplan.compare.canonical import canonical, fingerprint  # noqa: E402
from meshplan.compare.diff import diff_resources  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - started


def cluster(i: int) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": f"service-{i}",
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": f"service-{i}", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": f"10.0.{i // 250}.{i % 250}",
                                                         "port_value": 8080}}}}]}]},
        "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", "max_connections": 5 + i,
                                             "track_remaining": False}]},
        "outlier_detection": {"consecutive_5xx": 5, "interval": "10s", "base_ejection_time": "30s"},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": f"service-{i}",
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": "/state/pki/web.pem"},
                                      "private_key": {"filename": "/state/pki/web.key"}}],
                "validation_context": {"trusted_ca": {"filename": "/state/pki/ca.pem"},
                                       "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {
                                           "exact": f"spiffe://default/service-{i}"}}]}}}},
    }


def listener(i: int) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": f"outbound:240.0.{i // 250}.{i % 250}:80",
        "address": {"socket_address": {"address": f"240.0.{i // 250}.{i % 250}", "port_value": 80}},
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                     ".HttpConnectionManager",
            "stat_prefix": f"service-{i}",
            "route_config": {"name": f"outbound:service-{i}", "virtual_hosts": [{
                "name": f"service-{i}", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {
                    "cluster": f"service-{i}", "timeout": "15s",
                    "retry_policy": {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.5s"}}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }}]}],
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    resources = [cluster(i) if i % 2 == 0 else listener(i) for i in range(n)]

    started = time.perf_counter()
    for resource in resources:
        canonical(resource)
    cold = time.perf_counter() - started

    started = time.perf_counter()
    for resource in resources:
        canonical(resource)
    warm = time.perf_counter() - started

    clusters, listeners = resources[0::2], resources[1::2]
    started = time.perf_counter()
    assert diff_resources(clusters, clusters, "cluster") == [] and diff_resources(listeners, listeners, "listener") == []
    unchanged = time.perf_counter() - started

    started = time.perf_counter()
    fingerprint(resources)
    printed = time.perf_counter() - started

    print(f"import (protos and extensions): {IMPORT_SECONDS * 1000:.0f} ms")
    print(f"canonicalise {n} distinct resources, cold: {cold * 1000:.0f} ms ({cold / n * 1e6:.0f} us each)")
    print(f"canonicalise {n} again, cached:       {warm * 1000:.0f} ms ({warm / n * 1e6:.0f} us each)")
    print(f"diff {n} unchanged against themselves: {unchanged * 1000:.0f} ms")
    print(f"fingerprint {n}:                       {printed * 1000:.0f} ms")


if __name__ == "__main__":
    main()
