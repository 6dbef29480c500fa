"""MeshHealthCheck as one value the registry lists (policies/registry.py): its API side (api.py: the typed conf,
parsing, validation, placement row) and its Envoy side (envoy.py)."""

from __future__ import annotations

from meshplan.policies.health_check.api import KIND, PLACEMENT, validate
from meshplan.policies.health_check.envoy import apply

ORDER = 100  # after MeshCircuitBreaker (see there)
check_references = None  # it names no other resource

__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
