"""Render every proxy: its base resources, then every policy module in the registry's order."""

from __future__ import annotations

import dataclasses

from meshplan.match.behaviour import facts
from meshplan.match.result import match_proxy
from meshplan.model import Dataplane, Desired, ProxyConfig, ZoneEgress
from meshplan.policies.base import ProxyBuild
from meshplan.policies.registry import KINDS, MODULES
from meshplan.render.egress import build_egress
from meshplan.render.sidecar import build_sidecar


def apply_policies(build: ProxyBuild) -> ProxyConfig:
    """The proxy's resources, and what its matched policies mean (the facts a plan's behaviour summary compares)."""
    config = applied(build).finish()
    meaning = tuple(fact.to_json() for fact in facts(build.desired, build.match, build.proxy))
    return dataclasses.replace(config, behaviour=meaning)


def applied(build: ProxyBuild) -> ProxyBuild:
    """The build after every module ran on it (its marks say which policy set which field: `explain` reads them)."""
    for module in MODULES:
        # Every module runs, with or without policies of its kind: some defaults need none (the egress's
        # defaultForbidMeshExternalServiceAccess).
        module.apply(build)
    return build


def build_proxy(desired: Desired, proxy: Dataplane | ZoneEgress) -> ProxyBuild:
    """One proxy's base resources (and its match), before the policy modules run."""
    match = match_proxy(desired, proxy, KINDS)
    return build_sidecar(desired, proxy, match) if isinstance(proxy, Dataplane) else build_egress(desired, proxy, match)


def render_all(desired: Desired) -> list[ProxyConfig]:
    """Every proxy of the desired mesh, sidecars first then egresses, each in name order."""
    builds = [build_proxy(desired, dp) for dp in sorted(desired.dataplanes, key=lambda d: d.name)]
    builds += [build_proxy(desired, eg) for eg in sorted(desired.egresses, key=lambda e: e.name)]
    return [apply_policies(build) for build in builds]
