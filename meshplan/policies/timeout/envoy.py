"""MeshTimeout's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from meshplan.envoy import names
from meshplan.envoy.types import HTTP_PROTOCOL_OPTIONS, HTTP_PROTOCOL_OPTIONS_NAME
from meshplan.match.matcher import Merged, rule_for
from meshplan.model import Inbound
from meshplan.policies.base import Json, ProxyBuild, hcm, routes, tcp_proxy
from meshplan.policies.conf import ConfReader, Setting
from meshplan.policies.timeout.api import HTTP_PROTOCOLS, KIND, HttpTimeouts, parse

# --- rendering ------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    for out in build.outbounds:
        merged = build.match.to(KIND, out.destination)
        # The Envoy routes a MeshHTTPRoute made where a MeshTimeout targets that route: their own merge.
        on_routes = {id(r): m for r in routes(out.chain) if (m := build.route_merged(KIND, out, r)) is not None}
        if not merged.empty or on_routes:
            _configure(build, merged, out.cluster, out.chain, out.protocol, on_routes)
    for point in build.inbounds:
        # `from` items all target Mesh (validated), so the rule for a client without tags is the one rule.
        rule = rule_for(build.match.from_(KIND, point.target), {})
        if rule is None or rule.merged.empty:
            continue
        inbound = point.target
        local = None
        if isinstance(inbound, Inbound):
            local = build.clusters.get(names.local_cluster(inbound.service_address, inbound.service_port))
        _configure(build, rule.merged, local, point.chain, point.protocol)


# Kuma's MeshTimeout plugin fills every timeout no policy set, wherever a MeshTimeout applies (its
# pkg/plugins/policies/core/defaults and plugin/xds configurer): these values, as Envoy writes durations.
DEFAULT_CONNECT = "5s"
DEFAULT_IDLE = "3600s"
DEFAULT_REQUEST = "15s"
DEFAULT_STREAM_IDLE = "1800s"
_NO_HTTP = HttpTimeouts(None, None, None, None, None)
DISABLED = "0s"  # maxStreamDuration, maxConnectionDuration, requestHeadersTimeout, and the downstream idle timeout


def _configure(build: ProxyBuild, merged: Merged, cluster: Json | None, chain: Json, protocol: str,
               on_routes: dict[int, Merged] | None = None) -> None:
    """`on_routes`: per Envoy route (by id) that a MeshHTTPRoute made and a MeshTimeout targets, that route's merge;
    the other routes, the cluster and the connection manager take `merged` (the destination's or inbound's, which
    may be empty when only a route is targeted)."""
    on_routes = on_routes or {}
    conf = None if merged.empty else parse(ConfReader.of_merged(merged))
    if conf is None and not on_routes:
        return
    # What a MeshTimeout leaves unset gets Kuma's default, set by the MeshTimeouts that apply here.
    applied = _applied(merged)
    if conf is None:
        _configure_routes(build, chain, None, applied, on_routes)
        return
    if cluster is not None:
        _set_or_fill(build, cluster, "connect_timeout", conf.connection_timeout, DEFAULT_CONNECT, applied)
    if protocol not in HTTP_PROTOCOLS:
        proxy = tcp_proxy(chain)
        if proxy is not None:
            _set_or_fill(build, proxy, "idle_timeout", conf.idle_timeout, DEFAULT_IDLE, applied)
        return
    http = conf.http or _NO_HTTP
    if cluster is not None:
        for envoy_key, setting, default in (("idle_timeout", conf.idle_timeout, DEFAULT_IDLE),
                                            ("max_stream_duration", http.max_stream_duration, DISABLED),
                                            ("max_connection_duration", http.max_connection_duration, DISABLED)):
            _set_or_fill(build, _common_http_options(cluster), envoy_key, setting, default, applied)
    _configure_routes(build, chain, http, applied, on_routes)
    manager = hcm(chain)
    if manager is not None:
        _set_or_fill(build, manager, "request_headers_timeout", http.request_headers_timeout, DISABLED, applied)
        # Kuma always turns the downstream connection idle timeout off where a MeshTimeout applies (the upstream
        # one is the cluster's idleTimeout); no policy field sets it.
        options = manager.setdefault("common_http_protocol_options", {})
        build.set(options, "idle_timeout", DISABLED, applied)


def _applied(merged: Merged) -> list[str]:
    return sorted({str(c.origin()) for c in merged.contributions})


def _configure_routes(build: ProxyBuild, chain: Json, http: HttpTimeouts | None, applied: list[str],
                      on_routes: dict[int, Merged]) -> None:
    """Each route's request and stream idle timeouts: from its own merge where a MeshTimeout targets the MeshHTTPRoute
    that made it (Kuma fills the unset one with its default there too), else from `http` (None: left as it is)."""
    for route in routes(chain):
        action = route.get("route")
        if action is None:
            continue  # a redirect or a direct response forwards nothing, so has no upstream timeout
        own = on_routes.get(id(route))
        here, who = http, applied
        if own is not None:
            conf = parse(ConfReader.of_merged(own))
            here, who = (conf.http if conf is not None else None) or _NO_HTTP, _applied(own)
        if here is None:
            continue
        for envoy_key, setting, default in (("timeout", here.request_timeout, DEFAULT_REQUEST),
                                            ("idle_timeout", here.stream_idle_timeout, DEFAULT_STREAM_IDLE)):
            _set_or_fill(build, action, envoy_key, setting, default, who)


def _set_or_fill(build: ProxyBuild, node: Json, envoy_key: str, setting: Setting[str] | None, default: str,
                 applied: list[str]) -> None:
    if setting is not None:
        _set(build, node, envoy_key, setting)
    else:
        build.set(node, envoy_key, default, applied)


def _set(build: ProxyBuild, node: Json, envoy_key: str, setting: Setting[str]) -> None:
    build.set(node, envoy_key, setting.value, list(setting.origins))


def _common_http_options(cluster: Json) -> Json:
    """The cluster's HttpProtocolOptions.common_http_protocol_options, created if need be."""
    extensions = cluster.setdefault("typed_extension_protocol_options", {})
    options = extensions.setdefault(HTTP_PROTOCOL_OPTIONS_NAME, {"@type": HTTP_PROTOCOL_OPTIONS})
    # Envoy requires one way of choosing the upstream protocol; keep the one there (HTTP/2), else HTTP/1.1 as before.
    if not any(key in options for key in ("explicit_http_config", "use_downstream_protocol_config", "auto_config")):
        options["explicit_http_config"] = {"http_protocol_options": {}}
    common: Json = options.setdefault("common_http_protocol_options", {})
    return common
