"""MeshHealthCheck's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from meshplan.envoy.types import HEALTH_CHECK_EVENT_FILE_SINK as EVENT_SINK_TYPE
from meshplan.envoy.types import HEALTH_CHECK_EVENT_FILE_SINK_NAME as EVENT_SINK
from meshplan.policies.base import Json, ProxyBuild
from meshplan.policies.conf import Setting
from meshplan.policies.health_check.api import KIND, Checker, Conf, GrpcCheck, HttpCheck, TcpCheck, parse

DEFAULT_INTERVAL = "60s"
DEFAULT_TIMEOUT = "15s"
DEFAULT_UNHEALTHY_THRESHOLD = 5
DEFAULT_HEALTHY_THRESHOLD = 1
DEFAULT_HTTP_PATH = "/"


# --- rendering --------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    # For an external service only on the egress (the seed's placement, applied by match.result).
    for point, conf in build.outbound_confs(KIND, parse):
        _configure_cluster(build, point.cluster, point.protocol, conf)


def _configure_cluster(build: ProxyBuild, cluster: Json, protocol: str, conf: Conf) -> None:
    if conf.healthy_panic_threshold is not None or conf.fail_traffic_on_panic is not None:
        # Another policy (MeshCircuitBreaker) may already have started common_lb_config: add to it.
        lb = cluster.setdefault("common_lb_config", {})
        if conf.healthy_panic_threshold is not None:
            build.set(lb, "healthy_panic_threshold", {"value": conf.healthy_panic_threshold.value},
                      list(conf.healthy_panic_threshold.origins))
        if conf.fail_traffic_on_panic is not None:
            zone = lb.setdefault("zone_aware_lb_config", {})
            _set(build, zone, "fail_traffic_on_panic", conf.fail_traffic_on_panic)
    checker = _checker(protocol, conf)
    if checker is None:
        return
    key, body, origins = checker
    health_check = _health_check(build, conf)
    build.set(health_check, key, body, origins)
    build.set(cluster, "health_checks", [health_check], list(conf.written_by))


def _health_check(build: ProxyBuild, conf: Conf) -> Json:
    """The checker-independent part, with Kuma's defaults; each field a policy wrote remembers who wrote it."""
    health_check: Json = {
        "timeout": DEFAULT_TIMEOUT,
        "interval": DEFAULT_INTERVAL,
        "unhealthy_threshold": DEFAULT_UNHEALTHY_THRESHOLD,
        "healthy_threshold": DEFAULT_HEALTHY_THRESHOLD,
    }
    settings: tuple[tuple[str, Setting[str] | Setting[int] | Setting[bool] | None], ...] = (
        ("timeout", conf.timeout),
        ("interval", conf.interval),
        ("initial_jitter", conf.initial_jitter),
        ("interval_jitter", conf.interval_jitter),
        ("no_traffic_interval", conf.no_traffic_interval),
        ("unhealthy_threshold", conf.unhealthy_threshold),
        ("healthy_threshold", conf.healthy_threshold),
        ("interval_jitter_percent", conf.interval_jitter_percent),
        ("reuse_connection", conf.reuse_connection),
        ("always_log_health_check_failures", conf.always_log_health_check_failures),
    )
    for envoy_key, setting in settings:
        if setting is not None:
            _set(build, health_check, envoy_key, setting)
    if conf.event_log_path is not None:
        sink = {"name": EVENT_SINK, "typed_config": {"@type": EVENT_SINK_TYPE,
                                                     "event_log_path": conf.event_log_path.value}}
        build.set(health_check, "event_logger", [sink], list(conf.event_log_path.origins))
    return health_check


def _checker(protocol: str, conf: Conf) -> tuple[str, Json, list[str]] | None:
    """Kuma's choice of checker for the destination's protocol: (Envoy field, its value, the policies it came from)."""
    tcp = conf.tcp
    if protocol in ("http", "http2"):
        if conf.http is not None and _enabled(conf.http.value):
            return "http_health_check", _http(conf.http.value, protocol), list(conf.http.origins)
        if conf.http is not None and not _enabled(conf.http.value) and tcp is not None and _enabled(tcp.value):
            return "tcp_health_check", _tcp(tcp.value), _union(conf.http.value.disabled, tcp)
        return None
    if protocol == "grpc":
        if conf.grpc is not None and _enabled(conf.grpc.value):
            return "grpc_health_check", _grpc(conf.grpc.value), list(conf.grpc.origins)
        if conf.grpc is not None and not _enabled(conf.grpc.value) and tcp is not None and _enabled(tcp.value):
            return "tcp_health_check", _tcp(tcp.value), _union(conf.grpc.value.disabled, tcp)
        return None
    if tcp is not None and _enabled(tcp.value):
        return "tcp_health_check", _tcp(tcp.value), list(tcp.origins)
    return None


def _enabled(checker: Checker) -> bool:
    return checker.disabled is None or not checker.disabled.value


def _union(disabled: Setting[bool] | None, tcp: Setting[TcpCheck]) -> list[str]:
    """Who chose the fallback: whoever disabled the protocol's checker, and whoever set the TCP one."""
    return sorted({*(disabled.origins if disabled is not None else ()), *tcp.origins})


def _http(http: HttpCheck, protocol: str) -> Json:
    out: Json = {"path": http.path.value if http.path is not None else DEFAULT_HTTP_PATH}
    added = [
        {"header": {"key": h.name, "value": h.value}, "append_action": action}
        for headers, action in ((http.add_headers, "APPEND_IF_EXISTS_OR_ADD"),
                                (http.set_headers, "OVERWRITE_IF_EXISTS_OR_ADD"))
        for h in (headers.value if headers is not None else ())
    ]
    if added:
        out["request_headers_to_add"] = added
    if http.expected_statuses is not None:
        # Envoy takes half-open ranges [start, end).
        out["expected_statuses"] = [{"start": s, "end": s + 1} for s in http.expected_statuses.value]
    if protocol == "http2":
        out["codec_client_type"] = "HTTP2"  # the upstream speaks HTTP/2 only; HTTP/1 is Envoy's default
    return out


def _tcp(tcp: TcpCheck) -> Json:
    out: Json = {}
    if tcp.send is not None:
        out["send"] = {"text": tcp.send.value}
    if tcp.receive is not None and tcp.receive.value:
        out["receive"] = [{"text": block} for block in tcp.receive.value]
    return out


def _grpc(grpc: GrpcCheck) -> Json:
    return {key: setting.value for key, setting in (("service_name", grpc.service_name), ("authority", grpc.authority))
            if setting is not None and setting.value}  # fmt: skip


def _set(build: ProxyBuild, node: Json, envoy_key: str, setting: Setting[str] | Setting[int] | Setting[bool]) -> None:
    build.set(node, envoy_key, setting.value, list(setting.origins))
