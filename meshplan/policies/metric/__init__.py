"""MeshMetric (one top-level `default`): a Prometheus metrics endpoint on each selected sidecar.

Placement (the seed's table): "Out of scope (single item)" for external services; on the egress it is refused
(validate/policy_rules.py). `api.py` is the conf (parse, validation, what needs kuma-dp), `envoy.py` what it adds.
"""

from __future__ import annotations

from meshplan.policies import OUT_OF_SCOPE, SINGLE, placement_row
from meshplan.policies.base import validator
from meshplan.policies.metric.api import parse
from meshplan.policies.metric.envoy import KIND, apply

# Run order on a proxy (registry.py): it adds a listener and a cluster of its own, which no other kind reads or
# changes; after all of them, so that a kind that walks every listener never sees the metrics endpoint.
ORDER = 120
PLACEMENT = placement_row(KIND, {SINGLE}, set(), False, OUT_OF_SCOPE)  # the seed's table, for external services
check_references = None  # it names no other resource
validate = validator(parse)  # its parse reports every violation


__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
