"""MeshTCPRoute as one value the registry lists (policies/registry.py): its API side (api.py: the typed conf,
parsing, validation, placement row) and its Envoy side (envoy.py)."""

from __future__ import annotations

from meshplan.policies.tcp_route.api import KIND, PLACEMENT, check_references, validate
from meshplan.policies.tcp_route.envoy import apply

ORDER = 20  # after MeshHTTPRoute (which wins on an HTTP outbound), before anything tunes the filter it swaps in

__all__ = ["KIND", "ORDER", "PLACEMENT", "apply", "check_references", "validate"]
