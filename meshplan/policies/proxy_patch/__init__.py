"""MeshProxyPatch: Kuma's escape hatch, modifications of the Envoy resources meshplan renders for a sidecar
(clusters, listeners, network filters, HTTP filters, virtual hosts), applied after every other kind.

`api.py` is the conf (parsing and validation), `envoy.py` applies it. The kind has one top-level `default` (no
`to`/`from`); the placement table puts it out of scope for external services, so it is rejected on the egress.
"""

from __future__ import annotations

from meshplan.model import Policy
from meshplan.policies import OUT_OF_SCOPE, SINGLE, placement_row
from meshplan.policies.base import ProxyBuild, validator
from meshplan.policies.conf import ConfReader
from meshplan.policies.proxy_patch import api, envoy

KIND = "MeshProxyPatch"
# Run order on a proxy (registry.py): last of all, as Kuma applies it after every other plugin, so a patch sees
# (and can change or remove) what any other kind rendered, and nothing undoes it.
ORDER = 1000
# The placement row: one top-level `default`; out of scope for external services (the seed's table).
PLACEMENT = placement_row(KIND, {SINGLE}, set(), False, OUT_OF_SCOPE)
check_references = None  # it names no other resource

selected = envoy.selected


def conf_of(policy: Policy) -> api.Conf:
    """A validated policy's conf, read from its own `default` (nothing is merged for this kind)."""
    conf = api.parse(ConfReader.of_single(policy.spec["default"]))
    assert conf is not None, f"{policy.name}: a validated MeshProxyPatch without modifications"
    return conf


validate = validator(api.parse)


def apply(build: ProxyBuild) -> None:
    added: set[tuple[str, str]] = set()  # what the modifications added, across the proxy's policies
    for policy in envoy.selected(build):
        for modification in conf_of(policy).modifications.value:
            envoy.modify(build, policy, modification, added)
