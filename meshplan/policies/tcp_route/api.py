"""MeshTCPRoute (`to`, sidecars only): where the connections of an outbound go.

    to:
      - targetRef: {kind: MeshService, name: db}          # or MeshExternalService (with proxyType, seed)
        rules:
          - default:
              backendRefs:
                - {kind: MeshService, name: db-v2, weight: 90}
                - {kind: MeshServiceSubset, name: db, tags: {version: v1}, weight: 10}

Envoy: the outbound's `envoy.filters.network.tcp_proxy` gets `cluster` (one backend) or
`weighted_clusters.clusters[{name, weight}]` (several). A backend the proxy has no cluster for gets one, and an
OutboundPoint, as described in backend_refs.py.

Kuma 2.x semantics, where the seeds are silent:
- at most one rule (there are no matches to tell rules apart); no rules means the `to` destination itself;
- `backendRefs` is required in a rule; weight defaults to 1, and a backend of weight 0 is left out (Envoy's TCP
  weights start at 1); merging across policies replaces the rule whole, the most specific policy winning;
- on an HTTP outbound, a MeshTCPRoute applies only when no MeshHTTPRoute does; it then turns the outbound into a
  plain TCP proxy (the HTTP connection manager is replaced by a tcp_proxy with the same stat prefix, and the
  OutboundPoint's protocol becomes `tcp`), as Kuma generates a TCP listener for it;
- the `to` targetRef must be a MeshService or MeshExternalService.

The conf (policies/conf.py): `parse` is the one reader of an item's `{"rules": [...]}`, for validation (every
violation at its path; the `to` targetRef is checked by `validate`, before it) and for render, which reads what the
items merged to as a `Conf`: the rules, one Setting whose origins are the list's, each rule's backends read by
backend_refs.read_backend_refs (the shared checks, then each ref as a Backend). A merged conf's backends are not
checked for their placement again: that needs the policy's top-level targetRef, which a merged conf has not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshplan.load.resources import PathKey
from meshplan.model import Desired, Policy
from meshplan.policies import SIDECAR_TO, TO, placement_row
from meshplan.policies import backend_refs as refs
from meshplan.policies.backend_refs import Backend
from meshplan.policies.base import Json
from meshplan.policies.conf import ConfReader, Setting
from meshplan.validate.check import FieldCheck

KIND = "MeshTCPRoute"
PLACEMENT = placement_row(KIND, {TO}, {"sidecar"}, False, SIDECAR_TO)  # the seed's placement table, for external services


# --- the conf -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    backends: tuple[Backend, ...]  # in the order written, weight 0 included (split leaves those out)


@dataclass(frozen=True)
class Conf:
    # The rules are one value of a merged conf (the most specific policy's replace the others whole): their origins
    # are the list's. No rule: the `to` destination itself.
    rules: Setting[tuple[Rule, ...]]


def parse(conf: ConfReader) -> Conf | None:
    """An item's `{"rules": [...]}` (or what several merged to): None when `rules` is not a list (validating, the
    generic check has reported it)."""
    rules = conf.raw.get("rules")
    if not isinstance(rules, list):
        return None
    if len(rules) > 1:
        conf.fail(f"takes at most one rule (a TCP route has no matches to choose between rules), got {len(rules)}",
                  "rules")
    read = conf.entries("rules", _parse_rule, not_a_mapping="must be a mapping with a `default`")
    return None if read is None else Conf(read)


def _parse_rule(rule: ConfReader) -> Rule | None:
    rule.unknown(("default",))
    if not rule.required("default"):
        return None
    return rule.section("default", _parse_default)


def _parse_default(default: ConfReader) -> Rule | None:
    default.unknown(("backendRefs",))
    backends = refs.read_backend_refs(default, PLACEMENT, required=True)
    return None if backends is None else Rule(backends)


# --- validation -----------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    """`default` is the item's `{"rules": [...]}`; `path` the item (`spec.to[0]`)."""
    refs.validate_to_target(check, path, KIND)
    parse(ConfReader(default, path, check))


def check_references(policy: Policy, desired: Desired, check: FieldCheck) -> None:
    """Every backend a rule names exists in the policy's mesh."""
    for item in policy.to:
        for ri, rule in enumerate(_list(item.default.get("rules"))):
            conf = rule.get("default") if isinstance(rule, dict) else None
            if isinstance(conf, dict):
                for bi, ref in enumerate(_list(conf.get("backendRefs"))):
                    path: PathKey = ("to", item.index, "rules", ri, "default", "backendRefs", bi)
                    refs.check_reference(ref, path, policy, desired, check)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
