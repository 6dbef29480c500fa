"""MeshTrafficPermission as one value the registry lists (policies/registry.py): its API side (api.py: the typed conf,
parsing, validation, placement row) and its Envoy side (envoy.py)."""

from __future__ import annotations

from meshplan.policies.traffic_permission.api import KIND, PLACEMENT, validate
from meshplan.policies.traffic_permission.envoy import apply

ORDER = 30  # first of the inbound filters: RBAC goes first in the chain, so a denied request costs nothing else
check_references = None  # it names no other resource

__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
