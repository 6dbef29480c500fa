"""MeshHTTPRoute as one value the registry lists (policies/registry.py): its API side (api.py: the typed rules,
parsing, validation, reference checks, placement row) and its Envoy side (envoy.py)."""

from __future__ import annotations

from meshplan.policies.http_route.api import KIND, PLACEMENT, check_references, validate
from meshplan.policies.http_route.envoy import apply

ORDER = 10  # first: its routes and backend clusters are what the other kinds then tune

__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
