"""MeshTrace (one top-level `default`): distributed tracing on the selected sidecars.

Placement (the seed's table): "Out of scope (single item)" for external services; on the egress it is refused
(validate/policy_rules.py). `api.py` is the conf (parse, validation), `envoy.py` what it sets in Envoy.
"""

from __future__ import annotations

from meshplan.policies import OUT_OF_SCOPE, SINGLE, placement_row
from meshplan.policies.base import validator
from meshplan.policies.trace.api import parse
from meshplan.policies.trace.envoy import KIND, apply

# Run order on a proxy (registry.py): after every kind that builds or swaps an HTTP connection manager (the routes,
# the inbound filters, the loggers); it only adds `tracing` to each manager and a cluster no other kind reads.
ORDER = 65
PLACEMENT = placement_row(KIND, {SINGLE}, set(), False, OUT_OF_SCOPE)  # the seed's table, for external services
check_references = None  # it names no other resource
validate = validator(parse)  # its parse reports every violation


__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
