"""MeshProxyPatch: Kuma's escape hatch, modifications of the Envoy resources meshplan renders for a sidecar
(clusters, listeners, network filters, HTTP filters, virtual hosts), applied after every other kind.

`api.py` is the conf (parsing and validation), `envoy.py` applies it. The kind has one top-level `default` (no
`to`/`from`); the placement table puts it out of scope for external services, so it is rejected on the egress.
"""

from __future__ import annotations

from meshplan.load.resources import PathKey
from meshplan.policies import KINDS
from meshplan.policies.base import Json, ProxyBuild
from meshplan.policies.conf import ConfReader
from meshplan.policies.proxy_patch import api, envoy
from meshplan.validate.check import FieldCheck

KIND = "MeshProxyPatch"
# Run order on a proxy (registry.py): last of all, as Kuma applies it after every other plugin, so a patch sees
# (and can change or remove) what any other kind rendered, and nothing undoes it.
ORDER = 1000
PLACEMENT = KINDS[KIND]  # the placement row: one top-level `default`; out of scope for external services

selected = envoy.selected
conf_of = envoy.conf_of


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    api.parse(ConfReader(default, path, check))


def apply(build: ProxyBuild) -> None:
    envoy.apply(build)
