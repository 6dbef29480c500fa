"""The policy kinds meshplan knows, and where each is implemented for external traffic.

The placement follows the table in the MeshExternalService/ZoneEgress seed: for traffic to a MeshExternalService a
policy is implemented on the sidecar (`to`), on the egress (`to` with proxyType ["egress"]), on the egress's inbound
for that external service (top-level `kind: MeshExternalService`, `from`, proxyType ["egress"]), or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass

TO = "to"
FROM = "from"
SINGLE = "single"  # a policy with one top-level `default`, no to/from

EGRESS_TO = 'Egress (to + proxyType: ["egress"])'
EGRESS_FROM = 'Egress (kind: MeshExternalService, from, proxyType: ["egress"])'
SIDECAR_TO = "Sidecar (to)"
BOTH_TO = 'Sidecar (to), Egress (to + proxyType: ["egress"])'
OUT_OF_SCOPE = "Out of scope (single item)"


@dataclass(frozen=True)
class PolicyKind:
    name: str
    sections: frozenset[str]
    # Proxy types on which a `to` item naming a MeshExternalService is implemented (empty: nowhere).
    external_to: frozenset[str]
    # Whether the egress's inbound for an external service can be targeted (top-level kind MeshExternalService + from).
    external_from: bool
    # The seed table's answer, quoted in every placement error.
    placement: str


def _kind(name: str, sections: set[str], external_to: set[str], external_from: bool, placement: str) -> PolicyKind:
    return PolicyKind(name, frozenset(sections), frozenset(external_to), external_from, placement)


KINDS: dict[str, PolicyKind] = {
    k.name: k
    for k in [
        _kind("MeshAccessLog", {TO, FROM}, {"sidecar", "egress"}, False, BOTH_TO),
        _kind("MeshCircuitBreaker", {TO}, {"egress"}, False, EGRESS_TO),
        _kind("MeshFaultInjection", {FROM}, set(), True, EGRESS_FROM),
        _kind("MeshHealthCheck", {TO}, {"egress"}, False, EGRESS_TO),
        _kind("MeshMetric", {SINGLE}, set(), False, OUT_OF_SCOPE),
        _kind("MeshProxyPatch", {SINGLE}, set(), False, OUT_OF_SCOPE),
        _kind("MeshRateLimit", {FROM}, set(), True, EGRESS_FROM),
        _kind("MeshRetry", {TO}, {"sidecar"}, False, SIDECAR_TO),
        _kind("MeshTimeout", {TO, FROM}, {"sidecar", "egress"}, False, BOTH_TO),
        _kind("MeshTrace", {SINGLE}, set(), False, OUT_OF_SCOPE),
        _kind("MeshTrafficPermission", {FROM}, set(), True, EGRESS_FROM),
        _kind("MeshLoadBalancingStrategy", {TO}, {"egress"}, False, EGRESS_TO),
        _kind("MeshTCPRoute", {TO}, {"sidecar"}, False, SIDECAR_TO),
        _kind("MeshHTTPRoute", {TO}, {"sidecar"}, False, SIDECAR_TO),
    ]
}

# Route kinds carry `rules` in their `to` items instead of a `default`.
ROUTE_KINDS = frozenset({"MeshHTTPRoute", "MeshTCPRoute"})
