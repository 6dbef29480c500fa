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
                                          (an empty authority is unset, as Kuma: Envoy sends the cluster's name)
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

One `parse(reader)` reads a `default` (for `validate`, every violation at its path) and a merged conf alike, into the
frozen `Conf` dataclasses, converting once (durations to Envoy's form, base64 payloads to hex); rendering reads
those, with the policies that set each value, never the raw dict.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from meshplan.load.resources import PathKey
from meshplan.policies import EGRESS_TO, TO, placement_row
from meshplan.policies.base import Json
from meshplan.policies.conf import ConfReader, Header, Setting
from meshplan.validate.check import FieldCheck

KIND = "MeshHealthCheck"
PLACEMENT = placement_row(KIND, {TO}, {"egress"}, False, EGRESS_TO)  # the seed's placement table, for external services


# Envoy keeps thresholds in a UInt32Value.
MAX_UINT32 = 2**32 - 1
MAX_HEADERS = 16  # per list, as Kuma's CRD
# RFC 9110 token; Envoy refuses pseudo-headers (`:path`) and `host` among headers to add.
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


# --- the conf ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpCheck:
    disabled: Setting[bool] | None
    path: Setting[str] | None
    expected_statuses: Setting[tuple[int, ...]] | None
    add_headers: Setting[tuple[Header, ...]] | None  # requestHeadersToAdd.add: appended
    set_headers: Setting[tuple[Header, ...]] | None  # requestHeadersToAdd.set: overwritten


@dataclass(frozen=True)
class TcpCheck:
    disabled: Setting[bool] | None
    send: Setting[str] | None  # the decoded bytes, hex-encoded as Envoy's payload text
    receive: Setting[tuple[str, ...]] | None  # likewise, block by block


@dataclass(frozen=True)
class GrpcCheck:
    disabled: Setting[bool] | None
    service_name: Setting[str] | None
    authority: Setting[str] | None


Checker = HttpCheck | TcpCheck | GrpcCheck


@dataclass(frozen=True)
class Conf:
    interval: Setting[str] | None  # the durations as Envoy writes them
    timeout: Setting[str] | None
    initial_jitter: Setting[str] | None
    interval_jitter: Setting[str] | None
    no_traffic_interval: Setting[str] | None
    unhealthy_threshold: Setting[int] | None
    healthy_threshold: Setting[int] | None
    interval_jitter_percent: Setting[int] | None
    healthy_panic_threshold: Setting[float] | None
    fail_traffic_on_panic: Setting[bool] | None
    always_log_health_check_failures: Setting[bool] | None
    reuse_connection: Setting[bool] | None
    event_log_path: Setting[str] | None
    http: Setting[HttpCheck] | None  # origins: whoever set anything in the section, `{}` included
    tcp: Setting[TcpCheck] | None
    grpc: Setting[GrpcCheck] | None
    written_by: tuple[str, ...]  # every policy merged: the health check as a whole is theirs


_FIELDS = (
    "interval", "timeout", "unhealthyThreshold", "healthyThreshold", "initialJitter", "intervalJitter",
    "intervalJitterPercent", "healthyPanicThreshold", "failTrafficOnPanic", "eventLogPath",
    "alwaysLogHealthCheckFailures", "noTrafficInterval", "tcp", "http", "grpc", "reuseConnection",
)  # fmt: skip
_DURATIONS = ("interval", "timeout", "initialJitter", "intervalJitter", "noTrafficInterval")
_THRESHOLDS = ("unhealthyThreshold", "healthyThreshold")
_BOOLEANS = ("failTrafficOnPanic", "alwaysLogHealthCheckFailures", "reuseConnection")
_CHECKERS = ("http", "tcp", "grpc")


def parse(conf: ConfReader) -> Conf:
    """A `default` (or what several merged to). An item names a checker; a merged conf may have lost them all to
    nulls, and then sets only the panic settings."""
    conf.unknown(_FIELDS)
    interval, timeout, initial_jitter, interval_jitter, no_traffic_interval = (
        conf.duration(key, positive=True) for key in _DURATIONS)
    unhealthy_threshold, healthy_threshold = (conf.integer(key, minimum=1, maximum=MAX_UINT32) for key in _THRESHOLDS)
    interval_jitter_percent = conf.integer("intervalJitterPercent", minimum=0, maximum=100)
    panic = conf.percent("healthyPanicThreshold")
    fail_traffic_on_panic, always_log, reuse_connection = (conf.boolean(key) for key in _BOOLEANS)
    event_log_path = _absolute_path(conf, "eventLogPath")
    if conf.validating and not any(key in conf.raw for key in _CHECKERS):
        conf.fail("must have at least one of `http`, `tcp` or `grpc`: the health check to run")
    return Conf(interval, timeout, initial_jitter, interval_jitter, no_traffic_interval, unhealthy_threshold,
                healthy_threshold, interval_jitter_percent,
                None if panic is None else Setting(float(panic.value or 0), panic.origins),  # -0 as 0
                fail_traffic_on_panic, always_log, reuse_connection, event_log_path,
                conf.section_setting("http", _parse_http), conf.section_setting("tcp", _parse_tcp),
                conf.section_setting("grpc", _parse_grpc), conf.written_by())


def _parse_http(http: ConfReader) -> HttpCheck:
    http.unknown(("disabled", "path", "requestHeadersToAdd", "expectedStatuses"))
    disabled = http.boolean("disabled")
    request_path = http.text("path")
    if request_path is not None and not request_path.value.startswith("/"):
        http.fail(f"must be an HTTP path starting with `/`, got {request_path.value!r}", "path")
        request_path = None
    statuses = http.list_of("expectedStatuses", _status)
    headers = http.section("requestHeadersToAdd", _parse_headers)
    return HttpCheck(disabled, request_path, statuses, *(headers or (None, None)))


def _status(status: Any, at: ConfReader) -> int | None:
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        at.fail(f"must be an HTTP status code between 100 and 599, got {status!r}")
        return None
    return status


def _parse_headers(headers: ConfReader) -> tuple[Setting[tuple[Header, ...]] | None, Setting[tuple[Header, ...]] | None]:
    headers.unknown(("add", "set"))
    add, set_ = (_header_list(headers, key) for key in ("add", "set"))
    return add, set_


def _header_list(headers: ConfReader, key: str) -> Setting[tuple[Header, ...]] | None:
    written = headers.raw.get(key)
    if isinstance(written, list) and len(written) > MAX_HEADERS:
        headers.fail(f"at most {MAX_HEADERS} headers, got {len(written)}", key)
    seen: set[str] = set()

    def header(item: Any, at: ConfReader) -> Header | None:
        if not isinstance(item, dict):
            at.fail("must be a mapping with `name` and `value`")
            return None
        at.unknown(("name", "value"))
        name = at.text("name", required=True)
        value = at.text("value", required=True)
        if name is None:
            return None
        lowered = name.value.lower()
        if not HEADER_NAME.fullmatch(name.value) or lowered == "host":
            at.fail(f"must be an HTTP header name (not a pseudo-header or `host`), got {name.value!r}", "name")
            name = None
        elif lowered in seen:
            at.fail(f"header {name.value!r} is listed twice in `{key}`", "name")
            name = None
        seen.add(lowered)
        return None if name is None or value is None else Header(name.value, value.value)

    return headers.list_of(key, header)


def _parse_tcp(tcp: ConfReader) -> TcpCheck:
    tcp.unknown(("disabled", "send", "receive"))
    disabled = tcp.boolean("disabled")
    send = tcp.text("send")
    send_hex = None if send is None else _hex(send.value, tcp, "send")

    def block(written: Any, at: ConfReader) -> str | None:
        if not isinstance(written, str):
            at.fail("must be a base64 string")
            return None
        return _hex(written, at)

    return TcpCheck(disabled, None if send is None or send_hex is None else Setting(send_hex, send.origins),
                    tcp.list_of("receive", block))


def _hex(text: str, at: ConfReader, key: str | None = None) -> str | None:
    """Base64 text as the hex of its bytes, Envoy's payload text; None, with a violation, if it is not base64."""
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        at.fail(f"must be base64-encoded bytes, got {text!r}", key)
        return None
    if not decoded:
        at.fail("must not be empty (Envoy needs at least one byte)", key)
        return None
    return decoded.hex().upper()


def _parse_grpc(grpc: ConfReader) -> GrpcCheck:
    grpc.unknown(("disabled", "serviceName", "authority"))
    disabled = grpc.boolean("disabled")
    service_name = grpc.text("serviceName")
    authority = grpc.text("authority")
    if authority is not None and not authority.value.strip():
        authority = None  # as Kuma: an empty authority is unset, and Envoy then sends the cluster's name
    return GrpcCheck(disabled, service_name, authority)


def _absolute_path(conf: ConfReader, key: str) -> Setting[str] | None:
    value = conf.text(key)
    if value is not None and (not value.value.startswith("/") or "\x00" in value.value or "\n" in value.value):
        conf.fail(f"must be an absolute file path, got {value.value!r}", key)
        return None
    return value


# --- validation -------------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    parse(ConfReader(default, path, check))
