"""MeshLoadBalancingStrategy (`to`): how a destination's cluster picks an endpoint, and what its routes hash on.

Where: sidecars (their outbound clusters and routes) and, with `proxyType: ["Egress"]` and a `to` item naming a
MeshExternalService, the egress's cluster to that external service and the routes of its filter chain (the seed:
"we don't want to change the load balancing to Egress but to the underlying MeshExternalServices"). So a sidecar's
cluster and routes to an external service are never changed, even by a `to` item of kind Mesh.

Envoy fields (proto field names):

    loadBalancer.type                     cluster.lb_policy: ROUND_ROBIN | LEAST_REQUEST | RING_HASH | RANDOM | MAGLEV
    leastRequest.choiceCount              cluster.least_request_lb_config.choice_count
    leastRequest.activeRequestBias        cluster.least_request_lb_config.active_request_bias.default_value
    ringHash.hashFunction                 cluster.ring_hash_lb_config.hash_function: XX_HASH | MURMUR_HASH_2
    ringHash.minRingSize / maxRingSize    cluster.ring_hash_lb_config.minimum_ring_size / maximum_ring_size
    maglev.tableSize                      cluster.maglev_lb_config.table_size
    hashPolicies (top level, or in        route.route.hash_policy[] of every route that sends to the cluster:
      ringHash / maglev)                    Header -> {header: {header_name}}, Cookie -> {cookie: {name, ttl, path}},
                                            Connection / SourceIP -> {connection_properties: {source_ip}},
                                            QueryParameter -> {query_parameter: {name}},
                                            FilterState -> {filter_state: {key}}; `terminal` -> terminal

Defaults: none of our own; an unset field keeps Envoy's default (round robin; least request choiceCount 2; ring hash
XX_HASH, rings 1024..8M; maglev table 65537). As in Kuma, the top-level `hashPolicies` win over those in `ringHash`
or `maglev`, and are applied whatever the type (Envoy ignores a hash with a non-hashing balancer). `SourceIP` needs no
`connection` block (it hashes on the source IP); `Connection` hashes on the source IP only with
`connection.sourceIP: true`, as in Kuma.

A route gets the hash policies of the cluster it sends to (for weighted clusters, of the first that has any); routes
of a TCP destination have none (Kuma does not set `tcp_proxy.hash_policy` either).

`localityAwareness`: meshplan renders one zone and no endpoint priorities, so `disabled` (true or false) is accepted
and changes nothing; `localZone` and `crossZone` are rejected as not supported.
"""

from __future__ import annotations

import math
from typing import Any

from meshplan.load.resources import PathKey
from meshplan.match.matcher import Merged
from meshplan.policies.base import Json, ProxyBuild, origins_of, routes
from meshplan.validate.check import (
    FieldCheck,
    as_decimal,
    duration_json,
    parse_duration,
)

KIND = "MeshLoadBalancingStrategy"
ORDER = 110  # run order on a proxy (registry.py): last: it reads the clusters and routes as the others left them

LB_POLICY = {
    "RoundRobin": "ROUND_ROBIN",
    "LeastRequest": "LEAST_REQUEST",
    "RingHash": "RING_HASH",
    "Random": "RANDOM",
    "Maglev": "MAGLEV",
}
# The block each type reads its settings from; the others would be ignored silently, so they are refused.
TYPE_BLOCK = {
    "RoundRobin": "roundRobin",
    "LeastRequest": "leastRequest",
    "RingHash": "ringHash",
    "Random": "random",
    "Maglev": "maglev",
}
HASH_FUNCTIONS = {"XXHash": "XX_HASH", "MurmurHash2": "MURMUR_HASH_2"}
HASH_TYPES = ("Header", "Cookie", "Connection", "SourceIP", "QueryParameter", "FilterState")
HASH_BLOCK = {
    "Header": "header",
    "Cookie": "cookie",
    "Connection": "connection",
    "SourceIP": "connection",
    "QueryParameter": "queryParameter",
    "FilterState": "filterState",
}
MAX_RING_SIZE = 8_000_000  # Envoy's limit
MAX_TABLE_SIZE = 5_000_011  # Envoy's limit; the size must also be prime


# --- validation -------------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    check.unknown(default, path, ("loadBalancer", "localityAwareness", "hashPolicies"))
    top_hash = check.field(default, path, "hashPolicies", list)
    if top_hash is not None:
        _validate_hash_policies(check, top_hash, path + ("hashPolicies",))
    lb = check.field(default, path, "loadBalancer", dict)
    if lb is not None:
        _validate_load_balancer(check, lb, path + ("loadBalancer",), top_level_hash=top_hash is not None)
    locality = check.field(default, path, "localityAwareness", dict)
    if locality is not None:
        lp = path + ("localityAwareness",)
        check.unknown(locality, lp, ("disabled", "localZone", "crossZone"))
        check.field(locality, lp, "disabled", bool)
        for key in ("localZone", "crossZone"):
            if key in locality:
                check.fail(lp + (key,), f"`{key}` is not supported: meshplan renders a single zone without endpoint "
                                        "priorities (only `localityAwareness.disabled` is accepted)")


def _validate_load_balancer(check: FieldCheck, lb: Json, lp: PathKey, *, top_level_hash: bool) -> None:
    check.unknown(lb, lp, ("type",) + tuple(TYPE_BLOCK.values()))
    kind = check.field(lb, lp, "type", str, required=True)
    if kind is not None and kind not in LB_POLICY:
        check.fail(lp + ("type",), f"must be one of {', '.join(LB_POLICY)}, got {kind!r}")
        kind = None
    for other, block in TYPE_BLOCK.items():
        if block in lb and kind is not None and other != kind:
            check.fail(lp + (block,), f"`{block}` configures type {other}, but type is {kind}: it would be ignored")
    for block in ("roundRobin", "random"):
        value = check.field(lb, lp, block, dict)
        if value:
            check.unknown(value, lp + (block,), ())
    least = check.field(lb, lp, "leastRequest", dict)
    if least is not None:
        p = lp + ("leastRequest",)
        check.unknown(least, p, ("choiceCount", "activeRequestBias"))
        _integer(check, least, p, "choiceCount", minimum=2, maximum=2**32 - 1)
        if "activeRequestBias" in least:
            bias = as_decimal(least["activeRequestBias"])
            if bias is None or bias < 0:
                check.fail(p + ("activeRequestBias",), "must be a number at least 0 (an integer or a decimal string "
                                                       f"like \"1.5\"), got {least['activeRequestBias']!r}")
    ring = check.field(lb, lp, "ringHash", dict)
    if ring is not None:
        p = lp + ("ringHash",)
        check.unknown(ring, p, ("hashFunction", "minRingSize", "maxRingSize", "hashPolicies"))
        function = check.field(ring, p, "hashFunction", str)
        if function is not None and function not in HASH_FUNCTIONS:
            check.fail(p + ("hashFunction",), f"must be one of {', '.join(HASH_FUNCTIONS)}, got {function!r}")
        low = _integer(check, ring, p, "minRingSize", minimum=1, maximum=MAX_RING_SIZE)
        high = _integer(check, ring, p, "maxRingSize", minimum=1, maximum=MAX_RING_SIZE)
        if low is not None and high is not None and low > high:
            check.fail(p + ("minRingSize",), f"must not be greater than maxRingSize ({low} > {high})")
        _nested_hash_policies(check, ring, p, top_level_hash)
    maglev = check.field(lb, lp, "maglev", dict)
    if maglev is not None:
        p = lp + ("maglev",)
        check.unknown(maglev, p, ("tableSize", "hashPolicies"))
        size = _integer(check, maglev, p, "tableSize", minimum=1, maximum=MAX_TABLE_SIZE)
        if size is not None and not _is_prime(size):
            check.fail(p + ("tableSize",), f"must be a prime number (Envoy refuses others), got {size}")
        _nested_hash_policies(check, maglev, p, top_level_hash)


def _nested_hash_policies(check: FieldCheck, block: Json, path: PathKey, top_level_hash: bool) -> None:
    policies = check.field(block, path, "hashPolicies", list)
    if policies is None:
        return
    if top_level_hash:
        check.fail(path + ("hashPolicies",), "hashPolicies already specified in the root level "
                                             "(`default.hashPolicies`)")
    _validate_hash_policies(check, policies, path + ("hashPolicies",))


def _validate_hash_policies(check: FieldCheck, policies: list[Any], path: PathKey) -> None:
    for i, policy in enumerate(policies):
        p = path + (i,)
        if not isinstance(policy, dict):
            check.fail(p, "must be a mapping with a `type`")
            continue
        check.unknown(policy, p, ("type", "terminal") + tuple(sorted(set(HASH_BLOCK.values()))))
        check.field(policy, p, "terminal", bool)
        kind = check.field(policy, p, "type", str, required=True)
        if kind is not None and kind not in HASH_TYPES:
            check.fail(p + ("type",), f"must be one of {', '.join(HASH_TYPES)}, got {kind!r}")
            kind = None
        wanted = HASH_BLOCK.get(kind or "")
        for block in sorted(set(HASH_BLOCK.values())):
            if block in policy and kind is not None and block != wanted:
                check.fail(p + (block,), f"`{block}` is not used by a hash policy of type {kind}")
        if kind is None or wanted is None:
            continue
        body = check.field(policy, p, wanted, dict, required=kind != "SourceIP")
        if body is None:
            continue
        bp = p + (wanted,)
        if kind == "Header":
            check.unknown(body, bp, ("name",))
            _name(check, body, bp, "name")
        elif kind == "Cookie":
            check.unknown(body, bp, ("name", "ttl", "path"))
            _name(check, body, bp, "name")
            check.duration(body, bp, "ttl")
            cookie_path = check.field(body, bp, "path", str)
            if cookie_path is not None and not cookie_path.startswith("/"):
                check.fail(bp + ("path",), f"must be an absolute path, got {cookie_path!r}")
        elif kind in ("Connection", "SourceIP"):
            check.unknown(body, bp, ("sourceIP",))
            check.field(body, bp, "sourceIP", bool)
        elif kind == "QueryParameter":
            check.unknown(body, bp, ("name",))
            _name(check, body, bp, "name")
        elif kind == "FilterState":
            check.unknown(body, bp, ("key",))
            _name(check, body, bp, "key")


def _name(check: FieldCheck, obj: Json, path: PathKey, key: str) -> None:
    value = check.field(obj, path, key, str, required=True)
    if value is not None and not value.strip():
        check.fail(path + (key,), "must not be empty")


def _integer(check: FieldCheck, obj: Json, path: PathKey, key: str, *, minimum: int, maximum: int) -> int | None:
    value = check.field(obj, path, key, int)
    if value is None:
        return None
    if not minimum <= value <= maximum:
        check.fail(path + (key,), f"must be between {minimum} and {maximum}, got {value}")
        return None
    return int(value)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


# --- rendering --------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    hashing: dict[str, tuple[list[Json], list[str]]] = {}  # cluster name -> (hash policies, their origins)
    for point in build.outbounds:
        # For an external service only on the egress (the seed's placement, applied by match.result).
        merged = build.match.to(KIND, point.destination)
        if merged.empty:
            continue
        lb = merged.conf.get("loadBalancer")
        if isinstance(lb, dict) and "type" in lb:
            _configure_cluster(build, point.cluster, lb, merged)
        found = _hash_policies(merged)
        if found is not None and point.protocol != "tcp":
            key, policies_conf = found
            hashing[point.cluster["name"]] = ([_hash_policy(p) for p in policies_conf], origins_of(merged, key))
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


def _configure_cluster(build: ProxyBuild, cluster: Json, lb: Json, merged: Merged) -> None:
    kind = lb["type"]
    build.set(cluster, "lb_policy", LB_POLICY[kind], origins_of(merged, "loadBalancer.type"))
    # A cluster has one lb_config: a less specific policy's type cannot leave its settings behind.
    for stale in ("least_request_lb_config", "ring_hash_lb_config", "maglev_lb_config"):
        cluster.pop(stale, None)
    if kind == "LeastRequest" and isinstance(lb.get("leastRequest"), dict):
        conf = lb["leastRequest"]
        least: Json = {}
        prefix = "loadBalancer.leastRequest"
        if "choiceCount" in conf:
            build.set(least, "choice_count", conf["choiceCount"], origins_of(merged, f"{prefix}.choiceCount"))
        if "activeRequestBias" in conf:
            bias = {"default_value": float(as_decimal(conf["activeRequestBias"]) or 0)}
            build.set(least, "active_request_bias", bias, origins_of(merged, f"{prefix}.activeRequestBias"))
        if least:
            build.set(cluster, "least_request_lb_config", least, origins_of(merged, "loadBalancer.leastRequest"))
    elif kind == "RingHash" and isinstance(lb.get("ringHash"), dict):
        conf = lb["ringHash"]
        ring: Json = {}
        for name, envoy in (("minRingSize", "minimum_ring_size"), ("maxRingSize", "maximum_ring_size")):
            if name in conf:
                # uint64 fields: proto-JSON writes them as strings, as Envoy does in /config_dump.
                build.set(ring, envoy, str(conf[name]), origins_of(merged, f"loadBalancer.ringHash.{name}"))
        if "hashFunction" in conf:
            build.set(ring, "hash_function", HASH_FUNCTIONS[conf["hashFunction"]],
                      origins_of(merged, "loadBalancer.ringHash.hashFunction"))  # fmt: skip
        if ring:
            # Not hashPolicies: those go to the routes.
            used = [f"loadBalancer.ringHash.{key}" for key in ("minRingSize", "maxRingSize", "hashFunction")]
            build.set(cluster, "ring_hash_lb_config", ring, origins_of(merged, *used))
    elif kind == "Maglev" and isinstance(lb.get("maglev"), dict) and "tableSize" in lb["maglev"]:
        table = {"table_size": str(lb["maglev"]["tableSize"])}
        build.set(cluster, "maglev_lb_config", table, origins_of(merged, "loadBalancer.maglev.tableSize"))


def _hash_policies(merged: Merged) -> tuple[str, list[Json]] | None:
    """Kuma's choice: the top-level hashPolicies, else those of the ring hash or maglev balancer in use."""
    conf = merged.conf
    if isinstance(conf.get("hashPolicies"), list):
        return "hashPolicies", conf["hashPolicies"]
    lb = conf.get("loadBalancer")
    if not isinstance(lb, dict):
        return None
    block = {"RingHash": "ringHash", "Maglev": "maglev"}.get(lb.get("type", ""))
    if block is None or not isinstance(lb.get(block), dict) or not isinstance(lb[block].get("hashPolicies"), list):
        return None
    return f"loadBalancer.{block}.hashPolicies", lb[block]["hashPolicies"]


def _hash_policy(policy: Json) -> Json:
    kind = policy["type"]
    out: Json
    if kind == "Header":
        out = {"header": {"header_name": policy["header"]["name"]}}
    elif kind == "Cookie":
        cookie = policy["cookie"]
        out = {"cookie": {"name": cookie["name"]}}
        if "ttl" in cookie:
            seconds = parse_duration(cookie["ttl"])
            assert seconds is not None  # validated
            out["cookie"]["ttl"] = duration_json(seconds)
        if "path" in cookie:
            out["cookie"]["path"] = cookie["path"]
    elif kind == "SourceIP":
        out = {"connection_properties": {"source_ip": True}}
    elif kind == "Connection":
        out = {"connection_properties": {"source_ip": bool(policy["connection"].get("sourceIP", False))}}
    elif kind == "QueryParameter":
        out = {"query_parameter": {"name": policy["queryParameter"]["name"]}}
    else:
        out = {"filter_state": {"key": policy["filterState"]["key"]}}
    if policy.get("terminal"):
        out["terminal"] = True
    return out
