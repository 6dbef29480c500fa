"""MeshTrafficPermission's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from meshplan.envoy.types import HTTP_RBAC, HTTP_RBAC_NAME, NETWORK_RBAC, NETWORK_RBAC_NAME
from meshplan.match.matcher import Destination, FromRule
from meshplan.model import Desired
from meshplan.policies.base import InboundPoint, Json, ProxyBuild, hcm
from meshplan.policies.clients import (
    NONE,
    Clients,
    all_of,
    any_of,
    label,
    mesh_of,
    negate,
    principal,
    rule_clients,
    stat_scope,
)
from meshplan.policies.conf import Setting
from meshplan.policies.traffic_permission.api import ALLOW, ALLOW_WITH_SHADOW_DENY, DENY, KIND, _merged_conf

# --- rendering ------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    for point in build.inbounds:
        mesh = mesh_of(build.proxy, point.target)
        if not build.desired.mesh(mesh).mtls:
            continue  # no client certificate, no identity to permit or deny
        rules = build.match.from_(KIND, point.target)
        forbidding = isinstance(point.target, Destination) and build.desired.mesh(mesh).forbid_external_by_default
        if not rules and not forbidding:
            continue
        _permit(build, point, mesh, rules, DENY if forbidding else ALLOW)


def _permit(build: ProxyBuild, point: InboundPoint, mesh: str, rules: list[FromRule], default: str) -> None:
    clients = rule_clients(build.desired, mesh, rules)
    actions = [_merged_conf(rule).action for rule in rules]
    origins = sorted({o for action in actions for o in action.origins})
    if default == DENY:
        origins = sorted({*origins, _forbid_origin(build.desired, mesh)})
    config: Json = {"@type": HTTP_RBAC}
    manager = hcm(point.chain)
    if manager is None:
        config = {"@type": NETWORK_RBAC, "stat_prefix": f"{stat_scope(point.chain, point.listener)}."}
    build.set(config, "rules", _rbac(build, rules, actions, clients, default, denying={DENY}), origins)
    if any(action.value == ALLOW_WITH_SHADOW_DENY for action in actions):
        shadow = _rbac(build, rules, actions, clients, default, denying={DENY, ALLOW_WITH_SHADOW_DENY})
        build.set(config, "shadow_rules", shadow, origins)
    # First: a request or connection that is not permitted should cost nothing else (no fault, no rate-limit token).
    if manager is not None:
        manager["http_filters"].insert(0, {"name": HTTP_RBAC_NAME, "typed_config": config})
    else:
        point.chain["filters"].insert(0, {"name": NETWORK_RBAC_NAME, "typed_config": config})


def _rbac(build: ProxyBuild, rules: list[FromRule], actions: list[Setting[str]], clients: list[Clients], default: str,
          denying: set[str]) -> Json:
    """An RBAC (envoy.config.rbac.v3.RBAC) listing the rules whose effect differs from the default."""
    denies = [action.value in denying for action in actions]
    default_denies = default in denying
    policies: Json = {}
    for i, rule in enumerate(rules):
        if denies[i] == default_denies:
            continue
        # The clients this rule is the first match for. Earlier rules with the same effect need not be taken out:
        # the union over the listed rules is the same either way, and the principals stay short.
        taken = any_of(clients[j] for j in range(i) if denies[j] != denies[i])
        who = all_of([clients[i], negate(taken)])
        if who == NONE:
            continue
        name = f"{actions[i].value} {label(rule.client)}"
        policy = {"permissions": [{"any": True}], "principals": [principal(who)]}
        build.set(policies, name, policy, actions[i].origins)
    return {"action": "ALLOW" if default_denies else "DENY", "policies": policies}


def _forbid_origin(desired: Desired, mesh: str) -> str:
    source = desired.mesh(mesh).source
    where = f" ({source})" if source is not None else ""
    return f"Mesh/{mesh} routing.defaultForbidMeshExternalServiceAccess{where}"
