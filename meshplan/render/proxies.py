"""Render every proxy: its base resources, then every policy module in the registry's order."""

from __future__ import annotations

from meshplan.model import Desired, ProxyConfig
from meshplan.policies.base import ProxyBuild
from meshplan.policies.registry import MODULES
from meshplan.render.egress import build_egress
from meshplan.render.sidecar import build_sidecar


def apply_policies(build: ProxyBuild) -> ProxyConfig:
    for module in MODULES:
        # Every module runs, with or without policies of its kind: some defaults need none (the egress's
        # defaultForbidMeshExternalServiceAccess).
        module.apply(build, [p for p in build.desired.policies if p.kind == module.KIND])
    return build.finish()


def render_all(desired: Desired) -> list[ProxyConfig]:
    """Every proxy of the desired mesh, sidecars first then egresses, each in name order."""
    builds = [build_sidecar(desired, dp) for dp in sorted(desired.dataplanes, key=lambda d: d.name)]
    builds += [build_egress(desired, eg) for eg in sorted(desired.egresses, key=lambda e: e.name)]
    return [apply_policies(build) for build in builds]

