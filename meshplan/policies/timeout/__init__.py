"""MeshTimeout as one value the registry lists (policies/registry.py): its API side (api.py: the typed conf,
parsing, validation, placement row) and its Envoy side (envoy.py)."""

from __future__ import annotations

from meshplan.policies.timeout.api import KIND, PLACEMENT, validate
from meshplan.policies.timeout.envoy import apply

ORDER = 70  # the outbound and inbound settings, on clusters and routes the routes kinds made
check_references = None  # it names no other resource

__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
