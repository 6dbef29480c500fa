"""MeshRateLimit (`from`): a local token bucket on an inbound, for HTTP requests and for TCP connections.

Where: every sidecar inbound the top-level targetRef selects, and on the egress the filter chain of one external
service (top-level `kind: MeshExternalService`, `proxyType: ["Egress"]`: the seed's placement table, chosen so that
the limit does not multiply with the number of client instances: on the egress one bucket serves every client).

Fields of `from[].default` (as Kuma's MeshRateLimit):
    local:                                   required; `http`, `tcp` or both
      http:                                  at least one of disabled, requestRate, onRateLimit
        disabled: bool                       default false; true removes the limit for these clients
        requestRate: {num, interval}         num 1..4294967295 requests per interval (> 50ms, Go duration)
        onRateLimit:
          status: int                        default 429 (Envoy's); 400..599, one of Envoy's StatusCode values
          headers: {set: [{name, value}], add: [{name, value}]}   at most 16 each, names lower-case tokens
      tcp:                                   only in a `from` item of kind Mesh (see below)
        disabled: bool                       default false
        connectionRate: {num, interval}      connections per interval

Envoy: `local.http` becomes `envoy.filters.http.local_ratelimit` in the inbound's HTTP connection manager, before
the router: `token_bucket {max_tokens: num, tokens_per_fill: num, fill_interval: interval}`, `filter_enabled` and
`filter_enforced` 100%, `status {code}`, `response_headers_to_add` (`set`: OVERWRITE_IF_EXISTS_OR_ADD, `add`:
APPEND_IF_EXISTS_OR_ADD), stats under `<inbound>.rate_limit.<clients>.http_local_rate_limit.*`. A rule without a
`requestRate`, or with `disabled: true`, sets no limit. `local.tcp` becomes `envoy.filters.network.local_ratelimit`
before the chain's terminal filter, on HTTP and TCP inbounds alike (a connection is a connection), stats under
`<inbound>.tcp_rate_limit`.

Clients: every `from` rule (a client subset, most specific first, first match: match.merge_from) gets its own
filter and so its own bucket, shared by all the clients that take that rule; the filter of a rule for some clients
is wrapped in an ExtensionWithMatcher that skips it for every other client, on the peer certificate's URI SANs
(policies/clients.py). So `from: Mesh` alone is one bucket for the whole inbound (or external service), and adding
`from: MeshService web` gives web a bucket of its own while every other client keeps sharing the Mesh one.
A TCP connection is counted when it is accepted, before the TLS handshake that names its client, so a connection
rate cannot depend on the client: validation allows `local.tcp` only in a `from` item of kind Mesh (Kuma rejects it
for any client-conditioned rule for the same reason), and only the rule for every client sets it.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from meshplan.envoy.types import HTTP_LOCAL_RATE_LIMIT, NETWORK_LOCAL_RATE_LIMIT
from meshplan.envoy.types import HTTP_LOCAL_RATE_LIMIT_NAME as HTTP_FILTER
from meshplan.envoy.types import NETWORK_LOCAL_RATE_LIMIT_NAME as NETWORK_FILTER
from meshplan.load.resources import PathKey
from meshplan.match.matcher import FromRule
from meshplan.policies.base import Json, ProxyBuild, hcm, insert_http_filter, origins_of
from meshplan.policies.clients import (
    first_match,
    http_filter_for,
    insert_network_filter,
    label,
    mesh_of,
    rule_clients,
    stat_label,
    stat_scope,
)
from meshplan.validate.check import FieldCheck, duration_json, parse_duration

KIND = "MeshRateLimit"
ORDER = 50  # run order on a proxy (registry.py): after RBAC: a request or connection that is not permitted takes no token

MIN_INTERVAL = Decimal("0.05")  # Kuma: an interval must be greater than 50ms (Envoy refuses a fill below 50ms)
MAX_UINT32 = 2**32 - 1
MAX_HEADERS = 16  # Kuma's limit per list
# Envoy's envoy.type.v3.StatusCode values from 400 on: `status.code` must be one of them, and Envoy answers 429 in
# place of anything below 400.
STATUS_CODES = frozenset(
    [*range(400, 418), 421, 422, 423, 424, 426, 428, 429, 431, *range(500, 509), 510, 511]
)
HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+\-.^_`|~]+$")  # Kuma's HeaderName: an RFC 7230 token, lower case
SET_ACTION = "OVERWRITE_IF_EXISTS_OR_ADD"
ADD_ACTION = "APPEND_IF_EXISTS_OR_ADD"


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    check.unknown(default, path, ("local",))
    local = check.field(default, path, "local", dict, required=True)
    if local is None:
        return
    lp = path + ("local",)
    check.unknown(local, lp, ("http", "tcp"))
    if local.get("http") is None and local.get("tcp") is None:
        check.fail(lp, "needs `http`, `tcp` or both")
    http = check.field(local, lp, "http", dict)
    if http is not None:
        _validate_http(http, lp + ("http",), check)
    tcp = check.field(local, lp, "tcp", dict)
    if tcp is not None:
        tp = lp + ("tcp",)
        check.unknown(tcp, tp, ("disabled", "connectionRate"))
        if tcp.get("disabled") is None and tcp.get("connectionRate") is None:
            check.fail(tp, "needs at least one of `disabled`, `connectionRate`")
        check.field(tcp, tp, "disabled", bool)
        _validate_rate(tcp, tp, "connectionRate", check)
        kind = _from_kind(check, path)
        if kind is not None and kind != "Mesh":
            check.fail(tp, f"a TCP connection is limited when it is accepted, before its client is known, so it cannot "
                           f"depend on the client: set `local.tcp` in a `from` item of kind Mesh, not {kind}")


def _validate_http(http: Json, path: PathKey, check: FieldCheck) -> None:
    check.unknown(http, path, ("disabled", "requestRate", "onRateLimit"))
    if all(http.get(k) is None for k in ("disabled", "requestRate", "onRateLimit")):
        check.fail(path, "needs at least one of `disabled`, `requestRate`, `onRateLimit`")
    check.field(http, path, "disabled", bool)
    _validate_rate(http, path, "requestRate", check)
    on = check.field(http, path, "onRateLimit", dict)
    if on is None:
        return
    op = path + ("onRateLimit",)
    check.unknown(on, op, ("status", "headers"))
    status = check.field(on, op, "status", int)
    if status is not None and status not in STATUS_CODES:
        why = "Envoy answers 429 for any status below 400" if status < 400 else "Envoy knows no such status code"
        check.fail(op + ("status",), f"must be an HTTP error status between 400 and 599 ({why}), got {status}")
    headers = check.field(on, op, "headers", dict)
    if headers is None:
        return
    hp = op + ("headers",)
    check.unknown(headers, hp, ("set", "add"))
    for key in ("set", "add"):
        items = check.field(headers, hp, key, list, default=[])
        if len(items) > MAX_HEADERS:
            check.fail(hp + (key,), f"at most {MAX_HEADERS} headers, got {len(items)}")
        seen: set[str] = set()
        for i, item in enumerate(items):
            ip = hp + (key, i)
            if not isinstance(item, dict):
                check.fail(ip, "must be a mapping with `name` and `value`")
                continue
            check.unknown(item, ip, ("name", "value"))
            name = check.field(item, ip, "name", str, required=True)
            value = check.field(item, ip, "value", str, required=True)
            if name is not None:
                if not HEADER_NAME.fullmatch(name):
                    check.fail(ip + ("name",), f"must be a lower-case HTTP header name (an RFC 7230 token), got {name!r}")
                elif name in seen:
                    check.fail(ip + ("name",), f"header {name!r} is listed twice in `{key}`: join the values with a comma")
                seen.add(name)
            if value is not None and any(c in value for c in "\r\n\0"):
                check.fail(ip + ("value",), "must not contain CR, LF or NUL")


def _validate_rate(obj: Json, path: PathKey, key: str, check: FieldCheck) -> None:
    rate = check.field(obj, path, key, dict)
    if rate is None:
        return
    rp = path + (key,)
    check.unknown(rate, rp, ("num", "interval"))
    check.integer(rate, rp, "num", minimum=1, maximum=MAX_UINT32, required=True)
    interval = check.field(rate, rp, "interval", str, required=True)
    if interval is not None:
        seconds = parse_duration(interval)
        if seconds is None:
            check.fail(rp + ("interval",), f"must be a duration like 500ms, 1s or 1m, got {interval!r}")
        elif seconds <= MIN_INTERVAL:
            check.fail(rp + ("interval",), f"must be greater than 50ms, got {interval!r}")


def _from_kind(check: FieldCheck, path: PathKey) -> str | None:
    """The kind of the `from` item whose `default` is at `path` (validation sees the payload alone)."""
    node: Any = check.res.body
    for key in path[:-1]:
        if isinstance(node, dict) and isinstance(key, str):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    ref = node.get("targetRef") if isinstance(node, dict) else None
    kind = ref.get("kind") if isinstance(ref, dict) else None
    return kind if isinstance(kind, str) else None


def apply(build: ProxyBuild) -> None:
    for point in build.inbounds:
        rules = build.match.from_(KIND, point.target)
        if not rules:
            continue
        scope = stat_scope(point.chain, point.listener)
        manager = hcm(point.chain)
        if manager is not None:
            who = first_match(rule_clients(build.desired, mesh_of(build.proxy, point.target), rules))
            for rule, clients in zip(rules, who, strict=True):
                config = _http_limit(build, rule, f"{scope}.rate_limit.{stat_label(rule.client)}")
                if config is None:
                    continue
                http_filter = http_filter_for(f"{HTTP_FILTER}:{label(rule.client)}", config, clients)
                if http_filter is not None:
                    build.mark(http_filter, "typed_config", origins_of(rule.merged, "local.http"))
                    insert_http_filter(manager, http_filter)
        everyone = rules[-1]  # most specific first, so a rule for every client (kind Mesh) is the last one
        if everyone.client.kind == "Mesh":
            _tcp_limit(build, point.chain, everyone, f"{scope}.tcp_rate_limit")


def _http_limit(build: ProxyBuild, rule: FromRule, stat_prefix: str) -> Json | None:
    http = rule.merged.conf.get("local", {}).get("http")
    if not isinstance(http, dict) or http.get("disabled") or not isinstance(http.get("requestRate"), dict):
        return None
    merged = rule.merged
    config: Json = {"@type": HTTP_LOCAL_RATE_LIMIT, "stat_prefix": stat_prefix}
    build.set(config, "token_bucket", _token_bucket(http["requestRate"]), origins_of(merged, "local.http.requestRate"))
    # Without these two the filter only counts: Envoy enables and enforces a local rate limit for 0% by default.
    enabled = origins_of(merged, "local.http.requestRate", "local.http.disabled")
    build.set(config, "filter_enabled", _all_requests(), enabled)
    build.set(config, "filter_enforced", _all_requests(), enabled)
    on = http.get("onRateLimit") or {}
    if on.get("status") is not None:
        build.set(config, "status", {"code": on["status"]}, origins_of(merged, "local.http.onRateLimit.status"))
    headers = on.get("headers") or {}
    to_add = [_header(h, SET_ACTION) for h in headers.get("set") or []]
    to_add += [_header(h, ADD_ACTION) for h in headers.get("add") or []]
    if to_add:
        build.set(config, "response_headers_to_add", to_add, origins_of(merged, "local.http.onRateLimit.headers"))
    return config


def _tcp_limit(build: ProxyBuild, chain: Json, rule: FromRule, stat_prefix: str) -> None:
    tcp = rule.merged.conf.get("local", {}).get("tcp")
    if not isinstance(tcp, dict) or tcp.get("disabled") or not isinstance(tcp.get("connectionRate"), dict):
        return
    config: Json = {"@type": NETWORK_LOCAL_RATE_LIMIT, "stat_prefix": stat_prefix}
    build.set(config, "token_bucket", _token_bucket(tcp["connectionRate"]), origins_of(rule.merged, "local.tcp"))
    # After RBAC (first in the chain): a connection that is not permitted takes no token.
    insert_network_filter(chain, {"name": NETWORK_FILTER, "typed_config": config})


def _token_bucket(rate: Json) -> Json:
    seconds = parse_duration(rate["interval"])
    assert seconds is not None  # validated
    # A full bucket of `num` tokens, refilled to `num` each interval: `num` per interval, bursts included.
    return {"max_tokens": rate["num"], "tokens_per_fill": rate["num"], "fill_interval": duration_json(seconds)}


def _all_requests() -> Json:
    return {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}


def _header(header: Json, action: str) -> Json:
    return {"header": {"key": header["name"], "value": header["value"]}, "append_action": action}
