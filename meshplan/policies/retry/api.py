"""MeshRetry: retries of failed requests (HTTP, gRPC) and connection attempts (TCP), outbound only.

Where (the seed's placement table): on sidecars only, for mesh services and external services alike; never on the
egress (retries there would multiply with the sidecar's). The outbound's protocol picks the section: `http` for
http and http2 (Kuma: http only), `grpc` for gRPC, `tcp` for TCP; a section for another protocol does nothing.

Policy field -> Envoy field (proto names), on every route of the outbound's filter chain that forwards (`route`):

    http|grpc.numRetries            route.retry_policy.num_retries (0 removes the retry policy: no retries)
    http|grpc.perTryTimeout         retry_policy.per_try_timeout
    http|grpc.backOff               retry_policy.retry_back_off {base_interval, max_interval}
    http|grpc.rateLimitedBackOff    retry_policy.rate_limited_retry_back_off {reset_headers[{name, format}], max_interval}
    http.retryOn                    conditions -> retry_policy.retry_on (comma-separated, Envoy's spelling);
                                    status codes -> retriable_status_codes (and `retriable-status-codes` in retry_on);
                                    HttpMethod<M> -> retriable_request_headers `:method` exact <M>
    grpc.retryOn                    retry_policy.retry_on (cancelled, deadline-exceeded, internal, ...)
    http.retriableRequestHeaders    retry_policy.retriable_request_headers[] (HeaderMatcher)
    http.retriableResponseHeaders   retry_policy.retriable_headers[] (HeaderMatcher)
    http.hostSelection              OmitPreviousHosts -> retry_host_predicate previous_hosts;
                                    OmitHostsWithTags -> retry_host_predicate omit_host_metadata (envoy.lb tags);
                                    OmitPreviousPriorities -> retry_priority previous_priorities {update_frequency}
    http.hostSelectionMaxAttempts   retry_policy.host_selection_retry_max_attempts
    tcp.maxConnectAttempt           tcp_proxy.max_connect_attempts

Defaults (Kuma's): when a section applies and retryOn gives no condition, retry_on is
`gateway-error,connect-failure,refused-stream` for HTTP and
`cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable` for gRPC
(Kuma spells the first `canceled`, which Envoy does not know); a backOff without baseInterval gets 25ms, since Envoy
requires one. Otherwise only what the merged conf holds is set: Envoy's defaults are 1 retry and no per-try
timeout. A header match without `type` is Exact. Kuma's own default MeshRetry (5 retries, 16s per try) is a policy
Kuma creates in every new mesh; meshplan creates none.

Validation (as Kuma): a `default` has at least one of tcp, http, grpc, none of them empty; tcp.maxConnectAttempt is
at least 1; retryOn items are the documented conditions or HTTP status codes; backOff is not empty, its intervals
are greater than zero and maxInterval is not below baseInterval (25ms when not given; in each item: two items
may still merge to a backOff Envoy refuses, which is rendered as it is); rateLimitedBackOff has
resetHeaders, each with a name and a format (Seconds or UnixTimestamp); OmitHostsWithTags needs tags,
OmitPreviousPriorities an updateFrequency above zero and appears once; a `to` item may not select a MeshSubset or
MeshServiceSubset (validate/policy_rules.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from typing import Any, TypeVar

from meshplan.load.resources import PathKey
from meshplan.policies import SIDECAR_TO, TO, placement_row
from meshplan.policies.base import Json
from meshplan.policies.conf import HEADER_MATCH_TYPES, ConfReader, HeaderMatch, Setting
from meshplan.validate.check import FieldCheck

KIND = "MeshRetry"
PLACEMENT = placement_row(KIND, {TO}, {"sidecar"}, False, SIDECAR_TO)  # the seed's placement table, for external services

DEFAULT_BASE_INTERVAL = "0.025s"

HTTP_RETRY_ON = {
    "5xx": "5xx",
    "5XX": "5xx",  # Kuma's docs spell it so, its code the other way
    "GatewayError": "gateway-error",
    "Reset": "reset",
    "Retriable4xx": "retriable-4xx",
    "ConnectFailure": "connect-failure",
    "EnvoyRatelimited": "envoy-ratelimited",
    "RefusedStream": "refused-stream",
    "Http3PostConnectFailure": "http3-post-connect-failure",
}
# HttpMethodGet -> GET: only requests with these methods are retried.
HTTP_METHODS = {f"HttpMethod{m.title()}": m for m in ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST",
                                                       "PUT", "TRACE")}
GRPC_RETRY_ON = {
    "Canceled": "cancelled",
    "DeadlineExceeded": "deadline-exceeded",
    "Internal": "internal",
    "ResourceExhausted": "resource-exhausted",
    "Unavailable": "unavailable",
}
RESET_FORMATS = {"Seconds": "SECONDS", "UnixTimestamp": "UNIX_TIMESTAMP"}
PREDICATES = ("OmitPreviousHosts", "OmitHostsWithTags", "OmitPreviousPriorities")
# Kuma's header name rule (lower case, RFC 7230 token characters), plus HTTP/2 pseudo-headers such as `:authority`.
HEADER_NAME = re.compile(r"^:?[a-z0-9!#$%&'*+\-.^_`|~]{1,256}$")


SECTIONS = ("tcp", "http", "grpc")
COMMON_FIELDS = ("numRetries", "perTryTimeout", "backOff", "rateLimitedBackOff", "retryOn")
HTTP_FIELDS = COMMON_FIELDS + ("retriableResponseHeaders", "retriableRequestHeaders", "hostSelection",
                               "hostSelectionMaxAttempts")
UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1

T = TypeVar("T")


# --- the conf -------------------------------------------------------------------------------------------------

RetryOn = tuple[str, str]  # ("on", Envoy's condition), ("status", code) or ("method", METHOD)


@dataclass(frozen=True)
class ResetHeader:
    name: str
    format: str  # Envoy's: SECONDS | UNIX_TIMESTAMP


@dataclass(frozen=True)
class HostPredicate:
    predicate: str  # one of PREDICATES
    tags: dict[str, str]  # OmitHostsWithTags
    update_frequency: int | None  # OmitPreviousPriorities


@dataclass(frozen=True)
class BackOff:
    base_interval: Setting[str] | None  # the durations as Envoy writes them (`1s`, `0.025s`)
    max_interval: Setting[str] | None
    written_by: tuple[str, ...]  # who wrote the block: the origins of the default base interval


@dataclass(frozen=True)
class RateLimitedBackOff:
    reset_headers: Setting[tuple[ResetHeader, ...]] | None
    max_interval: Setting[str] | None


@dataclass(frozen=True)
class Retry:
    """The `http` or `grpc` section (the last four fields are http's only)."""

    num_retries: Setting[int] | None
    per_try_timeout: Setting[str] | None
    back_off: BackOff | None
    rate_limited_back_off: RateLimitedBackOff | None
    retry_on: Setting[tuple[RetryOn, ...]] | None
    retriable_request_headers: Setting[tuple[HeaderMatch, ...]] | None
    retriable_response_headers: Setting[tuple[HeaderMatch, ...]] | None
    host_selection: Setting[tuple[HostPredicate, ...]] | None
    host_selection_max_attempts: Setting[int] | None
    written_by: tuple[str, ...]  # who wrote the section: the origins of the default conditions


@dataclass(frozen=True)
class Tcp:
    max_connect_attempt: Setting[int] | None


@dataclass(frozen=True)
class Conf:
    tcp: Tcp | None
    http: Retry | None
    grpc: Retry | None


def parse(conf: ConfReader) -> Conf | None:
    """A `default` (or what several merged to): None, with a violation, when it sets no section."""
    conf.unknown(SECTIONS)
    if not any(conf.has(key) for key in SECTIONS):
        conf.fail("at least one of `tcp`, `http`, `grpc` must be specified")
        return None
    return Conf(conf.section("tcp", _parse_tcp), conf.section("http", _parse_http), conf.section("grpc", _parse_grpc))


def _parse_tcp(tcp: ConfReader) -> Tcp:
    tcp.unknown(("maxConnectAttempt",))
    if not tcp.has("maxConnectAttempt"):
        tcp.fail("`maxConnectAttempt` is required")
    return Tcp(tcp.integer("maxConnectAttempt", minimum=1, maximum=UINT32_MAX))


def _parse_http(http: ConfReader) -> Retry:
    return _parse_retry(http, HTTP_FIELDS)


def _parse_grpc(grpc: ConfReader) -> Retry:
    return _parse_retry(grpc, COMMON_FIELDS)


def _parse_retry(conf: ConfReader, fields: tuple[str, ...]) -> Retry:
    conf.unknown(fields)
    if not any(conf.has(key) for key in fields):
        conf.fail(f"must not be empty: set at least one of {', '.join(fields)}")
    num_retries = conf.integer("numRetries", maximum=UINT32_MAX)
    per_try_timeout = conf.duration("perTryTimeout")
    back_off = conf.section("backOff", _parse_back_off)
    limited = conf.section("rateLimitedBackOff", _parse_rate_limited)
    if fields != HTTP_FIELDS:  # grpc
        retry_on = conf.items("retryOn", _grpc_retry_on,
                              lambda item: f"unknown item {item!r}: expected one of {', '.join(GRPC_RETRY_ON)}")
        return Retry(num_retries, per_try_timeout, back_off, limited, retry_on, None, None, None, None,
                     conf.written_by())
    known = ", ".join(list(HTTP_RETRY_ON)[1:] + list(HTTP_METHODS))
    retry_on = conf.items("retryOn", _http_retry_on,
                          lambda item: f"unknown item {item!r}: expected an HTTP status code or one of {known}")
    not_mapping = "must be a mapping with `name`, and `type` and `value`"
    request_headers = conf.entries("retriableRequestHeaders", _parse_header_match, not_a_mapping=not_mapping)
    response_headers = conf.entries("retriableResponseHeaders", _parse_header_match, not_a_mapping=not_mapping)
    priorities = 0

    def predicate(p: ConfReader) -> HostPredicate | None:
        nonlocal priorities
        p.unknown(("predicate", "tags", "updateFrequency"))
        kind = _value(p.text("predicate", required=True))
        if kind is not None and kind not in PREDICATES:
            p.fail(f"unknown predicate type {kind!r} (expected one of: {', '.join(PREDICATES)})", "predicate")
        tags = p.tags("tags", required=kind == "OmitHostsWithTags")
        if kind == "OmitHostsWithTags" and "tags" in p.raw and not (tags and tags.value):
            p.fail("must name at least one tag", "tags")
        frequency = None
        if kind == "OmitPreviousPriorities":
            priorities += 1
            if priorities > 1:
                p.fail("OmitPreviousPriorities must only be specified once", "predicate")
            if not p.has("updateFrequency"):
                p.fail("`updateFrequency` is required for OmitPreviousPriorities (greater than 0)")
            frequency = _value(p.integer("updateFrequency", minimum=1, maximum=2**31 - 1))
        elif "updateFrequency" in p.raw:
            p.fail("only OmitPreviousPriorities takes an updateFrequency", "updateFrequency")
        if kind is None or kind not in PREDICATES:
            return None
        return HostPredicate(kind, dict(tags.value) if tags else {}, frequency)

    host_selection = conf.entries("hostSelection", predicate, not_a_mapping="must be a mapping with a `predicate`")
    max_attempts = conf.integer("hostSelectionMaxAttempts", maximum=INT64_MAX)
    return Retry(num_retries, per_try_timeout, back_off, limited, retry_on, request_headers, response_headers,
                 host_selection, max_attempts, conf.written_by())


def _parse_back_off(back_off: ConfReader) -> BackOff:
    back_off.unknown(("baseInterval", "maxInterval"))
    if not back_off.has("baseInterval") and not back_off.has("maxInterval"):
        back_off.fail("must not be empty: set baseInterval, maxInterval or both")
    base = back_off.duration("baseInterval", positive=True)
    most = back_off.duration("maxInterval", positive=True)
    base_known = base is not None or not back_off.has("baseInterval")  # a wrong one is already reported
    # Envoy rejects a max_interval below base_interval (whose default is 25ms). Checked on each item only: a merged
    # conf may take the two from different items, and is rendered as it is (as before the typed conf).
    if (back_off.validating and most is not None and base_known
            and Decimal(most.value.rstrip("s")) < Decimal((base.value if base else DEFAULT_BASE_INTERVAL).rstrip("s"))):
        back_off.fail(f"must not be less than baseInterval ({back_off.raw.get('baseInterval') or '25ms'})",
                      "maxInterval")
    return BackOff(base, most, back_off.written_by())


def _parse_rate_limited(limited: ConfReader) -> RateLimitedBackOff:
    limited.unknown(("resetHeaders", "maxInterval"))
    most = limited.duration("maxInterval", positive=True)
    if not limited.has("resetHeaders"):
        limited.fail("`resetHeaders` is required")
    elif limited.raw["resetHeaders"] == []:
        limited.fail("must list at least one header", "resetHeaders")
    headers = limited.entries("resetHeaders", _parse_reset_header, not_a_mapping="must be a mapping with `name` and `format`")
    return RateLimitedBackOff(headers, most)


def _parse_reset_header(header: ConfReader) -> ResetHeader | None:
    header.unknown(("name", "format"))
    name = _header_name(header)
    if not header.has("format"):
        header.fail("`format` is required")
    fmt = header.choice("format", tuple(RESET_FORMATS))
    if name is None or fmt is None:
        return None
    return ResetHeader(name, RESET_FORMATS[fmt.value])


def _parse_header_match(header: ConfReader) -> HeaderMatch | None:
    header.unknown(("type", "name", "value"))
    name = _header_name(header)
    kind = header.choice("type", HEADER_MATCH_TYPES)
    if kind is None and isinstance(header.raw.get("type"), str):
        return None  # an unknown type (reported); one that is not a string is reported and read as Exact
    match_type = kind.value if kind else "Exact"
    value = _value(header.text("value"))
    if match_type in ("Prefix", "RegularExpression") and not value:
        header.fail(f"a {match_type} match needs a non-empty `value`")
    elif match_type in ("Present", "Absent") and value is not None:
        header.fail(f"a {match_type} match takes no value", "value")
    return None if name is None else HeaderMatch(name, match_type, value)


def _header_name(header: ConfReader) -> str | None:
    name = _value(header.text("name", required=True))
    if name is not None and not HEADER_NAME.fullmatch(name):
        header.fail(f"must be a lower-case HTTP header name (1 to 256 token characters), got {name!r}", "name")
        return None
    return name


def _value(setting: Setting[T] | None) -> T | None:
    return None if setting is None else setting.value


def _http_retry_on(item: Any) -> RetryOn | None:
    """What one http `retryOn` item is: ("on", condition), ("status", code) or ("method", METHOD); None if nothing."""
    if not isinstance(item, (str, int)) or isinstance(item, bool):
        return None
    text = str(item)
    if text in HTTP_RETRY_ON:
        return "on", HTTP_RETRY_ON[text]
    if text in HTTP_METHODS:
        return "method", HTTP_METHODS[text]
    if text.isdigit():
        try:
            HTTPStatus(int(text))
        except ValueError:
            return None
        return "status", text
    return None


def _grpc_retry_on(item: Any) -> RetryOn | None:
    if not isinstance(item, str) or item not in GRPC_RETRY_ON:
        return None
    return "on", GRPC_RETRY_ON[item]


# --- validation -----------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    parse(ConfReader(default, path, check))
