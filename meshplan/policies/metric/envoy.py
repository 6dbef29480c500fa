"""MeshMetric into Envoy: per Prometheus backend, a listener on the sidecar's address and the backend's port whose
one route sends the backend's path to Envoy's own admin `/stats/prometheus`, through a cluster to the admin
address.

    backends[].prometheus.port, clientId    listener _kuma:metrics:prometheus:<clientId> at <address>:<port>
    backends[].prometheus.path              route {match: {path}, route: {cluster: _kuma:envoy:admin,
                                              prefix_rewrite: /stats/prometheus[?usedonly]}}
    sidecar.includeUnused (false)           `usedonly` on the admin query unless true
    (the admin API)                         cluster _kuma:envoy:admin: STATIC, <address>:<admin port>

Only the metrics path is forwarded: any other path on the listener is a 404 from Envoy, so the admin API's other
endpoints (which change the proxy) are not exposed on the metrics port.
"""

from __future__ import annotations

from meshplan.envoy import names
from meshplan.envoy import types as t
from meshplan.model import Dataplane
from meshplan.policies.base import Json, ProxyBuild
from meshplan.policies.metric.api import Prometheus, parse

KIND = "MeshMetric"
ADMIN_PATH = "/stats/prometheus"
CONNECT_TIMEOUT = "5s"


def apply(build: ProxyBuild) -> None:
    found = build.sidecar_conf(KIND, parse)
    if found is None:
        return
    proxy, conf = found
    if conf.backends is None or not conf.backends.value:
        return
    used_only = conf.include_unused is None or not conf.include_unused.value
    origins = sorted(set(conf.backends.origins) | set(conf.include_unused.origins if conf.include_unused else ()))
    admin: Json = {
        "@type": t.CLUSTER,
        "name": names.ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": t.load_assignment(names.ADMIN_CLUSTER, [(proxy.address, proxy.admin_port)]),
    }
    build.clusters[admin["name"]] = admin
    build.mark(admin, "load_assignment", conf.backends.origins)
    for backend in conf.backends.value:
        listener = _listener(proxy, backend, used_only)
        build.listeners[listener["name"]] = listener
        build.mark(listener, "address", conf.backends.origins)
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
        build.mark(route, "prefix_rewrite", origins)


def _listener(proxy: Dataplane, backend: Prometheus, used_only: bool) -> Json:
    name = names.metrics_listener(backend.client_id)
    manager = t.http_connection_manager(t.stat_name(name), name, names.ADMIN_CLUSTER)
    route = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    route["match"] = {"path": backend.path}
    route["route"]["prefix_rewrite"] = ADMIN_PATH + ("?usedonly" if used_only else "")
    return {
        "@type": t.LISTENER,
        "name": name,
        "address": t.socket_address(proxy.address, backend.port),
        "filter_chains": [{"filters": [manager]}],
    }
