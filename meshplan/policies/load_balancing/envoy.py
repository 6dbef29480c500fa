"""MeshLoadBalancingStrategy's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from typing import Any

from meshplan.model import Dataplane
from meshplan.policies.base import Json, OutboundPoint, ProxyBuild, routes
from meshplan.policies.conf import Setting
from meshplan.policies.load_balancing.api import KIND, AffinityTag, Conf, HashPolicy, LoadBalancer, parse

OVERPROVISIONING_FACTOR = 200  # Kuma v2.14.3 meshloadbalancingstrategy's defaultOverprovisioningFactor

# --- rendering --------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    hashing: dict[str, tuple[list[Json], list[str]]] = {}  # cluster name -> (hash policies, their origins)
    # For an external service only on the egress (the seed's placement, applied by match.result).
    for point, conf in build.outbound_confs(KIND, parse):
        if conf.load_balancer is not None and conf.load_balancer.lb_policy is not None:
            _configure_cluster(build, point.cluster, conf.load_balancer)
        if conf.local_zone is not None and "load_assignment" in point.cluster:
            # Kuma's overprovisioning factor once a locality group is set; in one zone every endpoint is local.
            policy = point.cluster["load_assignment"].setdefault("policy", {})
            _set(build, policy, "overprovisioning_factor", OVERPROVISIONING_FACTOR, conf.local_zone)
            if conf.local_zone.value and isinstance(build.proxy, Dataplane) and not point.destination.external:
                _prefer_affinity(build, build.proxy, point, conf.local_zone)
        found = _chosen_hash_policies(conf)
        if found is not None and point.protocol != "tcp":
            hashing[point.cluster["name"]] = ([_hash_policy(p) for p in found.value], list(found.origins))
    if not hashing:
        return
    for point in build.outbounds:
        for route in routes(point.chain):
            action = route.get("route")
            if not isinstance(action, dict):
                continue  # a redirect or a direct response sends nowhere
            targets = [action["cluster"]] if "cluster" in action else [
                c["name"] for c in action.get("weighted_clusters", {}).get("clusters", [])
            ]
            chosen = next((hashing[t] for t in targets if t in hashing), None)
            if chosen is not None:
                build.set(action, "hash_policy", chosen[0], chosen[1])


def _prefer_affinity(build: ProxyBuild, client: Dataplane, point: OutboundPoint,
                     tags: Setting[tuple[AffinityTag, ...]]) -> None:
    """Kuma's localities by affinity tag (api.py's docstring): the endpoints sharing the client's value of a tag in
    a locality of that tag's weight, the rest in one of weight 1, and locality-weighted balancing on the cluster."""
    groups = []  # (key, the client's value, weight), in the tags' order
    for tag in tags.value:
        values = sorted({inbound.tags[tag.key] for inbound in client.inbounds if tag.key in inbound.tags})
        value = values[0] if values else client.labels.get(tag.key)
        if value is not None:
            groups.append((tag.key, value, tag.weight))
    of_endpoint = {(inbound.address, inbound.port): (inbound.tags, dp.labels)
                   for dp, inbound in build.desired.instances(client.mesh, point.destination.name)}
    assignment = point.cluster["load_assignment"]
    localities: dict[str, Json] = {}
    for group in assignment["endpoints"]:
        for endpoint in group["lb_endpoints"]:
            address = endpoint["endpoint"]["address"]["socket_address"]
            endpoint_tags, labels = of_endpoint.get((address["address"], address["port_value"]), ({}, {}))
            sub_zone, weight = "", 1
            for key, value, group_weight in groups:
                if endpoint_tags.get(key, labels.get(key)) == value:
                    sub_zone, weight = f"{key}={value}", group_weight
                    break
            locality = localities.setdefault(sub_zone, {
                "locality": {"sub_zone": sub_zone} if sub_zone else {},
                "lb_endpoints": [],
                "load_balancing_weight": weight,
            })
            locality["lb_endpoints"].append(endpoint)
    origins = list(tags.origins)
    build.set(assignment, "endpoints", [localities[name] for name in sorted(localities)], origins)
    common = point.cluster.setdefault("common_lb_config", {})
    build.set(common, "locality_weighted_lb_config", {}, origins)


def _configure_cluster(build: ProxyBuild, cluster: Json, lb: LoadBalancer) -> None:
    assert lb.lb_policy is not None
    kind = lb.lb_policy.value
    _set(build, cluster, "lb_policy", kind, lb.lb_policy)
    # A cluster has one lb_config: a less specific policy's type cannot leave its settings behind.
    for stale in ("least_request_lb_config", "ring_hash_lb_config", "maglev_lb_config"):
        cluster.pop(stale, None)
    if kind == "LEAST_REQUEST" and lb.least_request is not None:
        conf = lb.least_request
        least: Json = {}
        if conf.choice_count is not None:
            _set(build, least, "choice_count", conf.choice_count.value, conf.choice_count)
        if conf.active_request_bias is not None:
            bias = {"default_value": float(conf.active_request_bias.value)}
            _set(build, least, "active_request_bias", bias, conf.active_request_bias)
        if least:
            build.set(cluster, "least_request_lb_config", least, list(conf.origins))
    elif kind == "RING_HASH" and lb.ring_hash is not None:
        ring_conf = lb.ring_hash
        ring: Json = {}
        for setting, envoy in ((ring_conf.min_ring_size, "minimum_ring_size"),
                               (ring_conf.max_ring_size, "maximum_ring_size")):
            if setting is not None:
                # uint64 fields: proto-JSON writes them as strings, as Envoy does in /config_dump.
                _set(build, ring, envoy, str(setting.value), setting)
        if ring_conf.hash_function is not None:
            _set(build, ring, "hash_function", ring_conf.hash_function.value, ring_conf.hash_function)
        if ring:
            # Not hashPolicies: those go to the routes.
            used = (ring_conf.min_ring_size, ring_conf.max_ring_size, ring_conf.hash_function)
            origins = sorted({origin for setting in used if setting is not None for origin in setting.origins})
            build.set(cluster, "ring_hash_lb_config", ring, origins)
    elif kind == "MAGLEV" and lb.maglev is not None and lb.maglev.table_size is not None:
        table = {"table_size": str(lb.maglev.table_size.value)}
        _set(build, cluster, "maglev_lb_config", table, lb.maglev.table_size)


def _set(build: ProxyBuild, node: Json, envoy_key: str, value: Any, setting: Setting[Any]) -> None:
    build.set(node, envoy_key, value, list(setting.origins))


def _chosen_hash_policies(conf: Conf) -> Setting[tuple[HashPolicy, ...]] | None:
    """Kuma's choice: the top-level hashPolicies, else those of the ring hash or maglev balancer in use."""
    if conf.hash_policies is not None:
        return conf.hash_policies
    lb = conf.load_balancer
    if lb is None or lb.lb_policy is None:
        return None
    if lb.lb_policy.value == "RING_HASH" and lb.ring_hash is not None:
        return lb.ring_hash.hash_policies
    if lb.lb_policy.value == "MAGLEV" and lb.maglev is not None:
        return lb.maglev.hash_policies
    return None


def _hash_policy(policy: HashPolicy) -> Json:
    out: Json
    if policy.type == "Header":
        out = {"header": {"header_name": policy.name}}
    elif policy.type == "Cookie":
        out = {"cookie": {"name": policy.name}}
        if policy.ttl is not None:
            out["cookie"]["ttl"] = policy.ttl
        if policy.path is not None:
            out["cookie"]["path"] = policy.path
    elif policy.type in ("SourceIP", "Connection"):
        out = {"connection_properties": {"source_ip": policy.source_ip}}
    elif policy.type == "QueryParameter":
        out = {"query_parameter": {"name": policy.name}}
    else:
        out = {"filter_state": {"key": policy.name}}
    if policy.terminal:
        out["terminal"] = True
    return out
