"""MeshTCPRoute's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from meshplan.envoy.types import HCM_NAME, TCP_PROXY_NAME
from meshplan.envoy.types import TCP_PROXY as TCP_PROXY_TYPE
from meshplan.policies import backend_refs as refs
from meshplan.policies.base import Json, OutboundPoint, ProxyBuild, tcp_proxy
from meshplan.policies.conf import ConfReader
from meshplan.policies.tcp_route.api import KIND, parse


def apply(build: ProxyBuild) -> None:
    # On the sidecar only (the placement table, applied by match.result).
    for point in list(build.outbounds):  # a snapshot: backends append points of their own
        if not point.chain.get("filters"):
            continue  # a backend's detached point: no listener of its own (its routes are its outbound's)
        merged = build.match.to(KIND, point.destination)
        if merged.empty:
            continue
        conf = parse(ConfReader.of_merged(merged))
        origins = list(conf.rules.origins) if conf is not None else []
        rules = conf.rules.value if conf is not None else ()
        backends = list(rules[0].backends) if rules else []
        targets = refs.split(build, backends, point, origins) if backends else [(point.cluster["name"], 1)]
        if not targets:
            continue  # every weight 0: validation refuses it; nothing sensible to send to
        proxy = _tcp_proxy_of(build, point, origins)
        proxy.pop("cluster", None)
        proxy.pop("weighted_clusters", None)
        if len(targets) == 1:
            build.set(proxy, "cluster", targets[0][0], origins)
        else:
            clusters = [{"name": name, "weight": weight} for name, weight in targets]
            build.set(proxy, "weighted_clusters", {"clusters": clusters}, origins)


def _tcp_proxy_of(build: ProxyBuild, point: OutboundPoint, origins: list[str]) -> Json:
    """The outbound's tcp_proxy config; an HTTP outbound's connection manager is replaced by one."""
    existing = tcp_proxy(point.chain)
    if existing is not None:
        return existing
    filters: list[Json] = point.chain["filters"]
    index = next(i for i, f in enumerate(filters) if f.get("name") == HCM_NAME)
    config: Json = {"@type": TCP_PROXY_TYPE, "stat_prefix": filters[index]["typed_config"]["stat_prefix"]}
    replacement: Json = {"name": TCP_PROXY_NAME, "typed_config": config}
    filters[index] = replacement
    build.mark(replacement, "name", origins)
    point.protocol = "tcp"
    return config
