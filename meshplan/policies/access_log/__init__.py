"""MeshAccessLog as one value the registry lists (policies/registry.py): its API side (api.py: the typed conf,
parsing, validation, placement row) and its Envoy side (envoy.py)."""

from __future__ import annotations

from meshplan.policies.access_log.api import KIND, PLACEMENT, validate
from meshplan.policies.access_log.envoy import apply

ORDER = 60  # after the inbound filters; it adds loggers, which no other kind reads
check_references = None  # it names no other resource

__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
