"""MeshRetry as one value the registry lists (policies/registry.py): its API side (api.py: the typed conf,
parsing, validation, placement row) and its Envoy side (envoy.py)."""

from __future__ import annotations

from meshplan.policies.retry.api import KIND, PLACEMENT, validate
from meshplan.policies.retry.envoy import apply

ORDER = 80  # after MeshTimeout: per-try timeouts sit on the routes it configured
check_references = None  # it names no other resource

__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
