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

Top-level `rules` (Kuma 2.12+): `rules[].default` holds `deny` / `allow` / `allowWithShadowDeny` lists of matches,
each `spiffeID: {type: Exact|Prefix, value}`, `sni: {type: Exact, value}` or both (AND) (`validate_rule`). Where a
`rules`-form permission selects an inbound, its RBAC is built from the rules alone, as Kuma's RBAC for inbound
rules: any deny match denies, else any allow / allowWithShadowDeny match allows, else denied (envoy._permit_rules;
`principal_name` exact or prefix on the certificate's URI SAN, `spiffe://<mesh>/<service>`; an `sni` is the
permission `requested_server_name`, which Envoy fills only with the TLS inspector on the listener, so the inbound
gets it, as Kuma adds it). meshplan's sidecars send `<service>.<mesh>.mesh` (names.service_sni).

The conf: `parse` (policies/conf.py) is the one reader of `action`, for an item's `default` (validate) and for what
a rule's items merged to (render, which reads each rule's `Conf` with its origins, never the raw dict).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshplan.load.resources import PathKey
from meshplan.match.matcher import FromRule
from meshplan.policies import EGRESS_FROM, FROM, RULES, placement_row
from meshplan.policies.base import Json
from meshplan.policies.conf import ConfReader, Setting
from meshplan.validate.check import FieldCheck

KIND = "MeshTrafficPermission"
PLACEMENT = placement_row(KIND, {FROM}, set(), True, EGRESS_FROM)  # the seed's placement table, for external services

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
    if section == RULES:  # a top-level rule's `default`: SPIFFE ID lists, not an action
        validate_rule(default, path, check, check.res.mesh or "default")
        return
    parse(ConfReader(default, path, check))


# --- top-level `rules` (Kuma 2.12+) ------------------------------------------------------------------------------

RULE_LISTS = ("deny", "allow", "allowWithShadowDeny")  # Kuma's order of evaluation: any deny first, then any allow
_SPIFFE = re.compile(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def validate_rule(default: Json, path: PathKey, check: FieldCheck, mesh: str) -> None:
    """A `rules[i].default` as Kuma's validator checks it (at least one list; each match a valid SPIFFE ID), and
    refused where meshplan's certificates could never match it: they carry `spiffe://<mesh>/<service>`
    (xds/pki.py), so an ID of another trust domain (e.g. Kuma's MeshIdentity `spiffe://<td>/ns/<ns>/sa/<sa>`) would
    silently match no client."""
    check.unknown(default, path, RULE_LISTS)
    if not any(default.get(key) for key in RULE_LISTS):
        check.fail(path[:-1], "at least one of 'allow', 'allowWithShadowDeny', 'deny' has to be defined")
    ours = f"spiffe://{mesh}/"
    for key in RULE_LISTS:
        for j, match in enumerate(check.field(default, path, key, list, default=[])):
            mp = path + (key, j)
            if not isinstance(match, dict):
                check.fail(mp, "must be a mapping")
                continue
            check.unknown(match, mp, ("spiffeID", "sni"))
            if "sni" in match:
                _validate_sni(match, mp, check)
            if "spiffeID" not in match:
                if "sni" not in match:
                    check.fail(mp, "must specify at least one of 'spiffeID' or 'sni'")
                continue
            spiffe = check.field(match, mp, "spiffeID", dict, default={})
            sp = mp + ("spiffeID",)
            check.unknown(spiffe, sp, ("type", "value"))
            kind = spiffe.get("type")
            if kind in (None, ""):
                check.fail(sp + ("type",), "must be set")
            elif kind not in ("Exact", "Prefix"):
                check.fail(sp + ("type",), f"unrecognized type {kind!r}, supported values are: Exact, Prefix")
            value = check.field(spiffe, sp, "value", str, required=True)
            if value is None:
                continue
            if not _SPIFFE.fullmatch(value):
                check.fail(sp, f"must be a valid Spiffe ID, got {value!r} (spiffe://<trust domain>/<path>)")
            elif not (value + "/").startswith(ours) and not (kind == "Prefix" and ours.startswith(value)):
                check.fail(sp + ("value",), f"matches no client: meshplan's certificates carry "
                           f"spiffe://{mesh}/<service> (the mesh is the trust domain, as Kuma's mTLS without "
                           f"MeshIdentity), not {value!r}")


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
MAX_SUBDOMAIN = 253


def _validate_sni(match: Json, mp: PathKey, check: FieldCheck) -> None:
    """An `sni` match as Kuma's ValidateMatch checks it: `type` Exact (the only one), `value` a lowercase RFC 1123
    subdomain (the server name a client's TLS handshake carries; meshplan's sidecars send names.service_sni)."""
    sni = check.field(match, mp, "sni", dict)
    if sni is None:  # a wrong type is reported by check.field
        if match.get("sni") is None:
            check.fail(mp + ("sni",), "must be a mapping with `type` and `value`")
        return
    sp = mp + ("sni",)
    check.unknown(sni, sp, ("type", "value"))
    kind = check.field(sni, sp, "type", str)
    if kind in (None, "") and sni.get("type") in (None, ""):
        check.fail(sp + ("type",), "must be set")
    elif kind is not None and kind != "Exact":
        check.fail(sp + ("type",), f"unrecognized type {kind!r}, supported values are: Exact")
    value = check.field(sni, sp, "value", str)
    if value in (None, "") and sni.get("value") in (None, ""):
        check.fail(sp + ("value",), "must be set")
    elif value is not None and (len(value) > MAX_SUBDOMAIN or not _DNS_SUBDOMAIN.fullmatch(value)):
        check.fail(sp + ("value",), f"{value!r} is not a lowercase RFC 1123 subdomain of at most {MAX_SUBDOMAIN} "
                   "characters (lower case alphanumeric characters, '-' or '.', starting and ending with an "
                   "alphanumeric character, e.g. 'backend.default.mesh')")
