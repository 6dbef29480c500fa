"""Render parity with Kuma v2.14.3's policy plugins: per policy field, the Envoy field Kuma's plugin sets and the
value, read from its code and goldens (`pkg/plugins/policies/<kind>/plugin/xds/configurer.go`, `.../testdata`; the
research behind it is docs/policies.md "Kuma's defaults"). Our own inputs: one policy per row, `to` or `from` the
whole mesh, rendered on `web` (calling backend over HTTP, db over TCP, api over gRPC) or on backend's inbound.

Rows whose value differs from Kuma's on purpose say so in their id (`differs-...`) and docs/policies.md says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshplan.model import ProxyConfig
from tests.builders import FixedAddresses, table_cases, web_calling, write_mesh
from tests.policy_tables import policy_file

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
COMMON = ("typed_extension_protocol_options", HPO, "common_http_protocol_options")
ROUTE = ("route_config", "virtual_hosts", 0, "routes", 0, "route")
RETRY = ROUTE + ("retry_policy",)
HC = ("health_checks", 0)
OD = ("outlier_detection",)
LIMITS = ("circuit_breakers", "thresholds", 0)

# (id, kind, section, default body, where, path inside it, the value Kuma's plugin writes)
# where: cluster:<service> (web's cluster), hcm:<service> / tcp:<service> (web's outbound filter of that service),
# local (backend's local cluster), inbound (backend's inbound connection manager).
TABLE: list[tuple[str, str, str, str, str, tuple[Any, ...], Any]] = [
    # MeshTimeout: meshtimeout/plugin/xds/configurer.go; goldens default_outbound_cluster, default_outbound_listener
    ("timeout-connect", "MeshTimeout", "to", "connectionTimeout: 7s", "cluster:backend", ("connect_timeout",), "7s"),
    ("timeout-connect-default", "MeshTimeout", "to", "idleTimeout: 10m", "cluster:backend", ("connect_timeout",), "5s"),
    ("timeout-idle-http", "MeshTimeout", "to", "idleTimeout: 10m", "cluster:backend", COMMON + ("idle_timeout",), "600s"),
    ("timeout-idle-http-default", "MeshTimeout", "to", "connectionTimeout: 7s", "cluster:backend",
     COMMON + ("idle_timeout",), "3600s"),
    ("timeout-idle-tcp", "MeshTimeout", "to", "idleTimeout: 10m", "tcp:db", ("idle_timeout",), "600s"),
    ("timeout-idle-tcp-default", "MeshTimeout", "to", "connectionTimeout: 7s", "tcp:db", ("idle_timeout",), "3600s"),
    ("timeout-request", "MeshTimeout", "to", "http: {requestTimeout: 3s}", "hcm:backend", ROUTE + ("timeout",), "3s"),
    ("timeout-request-default", "MeshTimeout", "to", "connectionTimeout: 7s", "hcm:backend", ROUTE + ("timeout",), "15s"),
    ("timeout-stream-idle", "MeshTimeout", "to", "http: {streamIdleTimeout: 20s}", "hcm:backend",
     ROUTE + ("idle_timeout",), "20s"),
    ("timeout-stream-idle-default", "MeshTimeout", "to", "connectionTimeout: 7s", "hcm:backend",
     ROUTE + ("idle_timeout",), "1800s"),
    ("timeout-max-stream", "MeshTimeout", "to", "http: {maxStreamDuration: 1m}", "cluster:backend",
     COMMON + ("max_stream_duration",), "60s"),
    ("timeout-max-stream-default", "MeshTimeout", "to", "connectionTimeout: 7s", "cluster:backend",
     COMMON + ("max_stream_duration",), "0s"),
    ("timeout-max-connection", "MeshTimeout", "to", "http: {maxConnectionDuration: 1h}", "cluster:backend",
     COMMON + ("max_connection_duration",), "3600s"),
    ("timeout-max-connection-default", "MeshTimeout", "to", "connectionTimeout: 7s", "cluster:backend",
     COMMON + ("max_connection_duration",), "0s"),
    ("timeout-request-headers", "MeshTimeout", "to", "http: {requestHeadersTimeout: 2s}", "hcm:backend",
     ("request_headers_timeout",), "2s"),
    ("timeout-request-headers-default", "MeshTimeout", "to", "connectionTimeout: 7s", "hcm:backend",
     ("request_headers_timeout",), "0s"),
    ("timeout-downstream-idle-off", "MeshTimeout", "to", "connectionTimeout: 7s", "hcm:backend",
     ("common_http_protocol_options", "idle_timeout"), "0s"),
    ("timeout-from-connect", "MeshTimeout", "from", "connectionTimeout: 1s", "local", ("connect_timeout",), "1s"),
    ("timeout-from-request", "MeshTimeout", "from", "http: {requestTimeout: 4s}", "inbound", ROUTE + ("timeout",), "4s"),
    ("timeout-from-stream-idle-default", "MeshTimeout", "from", "connectionTimeout: 1s", "inbound",
     ROUTE + ("idle_timeout",), "1800s"),
    ("timeout-from-downstream-idle-off", "MeshTimeout", "from", "connectionTimeout: 1s", "inbound",
     ("common_http_protocol_options", "idle_timeout"), "0s"),
    # MeshRetry: meshretry/plugin/xds/configurer.go
    ("retry-num", "MeshRetry", "to", "http: {numRetries: 4}", "hcm:backend", RETRY + ("num_retries",), 4),
    ("retry-per-try", "MeshRetry", "to", "http: {perTryTimeout: 2s}", "hcm:backend", RETRY + ("per_try_timeout",), "2s"),
    ("retry-back-off", "MeshRetry", "to", "http: {backOff: {baseInterval: 10ms, maxInterval: 100ms}}", "hcm:backend",
     RETRY + ("retry_back_off",), {"base_interval": "0.010s", "max_interval": "0.100s"}),
    ("retry-on-default-http", "MeshRetry", "to", "http: {numRetries: 4}", "hcm:backend", RETRY + ("retry_on",),
     "gateway-error,connect-failure,refused-stream"),
    ("retry-on-status", "MeshRetry", "to", 'http: {retryOn: ["5xx", "503"]}', "hcm:backend", RETRY + ("retry_on",),
     "5xx,retriable-status-codes"),
    ("retry-status-codes", "MeshRetry", "to", 'http: {retryOn: ["5xx", "503"]}', "hcm:backend",
     RETRY + ("retriable_status_codes",), [503]),
    ("retry-on-default-grpc", "MeshRetry", "to", "grpc: {numRetries: 2}", "hcm:api", RETRY + ("retry_on",),
     "cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable"),
    ("retry-grpc-back-off-base-default", "MeshRetry", "to", "grpc: {backOff: {maxInterval: 1s}}", "hcm:api",
     RETRY + ("retry_back_off", "base_interval"), "0.025s"),
    # Kuma writes `canceled`, which Envoy accepts and ignores (its gRPC condition is `cancelled`): meshplan differs.
    ("differs-retry-grpc-canceled", "MeshRetry", "to", "grpc: {retryOn: [Canceled, Unavailable]}", "hcm:api",
     RETRY + ("retry_on",), "cancelled,unavailable"),
    ("retry-tcp-attempts", "MeshRetry", "to", "tcp: {maxConnectAttempt: 3}", "tcp:db", ("max_connect_attempts",), 3),
    ("retry-host-selection", "MeshRetry", "to", "http: {hostSelection: [{predicate: OmitPreviousHosts}]}",
     "hcm:backend", RETRY + ("retry_host_predicate", 0, "name"), "envoy.retry_host_predicates.previous_hosts"),
    # MeshCircuitBreaker: meshcircuitbreaker/plugin/xds/configurer.go
    ("breaker-max-connections", "MeshCircuitBreaker", "to", "connectionLimits: {maxConnections: 10}", "cluster:backend",
     LIMITS + ("max_connections",), 10),
    ("breaker-max-pending", "MeshCircuitBreaker", "to", "connectionLimits: {maxPendingRequests: 11}", "cluster:backend",
     LIMITS + ("max_pending_requests",), 11),
    ("breaker-max-requests", "MeshCircuitBreaker", "to", "connectionLimits: {maxRequests: 12}", "cluster:backend",
     LIMITS + ("max_requests",), 12),
    ("breaker-max-retries", "MeshCircuitBreaker", "to", "connectionLimits: {maxRetries: 13}", "cluster:backend",
     LIMITS + ("max_retries",), 13),
    ("breaker-track-remaining", "MeshCircuitBreaker", "to", "connectionLimits: {maxRetries: 13}", "cluster:backend",
     LIMITS + ("track_remaining",), True),
    ("breaker-track-remaining-tcp", "MeshCircuitBreaker", "to", "connectionLimits: {maxRetries: 13}", "cluster:db",
     LIMITS + ("track_remaining",), True),
    ("breaker-consecutive-5xx", "MeshCircuitBreaker", "to",
     "outlierDetection: {detectors: {totalFailures: {consecutive: 3}}}", "cluster:backend", OD + ("consecutive_5xx",), 3),
    ("breaker-enforcing-5xx", "MeshCircuitBreaker", "to",
     "outlierDetection: {detectors: {totalFailures: {consecutive: 3}}}", "cluster:backend",
     OD + ("enforcing_consecutive_5xx",), 100),
    ("breaker-unnamed-detector-off", "MeshCircuitBreaker", "to",
     "outlierDetection: {detectors: {totalFailures: {consecutive: 3}}}", "cluster:backend",
     OD + ("enforcing_consecutive_gateway_failure",), 0),
    ("breaker-stdev-factor", "MeshCircuitBreaker", "to",
     "outlierDetection: {detectors: {successRate: {standardDeviationFactor: 1.9}}}", "cluster:backend",
     OD + ("success_rate_stdev_factor",), 1900),
    ("breaker-interval", "MeshCircuitBreaker", "to",
     "outlierDetection: {interval: 5s, detectors: {totalFailures: {consecutive: 3}}}", "cluster:backend",
     OD + ("interval",), "5s"),
    ("breaker-panic", "MeshCircuitBreaker", "to",
     "outlierDetection: {healthyPanicThreshold: 30, detectors: {totalFailures: {consecutive: 3}}}", "cluster:backend",
     ("common_lb_config", "healthy_panic_threshold", "value"), 30),
    # MeshHealthCheck: meshhealthcheck/plugin/xds/configurer.go (interval 60s, timeout 15s, 5 / 1 when unset)
    ("health-interval", "MeshHealthCheck", "to", "interval: 10s\nhttp: {path: /x}", "cluster:backend", HC + ("interval",), "10s"),
    ("health-interval-default", "MeshHealthCheck", "to", "timeout: 2s\nhttp: {path: /x}", "cluster:backend", HC + ("interval",), "60s"),
    ("health-timeout-default", "MeshHealthCheck", "to", "http: {path: /x}", "cluster:backend", HC + ("timeout",), "15s"),
    ("health-unhealthy-default", "MeshHealthCheck", "to", "http: {path: /x}", "cluster:backend",
     HC + ("unhealthy_threshold",), 5),
    ("health-healthy-default", "MeshHealthCheck", "to", "http: {path: /x}", "cluster:backend", HC + ("healthy_threshold",), 1),
    ("health-http-path-default", "MeshHealthCheck", "to", "http: {expectedStatuses: [200]}", "cluster:backend",
     HC + ("http_health_check", "path"), "/"),
    ("health-expected-statuses", "MeshHealthCheck", "to", "http: {expectedStatuses: [200]}", "cluster:backend",
     HC + ("http_health_check", "expected_statuses"), [{"start": 200, "end": 201}]),
    ("health-grpc-service", "MeshHealthCheck", "to", "grpc: {serviceName: svc}", "cluster:api",
     HC + ("grpc_health_check", "service_name"), "svc"),
    ("health-tcp-checker", "MeshHealthCheck", "to", "http: {path: /x}\ntcp: {}", "cluster:db", HC + ("tcp_health_check",),
     {}),
]


def at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


def chain_filter(proxy: ProxyConfig, name: str, service: str) -> dict[str, Any]:
    """The typed config of the filter `name` (hcm or tcp proxy) on the proxy's listener that leads to `service`."""
    for listener in proxy.listeners:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                config = f["typed_config"]
                if f["name"] != name:
                    continue
                if config.get("cluster") == service:
                    return config  # type: ignore[no-any-return]
                routes = config.get("route_config", {}).get("virtual_hosts", [{}])[0].get("routes", [])
                if any(r.get("route", {}).get("cluster") == service for r in routes):
                    return config  # type: ignore[no-any-return]
    raise AssertionError(f"{proxy.name}: no {name} to {service}")


def place(proxies: dict[str, ProxyConfig], where: str) -> Any:
    web, backend = proxies["web"], proxies["backend-1"]
    kind, _, service = where.partition(":")
    if kind == "cluster":
        return next(c for c in web.clusters if c["name"] == service)
    if kind == "hcm":
        return chain_filter(web, "envoy.filters.network.http_connection_manager", service)
    if kind == "tcp":
        return chain_filter(web, "envoy.filters.network.tcp_proxy", service)
    if kind == "local":
        return next(c for c in backend.clusters if c["name"].startswith("local:"))
    assert kind == "inbound"
    (listener,) = backend.listeners
    return listener["filter_chains"][0]["filters"][-1]["typed_config"]


@pytest.mark.parametrize(("kind", "section", "body", "where", "path", "expected"), table_cases(TABLE))
def test_the_envoy_field_and_value_kumas_plugin_sets(tmp_path: Path, kind: str, section: str, body: str, where: str,
                                                     path: tuple[Any, ...], expected: Any) -> None:
    mesh = write_mesh(tmp_path, FixedAddresses(), web_calling(http=("backend",), tcp=("db",), grpc=("api",)),
                      policies=policy_file(kind, body, section))
    proxies = {p.name: p for p in mesh.render()}
    assert at(place(proxies, where), path) == expected
