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
or `maglev`, and are applied whatever the type (Envoy ignores a hash with a non-hashing balancer). `Connection` and
`SourceIP` both need their `connection` block, as Kuma's validator says; `Connection` hashes on the source IP only
with `connection.sourceIP: true`, as in Kuma, and `SourceIP` always does (so `sourceIP: false` there is refused).

A route gets the hash policies of the cluster it sends to (for weighted clusters, of the first that has any); routes
of a TCP destination have none (Kuma does not set `tcp_proxy.hash_policy` either).

A `to` item may not select a MeshSubset or MeshServiceSubset (as Kuma v2.14.3: a subset of a service's endpoints is
not a destination with a cluster of its own; validate/policy_rules.py).

`localityAwareness`: meshplan renders one zone and no endpoint priorities, so `disabled` (true or false) is accepted
and changes nothing. `localZone` keeps traffic in the local zone, which in one zone is every endpoint: as Kuma, the
cluster's load assignment gets `policy.overprovisioning_factor: 200`. Its `affinityTags` (Kuma's
`locality_aware.go`/`priority.go`) prefer the endpoints that share a tag value with the client, on a sidecar's cluster
to a mesh service:

    for each affinity tag, in order:     the client's value: the first (sorted) value of that tag on its inbounds,
                                           else its Dataplane label of that name; a tag the client lacks is skipped
    each endpoint                          goes to the locality of the first such tag whose value it shares (its
                                           inbound's tag, else its Dataplane's label): `sub_zone: "<key>=<value>"`,
                                           `load_balancing_weight` the tag's `weight`, or Kuma's 9 * 10^(n-i-1) for
                                           the i-th of n tags; the others to one locality of weight 1
    the cluster                          `common_lb_config.locality_weighted_lb_config: {}`

so with one tag (weight 9) the endpoints sharing the client's value take 90% of the requests. On the egress (a
MeshExternalService's cluster) the client has no tags, so only the overprovisioning factor is set. `crossZone`
(failover to other zones) is rejected: there is no other zone.

The checks between fields (no block of another type, minRingSize not above maxRingSize, hashPolicies at one level
only) are made on each item: items may still merge to a conf that breaks them, which is rendered as it is (the
type's own block, the top-level hashPolicies; a ring Envoy refuses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from meshplan.load.resources import PathKey
from meshplan.policies import EGRESS_TO, TO, placement_row
from meshplan.policies.base import Json
from meshplan.policies.conf import ConfReader, Setting
from meshplan.validate.check import FieldCheck

KIND = "MeshLoadBalancingStrategy"
PLACEMENT = placement_row(KIND, {TO}, {"egress"}, False, EGRESS_TO)  # the seed's placement table, for external services

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

T = TypeVar("T")


# --- the conf -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HashPolicy:
    type: str  # one of HASH_TYPES
    name: str | None  # Header and QueryParameter: the name; Cookie: its name; FilterState: the key
    ttl: str | None  # Cookie: as Envoy writes a duration
    path: str | None  # Cookie
    source_ip: bool  # Connection (SourceIP: always)
    terminal: bool


@dataclass(frozen=True)
class LeastRequest:
    choice_count: Setting[int] | None
    active_request_bias: Setting[Decimal] | None
    origins: tuple[str, ...]  # who set anything in the block


@dataclass(frozen=True)
class RingHash:
    hash_function: Setting[str] | None  # Envoy's: XX_HASH | MURMUR_HASH_2
    min_ring_size: Setting[int] | None
    max_ring_size: Setting[int] | None
    hash_policies: Setting[tuple[HashPolicy, ...]] | None


@dataclass(frozen=True)
class Maglev:
    table_size: Setting[int] | None
    hash_policies: Setting[tuple[HashPolicy, ...]] | None


@dataclass(frozen=True)
class LoadBalancer:
    lb_policy: Setting[str] | None  # Envoy's: ROUND_ROBIN | LEAST_REQUEST | RING_HASH | RANDOM | MAGLEV
    least_request: LeastRequest | None
    ring_hash: RingHash | None
    maglev: Maglev | None


@dataclass(frozen=True)
class Conf:
    load_balancer: LoadBalancer | None
    hash_policies: Setting[tuple[HashPolicy, ...]] | None  # the top-level ones
    locality_disabled: Setting[bool] | None  # changes nothing (one zone)
    local_zone: Setting[tuple[AffinityTag, ...]] | None  # localZone set: its affinity tags (possibly none)


@dataclass(frozen=True)
class AffinityTag:
    key: str
    weight: int  # as written, or Kuma's default for its position


def parse(conf: ConfReader) -> Conf:
    """A `default` (or what several merged to). The checks between fields of different items (a type and another
    type's block, minRingSize above maxRingSize, hashPolicies at both levels) are made on each item only: a merged conf
    may take them from different items, and is rendered as it is (the type's own block, the top-level hashPolicies)."""
    conf.unknown(("loadBalancer", "localityAwareness", "hashPolicies"))
    top_hash = _hash_policies(conf)
    lb = conf.section("loadBalancer", lambda r: _parse_load_balancer(r, top_level_hash=top_hash is not None))
    locality = conf.section("localityAwareness", _parse_locality)
    disabled, local_zone = (None, None) if locality is None else locality
    return Conf(lb, top_hash, disabled, local_zone)


def _parse_locality(locality: ConfReader) -> tuple[Setting[bool] | None, Setting[tuple[AffinityTag, ...]] | None]:
    locality.unknown(("disabled", "localZone", "crossZone"))
    disabled = locality.boolean("disabled")
    if "crossZone" in locality.raw:
        locality.fail("`crossZone` is not supported: meshplan renders a single zone, with no other zone to fail over "
                      "to (`localityAwareness.disabled` and `localZone` are accepted)", "crossZone")
    local_zone = locality.section("localZone", _parse_local_zone)
    return disabled, None if local_zone is None else Setting(local_zone, locality.origins("localZone"))


MAX_WEIGHT = 2**32 - 1  # Envoy's locality weights are uint32, and so must be their sum


def _parse_local_zone(zone: ConfReader) -> tuple[AffinityTag, ...]:
    zone.unknown(("affinityTags",))
    found = zone.entries("affinityTags", _parse_affinity_tag, not_a_mapping="must be a mapping with a `key`")
    raw = zone.raw.get("affinityTags")
    written = [t for t in raw if isinstance(t, dict)] if isinstance(raw, list) else []
    weighted = sum(1 for t in written if t.get("weight") is not None)
    if weighted and weighted != len(written):
        zone.fail("all or none affinity tags should have weight (as Kuma)", "affinityTags")
        return ()
    if found is None or len(found.value) != len(written):
        return ()
    count = len(found.value)
    if not weighted and count > 9:
        zone.fail(f"at most 9 affinity tags without weights, got {count} (Kuma's default weight of the first, 9 * "
                  f"10^(n-1), would not fit Envoy's 32-bit locality weight)", "affinityTags")
        return ()
    tags = tuple(AffinityTag(key, weight if weight is not None else 9 * 10 ** (count - i - 1))
                 for i, (key, weight) in enumerate(found.value))
    if sum(t.weight for t in tags) + 1 > MAX_WEIGHT:  # + the locality of weight 1 for the other endpoints
        zone.fail(f"the affinity tags' weights must add up to less than {MAX_WEIGHT} (Envoy's limit on the sum of "
                  "locality weights)", "affinityTags")
        return ()
    return tags


def _parse_affinity_tag(tag: ConfReader) -> tuple[str, int | None] | None:
    tag.unknown(("key", "weight"))
    key = tag.text("key", required=True)
    if key is not None and not key.value:
        tag.fail("must not be empty", "key")
        key = None
    weight = tag.integer("weight", minimum=1, maximum=MAX_WEIGHT)
    if key is None or (weight is None and tag.raw.get("weight") is not None):
        return None
    return key.value, None if weight is None else weight.value


def _parse_load_balancer(lb: ConfReader, *, top_level_hash: bool) -> LoadBalancer:
    lb.unknown(("type",) + tuple(TYPE_BLOCK.values()))
    kind = _value(lb.text("type", required=True))
    if kind is not None and kind not in LB_POLICY:
        lb.fail(f"must be one of {', '.join(LB_POLICY)}, got {kind!r}", "type")
        kind = None
    if lb.validating:
        for other, block in TYPE_BLOCK.items():
            if block in lb.raw and kind is not None and other != kind:
                lb.fail(f"`{block}` configures type {other}, but type is {kind}: it would be ignored", block)
    for block in ("roundRobin", "random"):
        lb.section(block, _parse_no_settings)
    least = lb.section("leastRequest", lambda r: _parse_least_request(r, lb.origins("leastRequest")))
    ring = lb.section("ringHash", lambda r: _parse_ring_hash(r, top_level_hash))
    maglev = lb.section("maglev", lambda r: _parse_maglev(r, top_level_hash))
    lb_policy = None if kind is None else Setting(LB_POLICY[kind], lb.origins("type"))
    return LoadBalancer(lb_policy, least, ring, maglev)


def _parse_no_settings(block: ConfReader) -> None:
    if block.raw:
        block.unknown(())


def _parse_least_request(least: ConfReader, origins: tuple[str, ...]) -> LeastRequest:
    least.unknown(("choiceCount", "activeRequestBias"))
    return LeastRequest(least.integer("choiceCount", minimum=2, maximum=2**32 - 1), least.number("activeRequestBias"),
                        origins)


def _parse_ring_hash(ring: ConfReader, top_level_hash: bool) -> RingHash:
    ring.unknown(("hashFunction", "minRingSize", "maxRingSize", "hashPolicies"))
    function = ring.choice("hashFunction", tuple(HASH_FUNCTIONS))
    low = ring.integer("minRingSize", minimum=1, maximum=MAX_RING_SIZE)
    high = ring.integer("maxRingSize", minimum=1, maximum=MAX_RING_SIZE)
    if ring.validating and low is not None and high is not None and low.value > high.value:
        ring.fail(f"must not be greater than maxRingSize ({low.value} > {high.value})", "minRingSize")
    hash_function = None if function is None else Setting(HASH_FUNCTIONS[function.value], function.origins)
    return RingHash(hash_function, low, high, _nested_hash_policies(ring, top_level_hash))


def _parse_maglev(maglev: ConfReader, top_level_hash: bool) -> Maglev:
    maglev.unknown(("tableSize", "hashPolicies"))
    size = maglev.integer("tableSize", minimum=1, maximum=MAX_TABLE_SIZE)
    if size is not None and not _is_prime(size.value):
        maglev.fail(f"must be a prime number (Envoy refuses others), got {size.value}", "tableSize")
        size = None
    return Maglev(size, _nested_hash_policies(maglev, top_level_hash))


def _nested_hash_policies(block: ConfReader, top_level_hash: bool) -> Setting[tuple[HashPolicy, ...]] | None:
    if block.validating and top_level_hash and isinstance(block.raw.get("hashPolicies"), list):
        block.fail("hashPolicies already specified in the root level (`default.hashPolicies`)", "hashPolicies")
    return _hash_policies(block)


def _hash_policies(conf: ConfReader) -> Setting[tuple[HashPolicy, ...]] | None:
    return conf.entries("hashPolicies", _parse_hash_policy, not_a_mapping="must be a mapping with a `type`")


def _parse_hash_policy(policy: ConfReader) -> HashPolicy | None:
    policy.unknown(("type", "terminal") + tuple(sorted(set(HASH_BLOCK.values()))))
    terminal = policy.boolean("terminal")
    kind = _value(policy.text("type", required=True))
    if kind is not None and kind not in HASH_TYPES:
        policy.fail(f"must be one of {', '.join(HASH_TYPES)}, got {kind!r}", "type")
        kind = None
    wanted = HASH_BLOCK.get(kind or "")
    for block in sorted(set(HASH_BLOCK.values())):
        if block in policy.raw and kind is not None and block != wanted:
            policy.fail(f"`{block}` is not used by a hash policy of type {kind}", block)
    if kind is None or wanted is None:
        return None
    if not policy.has(wanted):
        policy.fail(f"`{wanted}` is required")
    body = policy.section(wanted, lambda r: _parse_hash_body(r, kind))
    if body is None:
        return None
    return HashPolicy(kind, body.name, body.ttl, body.path, kind == "SourceIP" or body.source_ip,
                      bool(terminal and terminal.value))


def _parse_hash_body(body: ConfReader, kind: str) -> HashPolicy:
    """The block of a hash policy of type `kind` (the result's type and terminal are the policy's to fill in)."""
    name = ttl = path = None
    source_ip = False
    if kind in ("Header", "QueryParameter"):
        body.unknown(("name",))
        name = _name(body, "name")
    elif kind == "Cookie":
        body.unknown(("name", "ttl", "path"))
        name = _name(body, "name")
        ttl = _value(body.duration("ttl"))
        path = _value(body.text("path"))
        if path is not None and not path.startswith("/"):
            body.fail(f"must be an absolute path, got {path!r}", "path")
    elif kind in ("Connection", "SourceIP"):
        body.unknown(("sourceIP",))
        flag = body.boolean("sourceIP")
        source_ip = flag is not None and flag.value
        if kind == "SourceIP" and flag is not None and not flag.value:
            body.fail("type SourceIP hashes on the source IP: `sourceIP: false` contradicts it (use type Connection "
                      "to turn it off)", "sourceIP")
    else:  # FilterState
        body.unknown(("key",))
        name = _name(body, "key")
    return HashPolicy(kind, name, ttl, path, source_ip, False)


def _name(conf: ConfReader, key: str) -> str | None:
    value = _value(conf.text(key, required=True))
    if value is not None and not value.strip():
        conf.fail("must not be empty", key)
    return value


def _value(setting: Setting[T] | None) -> T | None:
    return None if setting is None else setting.value


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


# --- validation -------------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    parse(ConfReader(default, path, check))
