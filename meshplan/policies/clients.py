"""Who a `from` rule is about: the clients its tags select, as a condition on the peer certificate's URI SANs.

Shared by the inbound ("from") policies: MeshTrafficPermission renders a condition as an RBAC principal,
MeshRateLimit and MeshFaultInjection as a matcher predicate that skips a filter for every other client.

Client identity. Mesh mTLS is the only thing an inbound knows about its client: the certificate a sidecar presents
carries `spiffe://<mesh>/<service>` for each service of its inbounds (meshplan/xds/pki.py, docs/names.md). So:
- `kuma.io/service: X` (MeshService, the service part of MeshServiceSubset) is exact: the SAN `spiffe://<mesh>/X`.
- Any other tag is matched on a `kuma://<tag>/<value>` SAN when the mesh's certificates carry them (as Kuma's do;
  `pki.identities` says). Until then a tag is resolved through the desired mesh instead: the dataplanes with an
  inbound carrying the tag (a client with several inbounds has the union of their tags, as Kuma's SANs give it)
  are matched by their certificates' SPIFFE IDs. That is exact when every dataplane presenting those SPIFFE IDs
  carries the tag (tags that describe whole services, e.g. `team: ops` on every instance of `admin`); it is
  approximate when only some instances of a service carry it (`version: v1`): every instance of that service then
  matches, because their certificates are alike. A tag no dataplane carries selects no client.

First match. `match.merge_from` lists one rule per client subset, most specific first, and a client takes the
first rule it matches (`match.rule_for`). `first_match` turns that into one condition per rule that holds for
exactly the clients the rule applies to: its own condition and none of the earlier rules'.

In a matcher the SANs are read with `envoy.matching.inputs.uri_san`, which gives every URI SAN of the peer
certificate joined by commas, so each SAN is matched as a whole element of that list (Envoy regexes match the whole
input: `(.*,)?<san>(,.*)?`). A
plain-text connection (a mesh without mTLS) has no SANs: only a rule for every client (kind Mesh) applies to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meshplan.envoy import names
from meshplan.envoy.types import (
    EXTENSION_WITH_MATCHER,
    SKIP_FILTER,
    URI_SAN_INPUT,
    URI_SAN_INPUT_NAME,
)
from meshplan.match.matcher import Destination, FromRule
from meshplan.model import (
    SERVICE_TAG,
    Dataplane,
    Desired,
    Inbound,
    TargetRef,
    ZoneEgress,
)
from meshplan.policies.base import Json
from meshplan.xds import pki

TAG_SAN_SCHEME = "kuma://"

ANY_OP, NONE_OP, SAN_OP, AND_OP, OR_OP, NOT_OP = "any", "none", "san", "and", "or", "not"


@dataclass(frozen=True)
class Clients:
    """A set of clients, as a condition on the URI SANs of the certificate a client presents."""

    op: str
    san: str = ""
    parts: tuple[Clients, ...] = field(default=())

    def __str__(self) -> str:
        if self.op in (ANY_OP, NONE_OP):
            return self.op
        if self.op == SAN_OP:
            return self.san
        if self.op == NOT_OP:
            return f"not {self.parts[0]}"
        return "(" + f" {self.op} ".join(str(p) for p in self.parts) + ")"


ANY = Clients(ANY_OP)
NONE = Clients(NONE_OP)


def has_san(value: str) -> Clients:
    return Clients(SAN_OP, san=value)


def all_of(parts: Iterable[Clients]) -> Clients:
    flat: list[Clients] = []
    for part in parts:
        if part == NONE:
            return NONE
        for p in part.parts if part.op == AND_OP else (part,):
            if p != ANY and p not in flat:
                flat.append(p)
    if not flat:
        return ANY
    return flat[0] if len(flat) == 1 else Clients(AND_OP, parts=tuple(flat))


def any_of(parts: Iterable[Clients]) -> Clients:
    flat: list[Clients] = []
    for part in parts:
        if part == ANY:
            return ANY
        for p in part.parts if part.op == OR_OP else (part,):
            if p != NONE and p not in flat:
                flat.append(p)
    if not flat:
        return NONE
    return flat[0] if len(flat) == 1 else Clients(OR_OP, parts=tuple(flat))


def negate(clients: Clients) -> Clients:
    if clients == ANY:
        return NONE
    if clients == NONE:
        return ANY
    if clients.op == NOT_OP:
        return clients.parts[0]
    return Clients(NOT_OP, parts=(clients,))


# --- from tags to certificates ---------------------------------------------------------------------------------


def selected(desired: Desired, mesh: str, tags: dict[str, str]) -> Clients:
    """The clients of `mesh` whose tags include all of `tags` (no tags: every client)."""
    conditions: list[Clients] = []
    service = tags.get(SERVICE_TAG)
    if service is not None:
        conditions.append(has_san(names.spiffe_id(mesh, service)))
    others = {k: v for k, v in tags.items() if k != SERVICE_TAG}
    if not others:
        return all_of(conditions)
    if carries_tag_sans(desired, mesh):
        return all_of(conditions + [has_san(f"{TAG_SAN_SCHEME}{k}/{v}") for k, v in sorted(others.items())])
    # Resolved through the desired mesh: the certificates of the dataplanes that carry the tags.
    carriers = [dp for dp in desired.dataplanes if dp.mesh == mesh and _carries(dp, tags)]
    identities = sorted({tuple(names.spiffe_id(mesh, s) for s in dp.services) for dp in carriers})
    return all_of(conditions + [any_of(all_of(has_san(i) for i in ids) for ids in identities)])


def carries_tag_sans(desired: Desired, mesh: str) -> bool:
    """Whether the certificates of this mesh's dataplanes carry `kuma://<tag>/<value>` SANs."""
    return any(
        san.startswith(TAG_SAN_SCHEME)
        for (identity_mesh, _), sans in pki.identities(desired).items()
        if identity_mesh == mesh
        for san in sans
    )


def _carries(dp: Dataplane, tags: dict[str, str]) -> bool:
    return all(any(inbound.tags.get(k) == v for inbound in dp.inbounds) for k, v in tags.items())


def first_match(conditions: Sequence[Clients]) -> list[Clients]:
    """For conditions in rule order (most specific first): the clients each rule is the first match for."""
    return [all_of([c, negate(any_of(conditions[:i]))]) for i, c in enumerate(conditions)]


def rule_clients(desired: Desired, mesh: str, rules: Sequence[FromRule]) -> list[Clients]:
    """Each rule's own condition (not yet first-match)."""
    return [selected(desired, mesh, rule.tags) for rule in rules]


def label(ref: TargetRef) -> str:
    """A rule's clients in a few characters, for filter and RBAC policy names: `Mesh`, `MeshService:web`."""
    parts = [ref.kind] + ([ref.name] if ref.name else []) + [f"{k}={v}" for k, v in sorted(ref.tags.items())]
    return ":".join(parts)


def stat_label(ref: TargetRef) -> str:
    """`label` as one stat-name segment (Envoy splits stat names on dots)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", label(ref)).lower()


# --- to Envoy ---------------------------------------------------------------------------------------------------


def principal(clients: Clients) -> Json:
    """An RBAC principal (envoy.config.rbac.v3.Principal)."""
    if clients.op == ANY_OP:
        return {"any": True}
    if clients.op == NONE_OP:
        return {"not_id": {"any": True}}
    if clients.op == SAN_OP:
        # principal_name is checked against each URI SAN of the peer certificate (then DNS SANs, then the subject).
        return {"authenticated": {"principal_name": {"exact": clients.san}}}
    if clients.op == NOT_OP:
        return {"not_id": principal(clients.parts[0])}
    key = "and_ids" if clients.op == AND_OP else "or_ids"
    return {key: {"ids": [principal(p) for p in clients.parts]}}


def predicate(clients: Clients) -> Json:
    """A matcher predicate (xds.type.matcher.v3.Matcher.MatcherList.Predicate); never for ANY or NONE."""
    if clients.op in (ANY_OP, NONE_OP):
        raise ValueError("a predicate needs a condition on SANs")
    if clients.op == SAN_OP:
        return {
            "single_predicate": {
                "input": {"name": URI_SAN_INPUT_NAME, "typed_config": {"@type": URI_SAN_INPUT}},
                # The input is every URI SAN joined by commas: match one whole element of that list.
                "value_match": {"safe_regex": {"google_re2": {}, "regex": f"(.*,)?{re.escape(clients.san)}(,.*)?"}},
            }
        }
    if clients.op == NOT_OP:
        return {"not_matcher": predicate(clients.parts[0])}
    key = "and_matcher" if clients.op == AND_OP else "or_matcher"
    return {key: {"predicate": [predicate(p) for p in clients.parts]}}


def http_filter_for(name: str, typed_config: Json, clients: Clients) -> Json | None:
    """An HTTP filter that runs only for these clients (None when that is nobody).

    Every other client skips it: the filter is wrapped in an ExtensionWithMatcher whose matcher answers SkipFilter
    for them, the way Kuma restricts MeshFaultInjection to its sources.
    """
    if clients == NONE:
        return None
    if clients == ANY:
        return {"name": name, "typed_config": typed_config}
    skip = {"action": {"name": "skip", "typed_config": {"@type": SKIP_FILTER}}}
    return {
        "name": name,
        "typed_config": {
            "@type": EXTENSION_WITH_MATCHER,
            "extension_config": {"name": name, "typed_config": typed_config},
            "xds_matcher": {"matcher_list": {"matchers": [{"predicate": predicate(negate(clients)), "on_match": skip}]}},
        },
    }


def insert_network_filter(chain: Json, network_filter: Json) -> None:
    """Add a network filter before the chain's terminal filter (the HTTP connection manager or tcp_proxy)."""
    filters: list[Json] = chain["filters"]
    filters.insert(len(filters) - 1, network_filter)


def stat_scope(chain: Json, listener: str) -> str:
    """A stat-name prefix for one inbound: its filter chain's name on the egress (one per external service), else
    its listener's name."""
    name = chain.get("name") or listener
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(name))


def mesh_of(proxy: Dataplane | ZoneEgress, target: Inbound | Destination) -> str:
    """The mesh whose clients reach this inbound (on the egress: the external service's mesh)."""
    if isinstance(target, Destination):
        return target.mesh
    assert isinstance(proxy, Dataplane)
    return proxy.mesh


# --- top-level `rules` matches (MeshTrafficPermission) ------------------------------------------------------------


@dataclass(frozen=True)
class RuleMatch:
    """One match of a rule's list, as Kuma reads it: every part it names must match (AND)."""

    sni: str | None  # the server name of the client's TLS handshake, exactly; None: any
    principal: Json | None  # an RBAC principal on the client certificate's URI SANs; None: any client

    def matches(self, san: str, sni: str) -> bool:
        """Whether a client whose certificate carries `san`, connecting with server name `sni`, matches."""
        if self.sni is not None and sni != self.sni:
            return False
        if self.principal is None:
            return True
        how, value = next(iter(self.principal["authenticated"]["principal_name"].items()))
        return san == value if how == "exact" else san.startswith(value)


def rule_matches(default: Json, keys: tuple[str, ...]) -> list[RuleMatch]:
    """The matches of a rule's lists: `principal_name` is checked against each URI SAN of the client's certificate,
    exactly or by prefix; `sni` against the server name the client sent (Envoy's `requested_server_name`)."""
    out = []
    for key in keys:
        for match in default.get(key) or []:
            principal = None
            spiffe = match.get("spiffeID")
            if spiffe is not None:
                how = "exact" if spiffe["type"] == "Exact" else "prefix"
                principal = {"authenticated": {"principal_name": {how: spiffe["value"]}}}
            sni = match.get("sni")
            out.append(RuleMatch(None if sni is None else sni["value"], principal))
    return out
