"""MeshRateLimit's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from meshplan.envoy.types import HTTP_LOCAL_RATE_LIMIT, NETWORK_LOCAL_RATE_LIMIT
from meshplan.envoy.types import HTTP_LOCAL_RATE_LIMIT_NAME as HTTP_FILTER
from meshplan.envoy.types import NETWORK_LOCAL_RATE_LIMIT_NAME as NETWORK_FILTER
from meshplan.policies.base import Json, ProxyBuild, hcm, insert_http_filter
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
from meshplan.policies.conf import ConfReader, Header
from meshplan.policies.rate_limit.api import ADD_ACTION, KIND, SET_ACTION, HttpLimit, Rate, TcpLimit, parse


def apply(build: ProxyBuild) -> None:
    for point in build.inbounds:
        rules = build.match.from_(KIND, point.target)
        if not rules:
            continue
        confs = [parse(ConfReader.of_merged(rule.merged)) for rule in rules]
        scope = stat_scope(point.chain, point.listener)
        manager = hcm(point.chain)
        if manager is not None:
            who = first_match(rule_clients(build.desired, mesh_of(build.proxy, point.target), rules))
            for rule, conf, clients in zip(rules, confs, who, strict=True):
                http = conf.local.http if conf is not None else None
                config = _http_limit(build, http, f"{scope}.rate_limit.{stat_label(rule.client)}")
                if config is None or http is None:
                    continue
                http_filter = http_filter_for(f"{HTTP_FILTER}:{label(rule.client)}", config, clients)
                if http_filter is not None:
                    build.mark(http_filter, "typed_config", http.origins)
                    insert_http_filter(manager, http_filter)
        everyone, conf = rules[-1], confs[-1]  # most specific first, so a rule for every client (kind Mesh) is last
        if everyone.client.kind == "Mesh" and conf is not None:
            _tcp_limit(build, point.chain, conf.local.tcp, f"{scope}.tcp_rate_limit")


def _http_limit(build: ProxyBuild, http: HttpLimit | None, stat_prefix: str) -> Json | None:
    if http is None or (http.disabled is not None and http.disabled.value) or http.request_rate is None:
        return None
    rate = http.request_rate
    config: Json = {"@type": HTTP_LOCAL_RATE_LIMIT, "stat_prefix": stat_prefix}
    build.set(config, "token_bucket", _token_bucket(rate.value), rate.origins)
    # Without these two the filter only counts: Envoy enables and enforces a local rate limit for 0% by default.
    enabled = sorted({*rate.origins, *(http.disabled.origins if http.disabled is not None else ())})
    build.set(config, "filter_enabled", _all_requests(), enabled)
    build.set(config, "filter_enforced", _all_requests(), enabled)
    on = http.on_rate_limit
    if on is not None and on.status is not None:
        build.set(config, "status", {"code": on.status.value}, on.status.origins)
    headers = on.headers if on is not None else None
    if headers is not None:
        to_add = [_header(h, SET_ACTION) for h in headers.set] + [_header(h, ADD_ACTION) for h in headers.add]
        if to_add:
            build.set(config, "response_headers_to_add", to_add, headers.origins)
    return config


def _tcp_limit(build: ProxyBuild, chain: Json, tcp: TcpLimit | None, stat_prefix: str) -> None:
    if tcp is None or (tcp.disabled is not None and tcp.disabled.value) or tcp.connection_rate is None:
        return
    config: Json = {"@type": NETWORK_LOCAL_RATE_LIMIT, "stat_prefix": stat_prefix}
    build.set(config, "token_bucket", _token_bucket(tcp.connection_rate.value), tcp.origins)
    # After RBAC (first in the chain): a connection that is not permitted takes no token.
    insert_network_filter(chain, {"name": NETWORK_FILTER, "typed_config": config})


def _token_bucket(rate: Rate) -> Json:
    # A full bucket of `num` tokens, refilled to `num` each interval: `num` per interval, bursts included.
    return {"max_tokens": rate.num, "tokens_per_fill": rate.num, "fill_interval": rate.interval}


def _all_requests() -> Json:
    return {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}


def _header(header: Header, action: str) -> Json:
    return {"header": {"key": header.name, "value": header.value}, "append_action": action}
