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
are greater than zero and maxInterval is not below baseInterval (25ms when not given); rateLimitedBackOff has
resetHeaders, each with a name and a format (Seconds or UnixTimestamp); OmitHostsWithTags needs tags,
OmitPreviousPriorities an updateFrequency above zero and appears once.
"""

from __future__ import annotations

import re
from decimal import Decimal
from http import HTTPStatus
from typing import Any

from meshplan.envoy import types as t
from meshplan.load.resources import PathKey
from meshplan.match.matcher import Merged
from meshplan.policies.base import Json, ProxyBuild, origins_of, routes, tcp_proxy
from meshplan.validate.check import FieldCheck, proto_duration

KIND = "MeshRetry"
ORDER = 80  # run order on a proxy (registry.py): after MeshTimeout: per-try timeouts sit on the routes it configured

HTTP_RETRY_ON_DEFAULT = "gateway-error,connect-failure,refused-stream"
GRPC_RETRY_ON_DEFAULT = "cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable"
RETRIABLE_STATUS_CODES = "retriable-status-codes"
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
HEADER_MATCH_TYPES = ("Exact", "Present", "RegularExpression", "Absent", "Prefix")
PREDICATES = ("OmitPreviousHosts", "OmitHostsWithTags", "OmitPreviousPriorities")
# Kuma's header name rule (lower case, RFC 7230 token characters), plus HTTP/2 pseudo-headers such as `:authority`.
HEADER_NAME = re.compile(r"^:?[a-z0-9!#$%&'*+\-.^_`|~]{1,256}$")

PREVIOUS_HOSTS = (t.PREVIOUS_HOSTS_NAME, t.PREVIOUS_HOSTS)
OMIT_HOST_METADATA = (t.OMIT_HOST_METADATA_NAME, t.OMIT_HOST_METADATA)
PREVIOUS_PRIORITIES = (t.PREVIOUS_PRIORITIES_NAME, t.PREVIOUS_PRIORITIES)

SECTIONS = ("tcp", "http", "grpc")
COMMON_FIELDS = ("numRetries", "perTryTimeout", "backOff", "rateLimitedBackOff", "retryOn")
HTTP_FIELDS = COMMON_FIELDS + ("retriableResponseHeaders", "retriableRequestHeaders", "hostSelection",
                               "hostSelectionMaxAttempts")
UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1


# --- validation -----------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    check.unknown(default, path, SECTIONS)
    if not any(default.get(key) is not None for key in SECTIONS):
        check.fail(path, "at least one of `tcp`, `http`, `grpc` must be specified")
        return
    tcp = check.field(default, path, "tcp", dict)
    if tcp is not None:
        tpath = path + ("tcp",)
        check.unknown(tcp, tpath, ("maxConnectAttempt",))
        if tcp.get("maxConnectAttempt") is None:
            check.fail(tpath, "`maxConnectAttempt` is required")
        _uint(check, tcp, tpath, "maxConnectAttempt", minimum=1)
    http = check.field(default, path, "http", dict)
    if http is not None:
        _check_http(check, http, path + ("http",))
    grpc = check.field(default, path, "grpc", dict)
    if grpc is not None:
        _check_grpc(check, grpc, path + ("grpc",))


def _check_common(check: FieldCheck, conf: Json, path: PathKey, fields: tuple[str, ...]) -> None:
    check.unknown(conf, path, fields)
    if not any(conf.get(key) is not None for key in fields):
        check.fail(path, f"must not be empty: set at least one of {', '.join(fields)}")
    _uint(check, conf, path, "numRetries")
    check.duration(conf, path, "perTryTimeout")
    back_off = check.field(conf, path, "backOff", dict)
    if back_off is not None:
        bpath = path + ("backOff",)
        check.unknown(back_off, bpath, ("baseInterval", "maxInterval"))
        if back_off.get("baseInterval") is None and back_off.get("maxInterval") is None:
            check.fail(bpath, "must not be empty: set baseInterval, maxInterval or both")
        base = check.duration(back_off, bpath, "baseInterval", positive=True)
        most = check.duration(back_off, bpath, "maxInterval", positive=True)
        base_known = base is not None or back_off.get("baseInterval") is None  # a wrong one is already reported
        # Envoy rejects a max_interval below base_interval (whose default is 25ms).
        if most is not None and base_known and Decimal(most.rstrip("s")) < Decimal((base or DEFAULT_BASE_INTERVAL).rstrip("s")):
            check.fail(bpath + ("maxInterval",),
                       f"must not be less than baseInterval ({back_off.get('baseInterval') or '25ms'})")
    limited = check.field(conf, path, "rateLimitedBackOff", dict)
    if limited is not None:
        lpath = path + ("rateLimitedBackOff",)
        check.unknown(limited, lpath, ("resetHeaders", "maxInterval"))
        check.duration(limited, lpath, "maxInterval", positive=True)
        headers = check.field(limited, lpath, "resetHeaders", list)
        if headers is None:
            if "resetHeaders" not in limited or limited["resetHeaders"] is None:
                check.fail(lpath, "`resetHeaders` is required")
        elif not headers:
            check.fail(lpath + ("resetHeaders",), "must list at least one header")
        for i, header in enumerate(headers or []):
            hpath = lpath + ("resetHeaders", i)
            if not isinstance(header, dict):
                check.fail(hpath, "must be a mapping with `name` and `format`")
                continue
            check.unknown(header, hpath, ("name", "format"))
            _header_name(check, header, hpath)
            fmt = check.field(header, hpath, "format", str, required=True)
            if fmt is not None and fmt not in RESET_FORMATS:
                check.fail(hpath + ("format",), f"must be one of {', '.join(RESET_FORMATS)}, got {fmt!r}")


def _check_http(check: FieldCheck, http: Json, path: PathKey) -> None:
    _check_common(check, http, path, HTTP_FIELDS)
    for i, item in enumerate(check.field(http, path, "retryOn", list, default=[])):
        if not isinstance(item, (str, int)) or isinstance(item, bool) or _http_retry_on(item) is None:
            known = ", ".join(list(HTTP_RETRY_ON)[1:] + list(HTTP_METHODS))
            check.fail(path + ("retryOn", i), f"unknown item {item!r}: expected an HTTP status code or one of {known}")
    for key in ("retriableRequestHeaders", "retriableResponseHeaders"):
        for i, header in enumerate(check.field(http, path, key, list, default=[])):
            _check_header_match(check, header, path + (key, i))
    priorities = 0
    for i, predicate in enumerate(check.field(http, path, "hostSelection", list, default=[])):
        ppath = path + ("hostSelection", i)
        if not isinstance(predicate, dict):
            check.fail(ppath, "must be a mapping with a `predicate`")
            continue
        check.unknown(predicate, ppath, ("predicate", "tags", "updateFrequency"))
        kind = check.field(predicate, ppath, "predicate", str, required=True)
        if kind is not None and kind not in PREDICATES:
            check.fail(ppath + ("predicate",),
                       f"unknown predicate type {kind!r} (expected one of: {', '.join(PREDICATES)})")
        tags = check.tags(predicate, ppath, "tags", required=kind == "OmitHostsWithTags")
        if kind == "OmitHostsWithTags" and "tags" in predicate and not tags:
            check.fail(ppath + ("tags",), "must name at least one tag")
        if kind == "OmitPreviousPriorities":
            priorities += 1
            if priorities > 1:
                check.fail(ppath + ("predicate",), "OmitPreviousPriorities must only be specified once")
            if predicate.get("updateFrequency") is None:
                check.fail(ppath, "`updateFrequency` is required for OmitPreviousPriorities (greater than 0)")
            _uint(check, predicate, ppath, "updateFrequency", minimum=1, maximum=2**31 - 1)
        elif "updateFrequency" in predicate:
            check.fail(ppath + ("updateFrequency",), "only OmitPreviousPriorities takes an updateFrequency")
    _uint(check, http, path, "hostSelectionMaxAttempts", maximum=INT64_MAX)


def _check_grpc(check: FieldCheck, grpc: Json, path: PathKey) -> None:
    _check_common(check, grpc, path, COMMON_FIELDS)
    for i, item in enumerate(check.field(grpc, path, "retryOn", list, default=[])):
        if not isinstance(item, str) or item not in GRPC_RETRY_ON:
            check.fail(path + ("retryOn", i), f"unknown item {item!r}: expected one of {', '.join(GRPC_RETRY_ON)}")


def _check_header_match(check: FieldCheck, header: Any, path: PathKey) -> None:
    if not isinstance(header, dict):
        check.fail(path, "must be a mapping with `name`, and `type` and `value`")
        return
    check.unknown(header, path, ("type", "name", "value"))
    _header_name(check, header, path)
    kind = check.field(header, path, "type", str, default="Exact")
    if kind not in HEADER_MATCH_TYPES:
        check.fail(path + ("type",), f"must be one of {', '.join(HEADER_MATCH_TYPES)}, got {kind!r}")
        return
    value = check.field(header, path, "value", str)
    if kind in ("Prefix", "RegularExpression") and not value:
        check.fail(path, f"a {kind} match needs a non-empty `value`")
    elif kind in ("Present", "Absent") and value is not None:
        check.fail(path + ("value",), f"a {kind} match takes no value")


def _header_name(check: FieldCheck, header: Json, path: PathKey) -> None:
    name = check.field(header, path, "name", str, required=True)
    if name is not None and not HEADER_NAME.fullmatch(name):
        check.fail(path + ("name",), f"must be a lower-case HTTP header name (1 to 256 token characters), got {name!r}")


def _uint(check: FieldCheck, obj: Json, path: PathKey, key: str, *, minimum: int = 0,
          maximum: int = UINT32_MAX) -> int | None:
    value = check.field(obj, path, key, int)
    if value is not None and not minimum <= value <= maximum:
        check.fail(path + (key,), f"must be between {minimum} and {maximum}, got {value}")
        return None
    return value  # type: ignore[no-any-return]


def _http_retry_on(item: str | int) -> tuple[str, str] | None:
    """What one `retryOn` item is: ("on", condition), ("status", code) or ("method", METHOD); None if nothing."""
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


# --- rendering ------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    # The seed: MeshRetry is implemented on the sidecar only (match.result applies the placement).
    for out in build.outbounds:
        merged = build.match.to(KIND, out.destination)
        if merged.empty:
            continue
        if out.protocol == "tcp":
            tcp = merged.conf.get("tcp") or {}
            proxy = tcp_proxy(out.chain)
            if proxy is not None and "maxConnectAttempt" in tcp:
                build.set(proxy, "max_connect_attempts", tcp["maxConnectAttempt"],
                          origins_of(merged, "tcp.maxConnectAttempt"))
            continue
        section = "grpc" if out.protocol == "grpc" else "http"
        if merged.conf.get(section) is None:
            continue
        for route in routes(out.chain):
            action = route.get("route")
            if action is None:
                continue  # redirects and direct responses are never retried
            _configure_route(build, merged, section, action)


def _configure_route(build: ProxyBuild, merged: Merged, section: str, action: Json) -> None:
    conf: dict[str, Any] = merged.conf[section]
    if conf.get("numRetries") == 0:
        action.pop("retry_policy", None)  # as Kuma: zero retries means no retry policy at all
        return

    def origins(*keys: str) -> list[str]:
        return origins_of(merged, *(f"{section}.{key}" for key in keys))

    policy: Json = {}
    action["retry_policy"] = policy
    retry_on, codes, methods = _split_retry_on(conf.get("retryOn") or [], section)
    default_on = GRPC_RETRY_ON_DEFAULT if section == "grpc" else HTTP_RETRY_ON_DEFAULT
    if codes:
        retry_on = (retry_on or [default_on]) + [RETRIABLE_STATUS_CODES]
    # The default conditions are there because a section applies: they belong to whoever wrote the section.
    build.set(policy, "retry_on", ",".join(retry_on) if retry_on else default_on,
              origins("retryOn") if retry_on else _written_by(merged, (section,)))
    if "numRetries" in conf:
        build.set(policy, "num_retries", conf["numRetries"], origins("numRetries"))
    if "perTryTimeout" in conf:
        build.set(policy, "per_try_timeout", proto_duration(conf["perTryTimeout"]), origins("perTryTimeout"))
    back_off = conf.get("backOff")
    if back_off:
        envoy_back_off: Json = {}
        if "baseInterval" in back_off:
            build.set(envoy_back_off, "base_interval", proto_duration(back_off["baseInterval"]),
                      origins("backOff.baseInterval"))
        else:  # Envoy requires a base interval; Kuma's default
            build.set(envoy_back_off, "base_interval", DEFAULT_BASE_INTERVAL, _written_by(merged, (section, "backOff")))
        if "maxInterval" in back_off:
            build.set(envoy_back_off, "max_interval", proto_duration(back_off["maxInterval"]),
                      origins("backOff.maxInterval"))
        policy["retry_back_off"] = envoy_back_off
    limited = conf.get("rateLimitedBackOff")
    if limited:
        envoy_limited: Json = {}
        build.set(envoy_limited, "reset_headers",
                  [{"name": h["name"], "format": RESET_FORMATS[h["format"]]} for h in limited.get("resetHeaders", [])],
                  origins("rateLimitedBackOff.resetHeaders"))
        if "maxInterval" in limited:
            build.set(envoy_limited, "max_interval", proto_duration(limited["maxInterval"]),
                      origins("rateLimitedBackOff.maxInterval"))
        policy["rate_limited_retry_back_off"] = envoy_limited
    if codes:
        build.set(policy, "retriable_status_codes", [int(code) for code in codes], origins("retryOn"))
    request_headers = [_method_matcher(m) for m in methods] + [_header_matcher(h) for h in
                                                                conf.get("retriableRequestHeaders") or []]
    if request_headers:
        build.set(policy, "retriable_request_headers", request_headers,
                  origins("retryOn", "retriableRequestHeaders") if methods else origins("retriableRequestHeaders"))
    if conf.get("retriableResponseHeaders"):
        build.set(policy, "retriable_headers", [_header_matcher(h) for h in conf["retriableResponseHeaders"]],
                  origins("retriableResponseHeaders"))
    _host_selection(build, policy, conf.get("hostSelection") or [], origins("hostSelection"))
    if "hostSelectionMaxAttempts" in conf:
        build.set(policy, "host_selection_retry_max_attempts", str(conf["hostSelectionMaxAttempts"]),
                  origins("hostSelectionMaxAttempts"))


def _written_by(merged: Merged, path: tuple[str, ...]) -> list[str]:
    """The policies that wrote a block of the conf (at the block's line): for what its presence alone decides."""
    found = set()
    for c in merged.contributions:
        node: Any = c.item.default
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            found.add(str(c.origin(path)))
    return sorted(found)


def _split_retry_on(items: list[Any], section: str) -> tuple[list[str], list[str], list[str]]:
    if section == "grpc":
        return list(dict.fromkeys(GRPC_RETRY_ON[item] for item in items)), [], []
    on: list[str] = []
    codes: list[str] = []
    methods: list[str] = []
    for item in items:
        found = _http_retry_on(item)
        assert found is not None, f"unvalidated retryOn item {item!r}"
        kind, value = found
        {"on": on, "status": codes, "method": methods}[kind].append(value)
    # `5xx` and `5XX` are one condition; Envoy takes each once.
    return list(dict.fromkeys(on)), list(dict.fromkeys(codes)), list(dict.fromkeys(methods))


def _method_matcher(method: str) -> Json:
    return {"name": ":method", "string_match": {"exact": method}}


def _header_matcher(header: Json) -> Json:
    kind = header.get("type", "Exact")
    matcher: Json = {"name": header["name"]}
    if kind == "Present":
        matcher["present_match"] = True
    elif kind == "Absent":
        matcher["present_match"] = False
    elif kind == "Prefix":
        matcher["string_match"] = {"prefix": header["value"]}
    elif kind == "RegularExpression":
        matcher["string_match"] = {"safe_regex": {"regex": header["value"]}}
    else:
        matcher["string_match"] = {"exact": header.get("value", "")}
    return matcher


def _host_selection(build: ProxyBuild, policy: Json, predicates: list[Json], origins: list[str]) -> None:
    host_predicates: list[Json] = []
    for predicate in predicates:
        kind = predicate["predicate"]
        if kind == "OmitPreviousHosts":
            host_predicates.append(_typed(*PREVIOUS_HOSTS, {}))
        elif kind == "OmitHostsWithTags":
            # Envoy matches the tags against each endpoint's `envoy.lb` metadata.
            metadata = {"filter_metadata": {t.LB_METADATA: dict(predicate["tags"])}}
            host_predicates.append(_typed(*OMIT_HOST_METADATA, {"metadata_match": metadata}))
        else:
            build.set(policy, "retry_priority",
                      _typed(*PREVIOUS_PRIORITIES, {"update_frequency": predicate["updateFrequency"]}), origins)
    if host_predicates:
        build.set(policy, "retry_host_predicate", host_predicates, origins)


def _typed(name: str, type_url: str, config: Json) -> Json:
    return {"name": name, "typed_config": {"@type": type_url, **config}}
