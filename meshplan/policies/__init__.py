"""What every policy kind shares: the shape of a placement row (each kind declares its own), and the rows of the kinds
that have no module yet. The table itself, every kind's row, is `registry.KINDS`.

The placement follows the table in the MeshExternalService/ZoneEgress seed: for traffic to a MeshExternalService a
policy is implemented on the sidecar (`to`), on the egress (`to` with proxyType ["egress"]), on the egress's inbound
for that external service (top-level `kind: MeshExternalService`, `from`, proxyType ["egress"]), or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass

TO = "to"
FROM = "from"
SINGLE = "single"  # a policy with one top-level `default`, no to/from
RULES = "rules"  # Kuma 2.12+'s top-level inbound `rules`: read as `from` items of kind Mesh (PolicyItem.written_as)

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


def placement_row(name: str, sections: set[str], external_to: set[str], external_from: bool,
                  placement: str) -> PolicyKind:
    """A kind's row of the placement table; each kind declares its own (`PLACEMENT` in its api.py)."""
    return PolicyKind(name, frozenset(sections), frozenset(external_to), external_from, placement)


# The kinds whose Kuma v2.14.3 validators accept an empty `to` list (kumahq/kuma#16212, "an override to disable
# inherited rules"): valid, and it configures nothing, since Kuma's rules (and meshplan's merge) take each `to` item
# on its own; `match.unused` warns about it rather than let it pass as if it cleared anything.
EMPTY_TO_KINDS = frozenset({"MeshRetry", "MeshLoadBalancingStrategy"})

# Route kinds carry `rules` in their `to` items instead of a `default`.
ROUTE_KINDS = frozenset({"MeshHTTPRoute", "MeshTCPRoute"})

# What a policy that targets a MeshHTTPRoute sets on that route's Envoy routes, per kind (Kuma v2.14.3's plugins read
# nothing else there): the fields of a `default`, dotted. Validation refuses the rest; the match keeps only these.
ROUTE_FIELDS: dict[str, tuple[str, ...]] = {
    "MeshTimeout": ("http.requestTimeout", "http.streamIdleTimeout"),
    "MeshRetry": ("http", "grpc"),
    "MeshLoadBalancingStrategy": ("hashPolicies",),
}
