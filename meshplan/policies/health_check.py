"""MeshHealthCheck (`to`): active health checks on the cluster of each destination.

Where: sidecars (their outbound clusters) and, with `proxyType: ["Egress"]` and a `to` item naming a
MeshExternalService, the egress's cluster to that external service (the seed's placement table). A sidecar's
cluster to an external service (whose endpoint is the egress) is never changed, even by a `to` item of kind Mesh:
the seed wants the external service health-checked, not the egress.

Envoy fields, on the destination's cluster (proto field names):

    interval / timeout                    health_checks[0].interval / .timeout
    unhealthyThreshold / healthyThreshold health_checks[0].unhealthy_threshold / .healthy_threshold
    initialJitter / intervalJitter        health_checks[0].initial_jitter / .interval_jitter
    intervalJitterPercent                 health_checks[0].interval_jitter_percent
    noTrafficInterval                     health_checks[0].no_traffic_interval
    reuseConnection                       health_checks[0].reuse_connection
    eventLogPath                          health_checks[0].event_logger[] (envoy.health_check.event_sinks.file)
    alwaysLogHealthCheckFailures          health_checks[0].always_log_health_check_failures
    http {path, expectedStatuses,         health_checks[0].http_health_check {path, expected_statuses [s, s+1),
          requestHeadersToAdd {add, set}}     request_headers_to_add (APPEND_IF_EXISTS_OR_ADD / OVERWRITE_...)}
    tcp {send, receive}                   health_checks[0].tcp_health_check {send, receive} (hex payloads)
    grpc {serviceName, authority}         health_checks[0].grpc_health_check {service_name, authority}
    healthyPanicThreshold                 common_lb_config.healthy_panic_threshold.value
    failTrafficOnPanic                    common_lb_config.zone_aware_lb_config.fail_traffic_on_panic

Defaults (Kuma 2.x, plugin/xds/configurer.go): interval 1m, timeout 15s, unhealthyThreshold 5, healthyThreshold 1,
http path `/`; Envoy's own for the rest (no jitter, noTrafficInterval 60s, connections reused, HTTP 200 healthy,
panic threshold 50%). A `default` must name at least one of http, tcp, grpc (as Kuma).

Which checker, as Kuma picks it from the destination's protocol: http/http2 -> `http` unless it is disabled, then
`tcp` if given and enabled; grpc -> `grpc`, likewise falling back to `tcp`; tcp -> `tcp`. Any other combination (say
only `tcp` for an HTTP service) sets no health check, though the panic settings still apply.

`healthyPanicThreshold` is deprecated in Kuma (moved to MeshCircuitBreaker) but still honoured, as Kuma does; this
module runs after MeshCircuitBreaker's (registry order), so where both set the threshold, MeshHealthCheck's wins.

Differences from Kuma, on purpose:
- `tcp.send` / `tcp.receive` are decoded as base64, as Kuma's API documents them (Kuma's plugin sends the base64 text
  itself); Envoy gets the decoded bytes hex-encoded.
- a header in `requestHeadersToAdd` is one Envoy header with the value as written (Kuma splits values on commas,
  which is the same thing on the wire); Kuma's `x-kuma-tags` header (source tags, for the old TrafficPermission) is
  not added.
"""

from __future__ import annotations

import base64
import binascii
import re

from meshplan.envoy.types import HEALTH_CHECK_EVENT_FILE_SINK as EVENT_SINK_TYPE
from meshplan.envoy.types import HEALTH_CHECK_EVENT_FILE_SINK_NAME as EVENT_SINK
from meshplan.load.resources import PathKey
from meshplan.match.matcher import Merged
from meshplan.policies.base import Json, ProxyBuild, origins_of
from meshplan.validate.check import FieldCheck, as_decimal, proto_duration

KIND = "MeshHealthCheck"
ORDER = 100  # run order on a proxy (registry.py): after MeshCircuitBreaker (see there)

DEFAULT_INTERVAL = "60s"
DEFAULT_TIMEOUT = "15s"
DEFAULT_UNHEALTHY_THRESHOLD = 5
DEFAULT_HEALTHY_THRESHOLD = 1
DEFAULT_HTTP_PATH = "/"

FIELDS = (
    "interval", "timeout", "unhealthyThreshold", "healthyThreshold", "initialJitter", "intervalJitter",
    "intervalJitterPercent", "healthyPanicThreshold", "failTrafficOnPanic", "eventLogPath",
    "alwaysLogHealthCheckFailures", "noTrafficInterval", "tcp", "http", "grpc", "reuseConnection",
)  # fmt: skip
DURATIONS = ("interval", "timeout", "initialJitter", "intervalJitter", "noTrafficInterval")
BOOLEANS = ("failTrafficOnPanic", "alwaysLogHealthCheckFailures", "reuseConnection")
# Envoy keeps thresholds in a UInt32Value.
MAX_UINT32 = 2**32 - 1
MAX_HEADERS = 16  # per list, as Kuma's CRD
# RFC 9110 token; Envoy refuses pseudo-headers (`:path`) and `host` among headers to add.
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


# --- validation -------------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    check.unknown(default, path, FIELDS)
    for key in DURATIONS:
        check.duration(default, path, key, positive=True)
    for key in ("unhealthyThreshold", "healthyThreshold"):
        _integer(check, default, path, key, minimum=1, maximum=MAX_UINT32)
    _integer(check, default, path, "intervalJitterPercent", minimum=0, maximum=100)
    _percent(check, default, path, "healthyPanicThreshold")
    for key in BOOLEANS:
        check.field(default, path, key, bool)
    _absolute_path(check, default, path, "eventLogPath")
    checkers = [key for key in ("http", "tcp", "grpc") if key in default]
    if not checkers:
        check.fail(path, "must have at least one of `http`, `tcp` or `grpc`: the health check to run")
    http = check.field(default, path, "http", dict)
    if http is not None:
        _validate_http(check, http, path + ("http",))
    tcp = check.field(default, path, "tcp", dict)
    if tcp is not None:
        _validate_tcp(check, tcp, path + ("tcp",))
    grpc = check.field(default, path, "grpc", dict)
    if grpc is not None:
        gp = path + ("grpc",)
        check.unknown(grpc, gp, ("disabled", "serviceName", "authority"))
        check.field(grpc, gp, "disabled", bool)
        check.field(grpc, gp, "serviceName", str)
        authority = check.field(grpc, gp, "authority", str)
        if authority is not None and not authority.strip():
            check.fail(gp + ("authority",), "must not be empty")


def _validate_http(check: FieldCheck, http: Json, hp: PathKey) -> None:
    check.unknown(http, hp, ("disabled", "path", "requestHeadersToAdd", "expectedStatuses"))
    check.field(http, hp, "disabled", bool)
    request_path = check.field(http, hp, "path", str)
    if request_path is not None and not request_path.startswith("/"):
        check.fail(hp + ("path",), f"must be an HTTP path starting with `/`, got {request_path!r}")
    statuses = check.field(http, hp, "expectedStatuses", list)
    for i, status in enumerate(statuses or []):
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            check.fail(hp + ("expectedStatuses", i), f"must be an HTTP status code between 100 and 599, got {status!r}")
    headers = check.field(http, hp, "requestHeadersToAdd", dict)
    if headers is not None:
        rp = hp + ("requestHeadersToAdd",)
        check.unknown(headers, rp, ("add", "set"))
        for key in ("add", "set"):
            _validate_headers(check, headers, rp, key)


def _validate_headers(check: FieldCheck, headers: Json, path: PathKey, key: str) -> None:
    items = check.field(headers, path, key, list)
    if items is None:
        return
    if len(items) > MAX_HEADERS:
        check.fail(path + (key,), f"at most {MAX_HEADERS} headers, got {len(items)}")
    seen: set[str] = set()
    for i, item in enumerate(items):
        ip = path + (key, i)
        if not isinstance(item, dict):
            check.fail(ip, "must be a mapping with `name` and `value`")
            continue
        check.unknown(item, ip, ("name", "value"))
        name = check.field(item, ip, "name", str, required=True)
        check.field(item, ip, "value", str, required=True)
        if name is None:
            continue
        if not HEADER_NAME.fullmatch(name) or name.lower() == "host":
            check.fail(ip + ("name",), f"must be an HTTP header name (not a pseudo-header or `host`), got {name!r}")
        elif name.lower() in seen:
            check.fail(ip + ("name",), f"header {name!r} is listed twice in `{key}`")
        seen.add(name.lower())


def _validate_tcp(check: FieldCheck, tcp: Json, tp: PathKey) -> None:
    check.unknown(tcp, tp, ("disabled", "send", "receive"))
    check.field(tcp, tp, "disabled", bool)
    send = check.field(tcp, tp, "send", str)
    if send is not None:
        _base64(check, send, tp + ("send",))
    receive = check.field(tcp, tp, "receive", list)
    for i, block in enumerate(receive or []):
        if not isinstance(block, str):
            check.fail(tp + ("receive", i), "must be a base64 string")
        else:
            _base64(check, block, tp + ("receive", i))


def _base64(check: FieldCheck, text: str, path: PathKey) -> None:
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        check.fail(path, f"must be base64-encoded bytes, got {text!r}")
        return
    if not decoded:
        check.fail(path, "must not be empty (Envoy needs at least one byte)")


def _integer(check: FieldCheck, obj: Json, path: PathKey, key: str, *, minimum: int, maximum: int) -> None:
    value = check.field(obj, path, key, int)
    if value is not None and not minimum <= value <= maximum:
        check.fail(path + (key,), f"must be between {minimum} and {maximum}, got {value}")


def _percent(check: FieldCheck, obj: Json, path: PathKey, key: str) -> None:
    if key not in obj or obj[key] is None:
        return
    value = as_decimal(obj[key])
    if value is None or not 0 <= value <= 100:
        check.fail(path + (key,), f"must be a percentage between 0 and 100 (a number or a decimal string like "
                                  f"\"99.9\"), got {obj[key]!r}")


def _absolute_path(check: FieldCheck, obj: Json, path: PathKey, key: str) -> None:
    value = check.field(obj, path, key, str)
    if value is not None and (not value.startswith("/") or "\x00" in value or "\n" in value):
        check.fail(path + (key,), f"must be an absolute file path, got {value!r}")


# --- rendering --------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    for point in build.outbounds:
        # For an external service only on the egress (the seed's placement, applied by match.result).
        merged = build.match.to(KIND, point.destination)
        if merged.empty:
            continue
        _configure_cluster(build, point.cluster, point.protocol, merged)


def _configure_cluster(build: ProxyBuild, cluster: Json, protocol: str, merged: Merged) -> None:
    conf = merged.conf
    if "healthyPanicThreshold" in conf or "failTrafficOnPanic" in conf:
        # Another policy (MeshCircuitBreaker) may already have started common_lb_config: add to it.
        lb = cluster.setdefault("common_lb_config", {})
        if "healthyPanicThreshold" in conf:
            value = float(as_decimal(conf["healthyPanicThreshold"]) or 0)
            build.set(lb, "healthy_panic_threshold", {"value": value}, origins_of(merged, "healthyPanicThreshold"))
        if "failTrafficOnPanic" in conf:
            zone = lb.setdefault("zone_aware_lb_config", {})
            panic = conf["failTrafficOnPanic"]
            build.set(zone, "fail_traffic_on_panic", panic, origins_of(merged, "failTrafficOnPanic"))
    checker = _checker(protocol, conf)
    if checker is None:
        return
    key, body, origin_keys = checker
    health_check = _health_check(build, merged)
    build.set(health_check, key, body, origins_of(merged, *origin_keys))
    everyone = sorted({str(c.origin()) for c in merged.contributions})
    build.set(cluster, "health_checks", [health_check], everyone)


def _health_check(build: ProxyBuild, merged: Merged) -> Json:
    """The checker-independent part, with Kuma's defaults; each field a policy wrote remembers who wrote it."""
    conf = merged.conf
    health_check: Json = {
        "timeout": DEFAULT_TIMEOUT,
        "interval": DEFAULT_INTERVAL,
        "unhealthy_threshold": DEFAULT_UNHEALTHY_THRESHOLD,
        "healthy_threshold": DEFAULT_HEALTHY_THRESHOLD,
    }
    fields = {
        "timeout": "timeout",
        "interval": "interval",
        "initialJitter": "initial_jitter",
        "intervalJitter": "interval_jitter",
        "noTrafficInterval": "no_traffic_interval",
    }
    for name, envoy in fields.items():
        if name in conf:
            build.set(health_check, envoy, proto_duration(conf[name]), origins_of(merged, name))
    scalars = {
        "unhealthyThreshold": "unhealthy_threshold",
        "healthyThreshold": "healthy_threshold",
        "intervalJitterPercent": "interval_jitter_percent",
        "reuseConnection": "reuse_connection",
        "alwaysLogHealthCheckFailures": "always_log_health_check_failures",
    }
    for name, envoy in scalars.items():
        if name in conf:
            build.set(health_check, envoy, conf[name], origins_of(merged, name))
    if "eventLogPath" in conf:
        sink = {"name": EVENT_SINK, "typed_config": {"@type": EVENT_SINK_TYPE, "event_log_path": conf["eventLogPath"]}}
        build.set(health_check, "event_logger", [sink], origins_of(merged, "eventLogPath"))
    return health_check


def _checker(protocol: str, conf: Json) -> tuple[str, Json, tuple[str, ...]] | None:
    """Kuma's choice of checker for the destination's protocol: (Envoy field, its value, conf keys it came from)."""

    def enabled(key: str) -> bool:
        return isinstance(conf.get(key), dict) and not conf[key].get("disabled", False)

    def disabled(key: str) -> bool:
        return isinstance(conf.get(key), dict) and bool(conf[key].get("disabled", False))

    if protocol in ("http", "http2"):
        if enabled("http"):
            return "http_health_check", _http(conf["http"], protocol), ("http",)
        if disabled("http") and enabled("tcp"):
            return "tcp_health_check", _tcp(conf["tcp"]), ("http.disabled", "tcp")
        return None
    if protocol == "grpc":
        if enabled("grpc"):
            return "grpc_health_check", _grpc(conf["grpc"]), ("grpc",)
        if disabled("grpc") and enabled("tcp"):
            return "tcp_health_check", _tcp(conf["tcp"]), ("grpc.disabled", "tcp")
        return None
    if enabled("tcp"):
        return "tcp_health_check", _tcp(conf["tcp"]), ("tcp",)
    return None


def _http(http: Json, protocol: str) -> Json:
    out: Json = {"path": http.get("path", DEFAULT_HTTP_PATH)}
    headers = http.get("requestHeadersToAdd") or {}
    added = [
        {"header": {"key": h["name"], "value": h["value"]}, "append_action": action}
        for key, action in (("add", "APPEND_IF_EXISTS_OR_ADD"), ("set", "OVERWRITE_IF_EXISTS_OR_ADD"))
        for h in headers.get(key) or []
    ]
    if added:
        out["request_headers_to_add"] = added
    if "expectedStatuses" in http:
        # Envoy takes half-open ranges [start, end).
        out["expected_statuses"] = [{"start": s, "end": s + 1} for s in http["expectedStatuses"]]
    if protocol == "http2":
        out["codec_client_type"] = "HTTP2"  # the upstream speaks HTTP/2 only; HTTP/1 is Envoy's default
    return out


def _tcp(tcp: Json) -> Json:
    out: Json = {}
    if "send" in tcp:
        out["send"] = {"text": _hex(tcp["send"])}
    if tcp.get("receive"):
        out["receive"] = [{"text": _hex(block)} for block in tcp["receive"]]
    return out


def _grpc(grpc: Json) -> Json:
    return {key: grpc[name] for name, key in (("serviceName", "service_name"), ("authority", "authority"))
            if grpc.get(name)}  # fmt: skip


def _hex(text: str) -> str:
    return base64.b64decode(text).hex().upper()
