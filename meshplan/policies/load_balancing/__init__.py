"""MeshLoadBalancingStrategy as one value the registry lists (policies/registry.py): its API side (api.py: the typed conf,
parsing, validation, placement row) and its Envoy side (envoy.py)."""

from __future__ import annotations

from meshplan.policies.load_balancing.api import KIND, PLACEMENT, validate
from meshplan.policies.load_balancing.envoy import apply

ORDER = 110  # last: it reads the clusters and routes as the others left them
check_references = None  # it names no other resource

__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
