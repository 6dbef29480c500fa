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


def _configure(build: ProxyBuild, merged: Merged, cluster: Json | None, chain: Json, protocol: str) -> None:
    conf = parse(ConfReader.of_merged(merged))
    if conf is None:
        return
    if cluster is not None and conf.connection_timeout is not None:
        _set(build, cluster, "connect_timeout", conf.connection_timeout)
    if protocol not in HTTP_PROTOCOLS:
        proxy = tcp_proxy(chain)
        if proxy is not None and conf.idle_timeout is not None:
            _set(build, proxy, "idle_timeout", conf.idle_timeout)
        return
    http = conf.http or HttpTimeouts(None, None, None, None, None)
    if cluster is not None:
        for envoy_key, setting in (("idle_timeout", conf.idle_timeout),
                                   ("max_stream_duration", http.max_stream_duration),
                                   ("max_connection_duration", http.max_connection_duration)):
            if setting is not None:
                _set(build, _common_http_options(cluster), envoy_key, setting)
    for route in routes(chain):
        action = route.get("route")
        if action is None:
            continue  # a redirect or a direct response forwards nothing, so has no upstream timeout
        for envoy_key, setting in (("timeout", http.request_timeout), ("idle_timeout", http.stream_idle_timeout)):
            if setting is not None:
                _set(build, action, envoy_key, setting)
    manager = hcm(chain)
    if manager is not None and http.request_headers_timeout is not None:
        _set(build, manager, "request_headers_timeout", http.request_headers_timeout)


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
