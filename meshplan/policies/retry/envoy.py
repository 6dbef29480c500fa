"""MeshRetry's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from typing import Any

from meshplan.envoy import types as t
from meshplan.policies.base import Json, ProxyBuild, header_matcher, routes, tcp_proxy
from meshplan.policies.conf import ConfReader, Setting
from meshplan.policies.retry.api import DEFAULT_BASE_INTERVAL, KIND, HostPredicate, Retry, RetryOn, parse

HTTP_RETRY_ON_DEFAULT = "gateway-error,connect-failure,refused-stream"
GRPC_RETRY_ON_DEFAULT = "cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable"
RETRIABLE_STATUS_CODES = "retriable-status-codes"
PREVIOUS_HOSTS = (t.PREVIOUS_HOSTS_NAME, t.PREVIOUS_HOSTS)
OMIT_HOST_METADATA = (t.OMIT_HOST_METADATA_NAME, t.OMIT_HOST_METADATA)
PREVIOUS_PRIORITIES = (t.PREVIOUS_PRIORITIES_NAME, t.PREVIOUS_PRIORITIES)


# --- rendering ------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    # The seed: MeshRetry is implemented on the sidecar only (match.result applies the placement).
    for out in build.outbounds:
        merged = build.match.to(KIND, out.destination)
        conf = None if merged.empty else parse(ConfReader.of_merged(merged))
        if out.protocol == "tcp":
            proxy = tcp_proxy(out.chain)
            attempts = conf.tcp.max_connect_attempt if conf is not None and conf.tcp else None
            if proxy is not None and attempts is not None:
                _set(build, proxy, "max_connect_attempts", attempts.value, attempts)
            continue
        for route in routes(out.chain):
            action = route.get("route")
            if action is None:
                continue  # redirects and direct responses are never retried
            # A route a MeshHTTPRoute made, where a MeshRetry targets that route, takes its own merge.
            own = build.route_merged(KIND, out, route)
            here = conf if own is None else parse(ConfReader.of_merged(own))
            retry = None if here is None else here.grpc if out.protocol == "grpc" else here.http
            if retry is not None:
                _configure_route(build, retry, action,
                                 GRPC_RETRY_ON_DEFAULT if out.protocol == "grpc" else HTTP_RETRY_ON_DEFAULT)


def _configure_route(build: ProxyBuild, conf: Retry, action: Json, default_on: str) -> None:
    if conf.num_retries is not None and conf.num_retries.value == 0:
        action.pop("retry_policy", None)  # as Kuma: zero retries means no retry policy at all
        return
    policy: Json = {}
    action["retry_policy"] = policy
    retry_on, codes, methods = _split_retry_on(conf.retry_on.value if conf.retry_on else ())
    if codes:
        retry_on = (retry_on or [default_on]) + [RETRIABLE_STATUS_CODES]
    # The default conditions are there because a section applies: they belong to whoever wrote the section.
    build.set(policy, "retry_on", ",".join(retry_on) if retry_on else default_on,
              _origins(conf.retry_on) if retry_on else list(conf.written_by))
    if conf.num_retries is not None:
        _set(build, policy, "num_retries", conf.num_retries.value, conf.num_retries)
    if conf.per_try_timeout is not None:
        _set(build, policy, "per_try_timeout", conf.per_try_timeout.value, conf.per_try_timeout)
    back_off = conf.back_off
    if back_off is not None:
        envoy_back_off: Json = {}
        if back_off.base_interval is not None:
            _set(build, envoy_back_off, "base_interval", back_off.base_interval.value, back_off.base_interval)
        else:  # Envoy requires a base interval; Kuma's default
            build.set(envoy_back_off, "base_interval", DEFAULT_BASE_INTERVAL, list(back_off.written_by))
        if back_off.max_interval is not None:
            _set(build, envoy_back_off, "max_interval", back_off.max_interval.value, back_off.max_interval)
        policy["retry_back_off"] = envoy_back_off
    limited = conf.rate_limited_back_off
    if limited is not None:
        envoy_limited: Json = {}
        reset_headers = limited.reset_headers.value if limited.reset_headers else ()
        build.set(envoy_limited, "reset_headers", [{"name": h.name, "format": h.format} for h in reset_headers],
                  _origins(limited.reset_headers))
        if limited.max_interval is not None:
            _set(build, envoy_limited, "max_interval", limited.max_interval.value, limited.max_interval)
        policy["rate_limited_retry_back_off"] = envoy_limited
    if codes:
        build.set(policy, "retriable_status_codes", [int(code) for code in codes], _origins(conf.retry_on))
    written_headers = conf.retriable_request_headers.value if conf.retriable_request_headers else ()
    request_headers = [_method_matcher(m) for m in methods] + [header_matcher(h) for h in written_headers]
    if request_headers:
        build.set(policy, "retriable_request_headers", request_headers,
                  _origins(conf.retry_on, conf.retriable_request_headers) if methods
                  else _origins(conf.retriable_request_headers))
    if conf.retriable_response_headers is not None and conf.retriable_response_headers.value:
        build.set(policy, "retriable_headers", [header_matcher(h) for h in conf.retriable_response_headers.value],
                  _origins(conf.retriable_response_headers))
    if conf.host_selection is not None:
        _host_selection(build, policy, conf.host_selection.value, _origins(conf.host_selection))
    if conf.host_selection_max_attempts is not None:
        # An int64 field: proto-JSON writes it as a string.
        _set(build, policy, "host_selection_retry_max_attempts", str(conf.host_selection_max_attempts.value),
             conf.host_selection_max_attempts)


def _set(build: ProxyBuild, node: Json, envoy_key: str, value: Any, setting: Setting[Any]) -> None:
    build.set(node, envoy_key, value, list(setting.origins))


def _origins(*settings: Setting[Any] | None) -> list[str]:
    """Who set any of these fields, sorted."""
    return sorted({origin for setting in settings if setting is not None for origin in setting.origins})


def _split_retry_on(items: tuple[RetryOn, ...]) -> tuple[list[str], list[str], list[str]]:
    on: list[str] = []
    codes: list[str] = []
    methods: list[str] = []
    for kind, value in items:
        {"on": on, "status": codes, "method": methods}[kind].append(value)
    # `5xx` and `5XX` are one condition; Envoy takes each once.
    return list(dict.fromkeys(on)), list(dict.fromkeys(codes)), list(dict.fromkeys(methods))


def _method_matcher(method: str) -> Json:
    return {"name": ":method", "string_match": {"exact": method}}



def _host_selection(build: ProxyBuild, policy: Json, predicates: tuple[HostPredicate, ...], origins: list[str]) -> None:
    host_predicates: list[Json] = []
    for predicate in predicates:
        if predicate.predicate == "OmitPreviousHosts":
            host_predicates.append(_typed(*PREVIOUS_HOSTS, {}))
        elif predicate.predicate == "OmitHostsWithTags":
            # Envoy matches the tags against each endpoint's `envoy.lb` metadata.
            metadata = {"filter_metadata": {t.LB_METADATA: dict(predicate.tags)}}
            host_predicates.append(_typed(*OMIT_HOST_METADATA, {"metadata_match": metadata}))
        else:
            build.set(policy, "retry_priority",
                      _typed(*PREVIOUS_PRIORITIES, {"update_frequency": predicate.update_frequency}), origins)
    if host_predicates:
        build.set(policy, "retry_host_predicate", host_predicates, origins)


def _typed(name: str, type_url: str, config: Json) -> Json:
    return {"name": name, "typed_config": {"@type": type_url, **config}}
