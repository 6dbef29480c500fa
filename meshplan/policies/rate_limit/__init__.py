"""MeshRateLimit as one value the registry lists (policies/registry.py): its API side (api.py: the typed conf,
parsing, validation, placement row) and its Envoy side (envoy.py)."""

from __future__ import annotations

from meshplan.policies.rate_limit.api import KIND, PLACEMENT, validate
from meshplan.policies.rate_limit.envoy import apply

ORDER = 50  # after RBAC: a request or connection that is not permitted takes no token
check_references = None  # it names no other resource

__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
