"""Desired mesh -> the Envoy resources every proxy should run (pure: paths under state/ are only referenced)."""

from __future__ import annotations

from pathlib import Path

from meshplan.model import Desired, ProxyConfig
from meshplan.render.egress import render_egress
from meshplan.render.sidecar import render_sidecar


def render_all(desired: Desired, state_dir: Path) -> list[ProxyConfig]:
    """Every proxy of the desired mesh, sidecars first then egresses, each in name order."""
    state_dir = state_dir.absolute()
    sidecars = [render_sidecar(desired, dp, state_dir) for dp in sorted(desired.dataplanes, key=lambda d: d.name)]
    egresses = [render_egress(desired, eg, state_dir) for eg in sorted(desired.egresses, key=lambda e: e.name)]
    return sidecars + egresses


__all__ = ["render_all", "render_sidecar", "render_egress"]
