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
    for out, merged in build.merged_outbounds(KIND):
        _configure(build, merged, out.cluster, out.chain, out.protocol)
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
DISABLED = "0s"  # maxStreamDuration, maxConnectionDuration, requestHeadersTimeout, and the downstream idle timeout


def _configure(build: ProxyBuild, merged: Merged, cluster: Json | None, chain: Json, protocol: str) -> None:
    conf = parse(ConfReader.of_merged(merged))
    if conf is None:
        return
    # What a MeshTimeout leaves unset gets Kuma's default, set by the MeshTimeouts that apply here.
    applied = sorted({str(c.origin()) for c in merged.contributions})
    if cluster is not None:
        _set_or_fill(build, cluster, "connect_timeout", conf.connection_timeout, DEFAULT_CONNECT, applied)
    if protocol not in HTTP_PROTOCOLS:
        proxy = tcp_proxy(chain)
        if proxy is not None:
            _set_or_fill(build, proxy, "idle_timeout", conf.idle_timeout, DEFAULT_IDLE, applied)
        return
    http = conf.http or HttpTimeouts(None, None, None, None, None)
    if cluster is not None:
        for envoy_key, setting, default in (("idle_timeout", conf.idle_timeout, DEFAULT_IDLE),
                                            ("max_stream_duration", http.max_stream_duration, DISABLED),
                                            ("max_connection_duration", http.max_connection_duration, DISABLED)):
            _set_or_fill(build, _common_http_options(cluster), envoy_key, setting, default, applied)
    for route in routes(chain):
        action = route.get("route")
        if action is None:
            continue  # a redirect or a direct response forwards nothing, so has no upstream timeout
        for envoy_key, setting, default in (("timeout", http.request_timeout, DEFAULT_REQUEST),
                                            ("idle_timeout", http.stream_idle_timeout, DEFAULT_STREAM_IDLE)):
            _set_or_fill(build, action, envoy_key, setting, default, applied)
    manager = hcm(chain)
    if manager is not None:
        _set_or_fill(build, manager, "request_headers_timeout", http.request_headers_timeout, DISABLED, applied)
        # Kuma always turns the downstream connection idle timeout off where a MeshTimeout applies (the upstream
        # one is the cluster's idleTimeout); no policy field sets it.
        options = manager.setdefault("common_http_protocol_options", {})
        build.set(options, "idle_timeout", DISABLED, applied)


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
