"""MeshTrafficPermission (`from`): which clients may reach an inbound, enforced by Envoy RBAC on its filter chain.

Where: every sidecar inbound the top-level targetRef selects, and on the egress the filter chain of one external
service (top-level `kind: MeshExternalService`, `proxyType: ["Egress"]`: the seed's placement table). An HTTP chain
gets `envoy.filters.http.rbac` first among its HTTP filters (before the router); any other chain gets
`envoy.filters.network.rbac` first among its network filters (before tcp_proxy). A denied HTTP request is answered
403 `RBAC: access denied` (stat `http.<hcm stat prefix>.rbac.denied`); a denied TCP connection is closed (stat
`<chain>.rbac.denied`).

Fields of `from[].default`:
    action: Allow | Deny | AllowWithShadowDeny      required, as in Kuma

Clients are identified by the peer certificate (policies/clients.py): `principal_name` exact matches of URI SANs,
combined with `and_ids` / `or_ids` / `not_id`. Every `from` rule is a client subset; a client takes the first rule
it matches, most specific first (match.merge_from), so that a Deny for `MeshService web` beats an Allow for `Mesh`
in the same policy, and between policies the ordering decides (DESIGN.md: top-level kind, then the from-item's kind,
then name; the alphabetically smallest name wins a tie).

Defaults (issue 6, item 3):
- An inbound no MeshTrafficPermission selects is open: no RBAC filter, as Kuma's default `allow-all` policy gives.
- A client that no `from` rule selects is treated as if that `allow-all` policy (`from: Mesh, action: Allow`) were
  the least specific rule: allowed. To admit only some clients, add a `from` item of kind Mesh with action Deny (the
  seed's own example does).
- On the egress, for an external service whose mesh sets `routing.defaultForbidMeshExternalServiceAccess: true`,
  that implicit rule denies instead: the external service is closed to every client that no permission allows, and
  to all of them when no permission selects it. (Rendering it needs `apply` to run even when the desired mesh has no
  MeshTrafficPermission at all; see render.apply_policies.)
- AllowWithShadowDeny allows; the shadow rules (`shadow_rules`, same construction with it counted as Deny) record
  what a Deny would do: stat `rbac.shadow_denied`, as Kuma does.
- A mesh without mTLS has no client identity to check: the policy changes nothing there, as in Kuma.

Rendering: with the default Allow, `rules.action: DENY` lists one policy per rule whose action denies, each
principal being that rule's clients minus those an earlier (more specific) allowing rule took; with the default
Deny, `rules.action: ALLOW` lists the allowing rules the same way. Policies are named `<action> <clients>`
(`Deny MeshService:web`); every `permissions` is `any: true`.

The conf: `parse` (policies/conf.py) is the one reader of `action`, for an item's `default` (validate) and for what
a rule's items merged to (render, which reads each rule's `Conf` with its origins, never the raw dict).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplan.envoy.types import (
    HTTP_RBAC,
    HTTP_RBAC_NAME,
    NETWORK_RBAC,
    NETWORK_RBAC_NAME,
)
from meshplan.load.resources import PathKey
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
from meshplan.policies.conf import ConfReader, Setting
from meshplan.validate.check import FieldCheck

KIND = "MeshTrafficPermission"
ORDER = 30  # run order on a proxy (registry.py): first of the inbound filters: RBAC goes first in the chain, so a denied request costs nothing else

ALLOW = "Allow"
DENY = "Deny"
ALLOW_WITH_SHADOW_DENY = "AllowWithShadowDeny"
ACTIONS = (ALLOW, DENY, ALLOW_WITH_SHADOW_DENY)


# --- the conf -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conf:
    action: Setting[str]  # one of ACTIONS


def parse(conf: ConfReader) -> Conf | None:
    """A `default` (or what several merged to): None, with a violation, without a valid `action`."""
    conf.unknown(("action",))
    action = conf.choice("action", ACTIONS) if conf.required("action") else None
    return None if action is None else Conf(action)


def _merged_conf(rule: FromRule) -> Conf:
    conf = parse(ConfReader.of_merged(rule.merged))
    assert conf is not None  # its items were valid, so parse raised MergedConfError rather than refuse it
    return conf


# --- validation -----------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    parse(ConfReader(default, path, check))


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
