"""MeshTrafficPermission's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from meshplan.envoy.types import (
    HTTP_RBAC,
    HTTP_RBAC_NAME,
    NETWORK_RBAC,
    NETWORK_RBAC_NAME,
    TLS_INSPECTOR,
    TLS_INSPECTOR_NAME,
)
from meshplan.match.matcher import Contribution, Destination, FromRule
from meshplan.model import Desired
from meshplan.policies import RULES
from meshplan.policies.base import InboundPoint, Json, ProxyBuild, hcm
from meshplan.policies.clients import (
    NONE,
    Clients,
    RuleMatch,
    all_of,
    any_of,
    label,
    mesh_of,
    negate,
    principal,
    rule_clients,
    rule_matches,
    stat_scope,
)
from meshplan.policies.conf import Setting
from meshplan.policies.traffic_permission.api import (
    ALLOW,
    ALLOW_WITH_SHADOW_DENY,
    DENY,
    KIND,
    RULE_LISTS,
    _merged_conf,
)

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
        written = [c for rule in rules for c in rule.merged.contributions if c.item.written_as == RULES]
        if written:
            _permit_rules(build, point, written)
            continue
        _permit(build, point, mesh, rules, DENY if forbidding else ALLOW)


def _permit_rules(build: ProxyBuild, point: InboundPoint, written: list[Contribution]) -> None:
    """Top-level `rules` (Kuma 2.12+), as Kuma's RBAC for inbound rules: a client matching any `deny` of any rule is
    denied; otherwise one matching any `allow` or `allowWithShadowDeny` is allowed; every other client is denied.
    Kuma then builds this from the rules only: a `from`-form permission selecting the same inbound takes no part
    (docs/policies.md). The shadow rules count `allowWithShadowDeny` as denied (stat `rbac.shadow_denied`)."""
    seen: set[tuple[str, int]] = set()
    unique = []
    for c in written:  # the Mesh rule and the more specific ones all hold the same rules items
        key = (f"{c.policy.kind}/{c.policy.name}", c.item.index)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    # Each list at its own line, as explain shows the merged fields.
    origins = sorted({str(c.origin((key,))) for c in unique for key in RULE_LISTS if key in c.item.default})
    config: Json = {"@type": HTTP_RBAC}
    manager = hcm(point.chain)
    if manager is None:
        config = {"@type": NETWORK_RBAC, "stat_prefix": f"{stat_scope(point.chain, point.listener)}."}
    build.set(config, "rules", _allowing(unique, ("allow", "allowWithShadowDeny"), ("deny",)), origins)
    if any(c.item.default.get("allowWithShadowDeny") for c in unique):
        shadow = _allowing(unique, ("allow",), ("deny", "allowWithShadowDeny"))
        build.set(config, "shadow_rules", shadow, origins)
    if manager is not None:
        manager["http_filters"].insert(0, {"name": HTTP_RBAC_NAME, "typed_config": config})
    else:
        point.chain["filters"].insert(0, {"name": NETWORK_RBAC_NAME, "typed_config": config})
    _read_server_name(build, point, unique)


def _read_server_name(build: ProxyBuild, point: InboundPoint, written: list[Contribution]) -> None:
    """Where a rule matches by `sni`, the inbound listener gets Envoy's TLS inspector, as Kuma adds it: without it
    Envoy leaves a connection's requested server name empty even though its TLS transport socket terminated the
    handshake, and no `sni` match would ever match. (The egress listener has it already: it picks an external
    service's filter chain by server name.)"""
    origins = sorted({str(c.origin((key,))) for c in written for key in RULE_LISTS
                      if any(m.get("sni") is not None for m in c.item.default.get(key) or [])})
    listener = build.listeners[point.listener]
    if not origins or any(f.get("name") == TLS_INSPECTOR_NAME for f in listener.get("listener_filters", [])):
        return
    inspector = {"name": TLS_INSPECTOR_NAME, "typed_config": {"@type": TLS_INSPECTOR}}
    build.set(listener, "listener_filters", [*listener.get("listener_filters", []), inspector], origins)


def _allowing(written: list[Contribution], allow: tuple[str, ...], deny: tuple[str, ...]) -> Json:
    """An ALLOW RBAC: the clients any rule allows minus those any rule denies; nobody else.

    A match may name the client's certificate (a principal) and the server name it sent (`sni`, an RBAC permission
    `requested_server_name`), both to match. One RBAC policy is (any permission) AND (any principal), so the rules
    are split by server name, which a connection has one of: a policy per `sni` value the rules name, whose clients
    are what the matches without `sni` or with that one allow, minus what they deny; and one for every other server
    name, from the matches without `sni`. Without any `sni` that last one is the single policy `rules`."""
    allowed = [m for c in written for m in rule_matches(c.item.default, allow)]
    denied = [m for c in written for m in rule_matches(c.item.default, deny)]
    names = sorted({m.sni for m in allowed + denied if m.sni is not None})
    policies: Json = {}
    for name in names:
        who = _who([m for m in allowed if m.sni in (None, name)], [m for m in denied if m.sni in (None, name)])
        if who is not None:
            policies[f"rules sni {name}"] = {"permissions": [{"requested_server_name": {"exact": name}}],
                                             "principals": [who]}
    who = _who([m for m in allowed if m.sni is None], [m for m in denied if m.sni is None])
    if who is not None and not names:
        policies["rules"] = {"permissions": [{"any": True}], "principals": [who]}
    elif who is not None:
        named = [{"requested_server_name": {"exact": name}} for name in names]
        other = named[0] if len(named) == 1 else {"or_rules": {"rules": named}}
        policies["rules other sni"] = {"permissions": [{"not_rule": other}], "principals": [who]}
    return {"action": "ALLOW", "policies": policies}


def _who(allowed: list[RuleMatch], denied: list[RuleMatch]) -> Json | None:
    """The principal of the clients `allowed` takes and `denied` does not (their server name already decided);
    None: nobody."""
    if not allowed or any(m.principal is None for m in denied):
        return None
    who: Json = {"any": True}
    if all(m.principal is not None for m in allowed):
        who = {"or_ids": {"ids": [m.principal for m in allowed]}}
    if denied:
        who = {"and_ids": {"ids": [who, {"not_id": {"or_ids": {"ids": [m.principal for m in denied]}}}]}}
    return who


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
