"""Which policies apply to a proxy, in what order, and what their `default` blocks merge to, field by field.

Pure: the typed model in, frozen dataclasses out. DESIGN.md "Policy semantics" is the contract; where the seeds are
silent this follows Kuma 2.x (pkg/plugins/policies/core/matchers and rules).

- `why_not(policy, proxy)` / `selects`: the top-level targetRef and proxyType against a sidecar or the egress.
- `merge_to(policies, proxy, destination)`: one policy kind's `to` items for one outbound destination.
- `merge_from(policies, proxy, inbound)`: one policy kind's `from` items for one inbound, as rules per client subset.
- `merge_route(policies, proxy, destination, routes)`: one kind's settings on the Envoy routes of a MeshHTTPRoute rule,
  where a policy targets a route that wrote it (docs/policies.md "Policies that target a MeshHTTPRoute").
- `merge_patch(a, b)`: RFC 7396. Every merged leaf (a list is a leaf: lists are replaced) keeps a `FieldOrigin`.

The seed's placement table (which kinds apply to a MeshExternalService where) is not the matcher's: `match.result`
applies it, once per proxy, for render and explain alike.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshplan.errors import Source
from meshplan.model import (
    EGRESS,
    NAMESPACE_TAG,
    ROLE_ORDER,
    SERVICE_TAG,
    SIDECAR,
    Dataplane,
    Inbound,
    MeshExternalService,
    Outbound,
    Policy,
    PolicyItem,
    TargetRef,
    ZoneEgress,
)

Proxy = Dataplane | ZoneEgress
Path = tuple[str, ...]

TO = "to"
FROM = "from"
SINGLE = "single"  # a kind with one top-level `default` (MeshTrace, MeshMetric): the whole policy is its one item

# Least to most specific; later wins (DESIGN.md, the same order as Kuma's TargetRefKind.Compare).
KIND_ORDER = ("Mesh", "Dataplane", "MeshSubset", "MeshService", "MeshExternalService", "MeshServiceSubset",
              "MeshHTTPRoute")
HTTP_ROUTE = "MeshHTTPRoute"
_RANK = {kind: i for i, kind in enumerate(KIND_ORDER)}


@dataclass(frozen=True)
class Destination:
    """Where an outbound goes: a mesh service (optionally narrowed to instances with `tags`) or an external service."""

    mesh: str
    name: str
    external: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    # The service's namespace (its dataplanes'), which `match.result` fills in from the desired directory: what a
    # `to` item naming a service in a namespace compares. Not part of the destination's identity.
    namespace: str | None = field(default=None, compare=False)
    # The name of the service's port the outbound reaches (its one port; None with several): what a `to` item's
    # `sectionName` compares. Filled in by `match.result` as the namespace is; not part of the identity either.
    section: str | None = field(default=None, compare=False)

    @classmethod
    def of_outbound(cls, dp: Dataplane, outbound: Outbound) -> Destination:
        if outbound.external is not None:
            return cls(dp.mesh, outbound.external, external=True)
        assert outbound.service is not None
        return cls(dp.mesh, outbound.service)

    @classmethod
    def of_external(cls, mes: MeshExternalService) -> Destination:
        return cls(mes.mesh, mes.name, external=True)

    @property
    def all_tags(self) -> dict[str, str]:
        namespace = {NAMESPACE_TAG: self.namespace} if self.namespace is not None else {}
        return {**self.tags, **namespace, SERVICE_TAG: self.name}

    def __str__(self) -> str:
        if self.external:
            return f"MeshExternalService {self.name!r}"
        return (f"MeshService {self.name!r}" + (f" {_tags(self.tags)}" if self.tags else "")
                + (f" (namespace {self.namespace!r})" if self.namespace is not None else ""))


@dataclass(frozen=True)
class Origin:
    """A policy that wrote a field, and where."""

    kind: str
    name: str
    source: Source
    selector: str = ""  # the top-level targetRef, when it selects by labels, by sectionName or every dataplane

    def __str__(self) -> str:
        return f"{self.kind}/{self.name} ({self.source})" + (f" [{self.selector}]" if self.selector else "")


@dataclass(frozen=True)
class FieldOrigin:
    set_by: Origin
    overridden: tuple[Origin, ...] = ()  # earlier (less specific) policies that also wrote it, in merge order


@dataclass(frozen=True)
class Contribution:
    """One `to`/`from` item of a policy that takes part in a merge."""

    policy: Policy
    item: PolicyItem
    section: str  # TO | FROM

    @property
    def written_section(self) -> str:
        """The section as written: `to`, `from`, or `rules` for a top-level rule (which acts as a `from` item)."""
        return self.item.written_as or self.section

    @property
    def path(self) -> str:
        """The item as written: `spec.to[0]`, `spec.rules[1]` (for a single-item kind, the policy's spec itself)."""
        if self.section == SINGLE:
            return self.policy.spec_path
        prefix = f"{self.policy.spec_path}." if self.policy.spec_path else ""
        return f"{prefix}{self.written_section}[{self.item.index}]"

    @property
    def payload_path(self) -> str:
        # Route kinds carry `rules` in the item itself; every other kind has a `default` block.
        if self.section == SINGLE:
            return f"{self.policy.spec_path}.default" if self.policy.spec_path else "default"
        raw = self.policy.spec.get(self.written_section)
        if isinstance(raw, list) and self.item.index < len(raw):
            written = raw[self.item.index]
            if isinstance(written, dict) and "default" not in written:
                return self.path
        return f"{self.path}.default"

    @property
    def source(self) -> Source:
        """The item's own line (`- targetRef:`)."""
        return self.policy.source_at(self.path) or self.policy.source

    def source_of(self, path: Path) -> Source:
        """The line of a field of this item's payload, or of its nearest written ancestor, or of the policy."""
        candidate = self.payload_path + "".join(f".{key}" for key in path)
        while True:
            line = self.policy.lines.get(candidate)
            if line is not None:
                return Source(self.policy.source.file, line)
            if len(candidate) <= len(self.path):
                return self.policy.source
            candidate = candidate[: max(candidate.rfind("."), len(self.path))]

    def origin(self, path: Path = ()) -> Origin:
        return Origin(self.policy.kind, self.policy.name, self.source_of(path), self.selector)

    @property
    def selector(self) -> str:
        """The policy's selector (`policy_selector`), and a `to` item's port of a service (`sectionName`)."""
        section = self.item.target_ref.section_name if self.section == TO else None
        item = f"{self.written_section}[{self.item.index}] sectionName {section!r}" if section is not None else ""
        return "; ".join(part for part in (policy_selector(self.policy), item) if part)

    def __str__(self) -> str:
        shown = self.selector
        return (f"{self.policy.kind}/{self.policy.name} {self.written_section}[{self.item.index}] ({self.source})"
                + (f" [{shown}]" if shown else ""))


@dataclass(frozen=True)
class Merged:
    conf: dict[str, Any]
    origins: dict[str, FieldOrigin]  # dotted path of every leaf of `conf` -> who set it
    contributions: tuple[Contribution, ...]  # least to most specific: the merge order
    removed: dict[str, FieldOrigin] = field(default_factory=dict)  # fields an earlier policy set and a null deleted

    @property
    def empty(self) -> bool:
        return not self.contributions


@dataclass(frozen=True)
class FromRule:
    """The merged conf for clients carrying all of `client`'s tags (Mesh: every client)."""

    client: TargetRef
    merged: Merged
    selectors: tuple[TargetRef, ...]  # the `from` targetRefs, as written, whose items this rule merges

    @property
    def tags(self) -> dict[str, str]:
        return _ref_tags(self.client) or {}

    def matches(self, client_tags: Mapping[str, str]) -> bool:
        return _has_all(client_tags, self.tags)


def selector(ref: TargetRef) -> str:
    """A top-level targetRef in words for origins and `explain` when a Dataplane one selects by labels, by
    sectionName, or every dataplane (a name, a tag or a service already shows in the policy's name and `explain`)."""
    if ref.kind != "Dataplane" or (ref.labels is None and ref.section_name is None and ref.name is not None
                                   and ref.namespace is None):
        return ""
    return f"targetRef {_describe(ref)}"


def policy_selector(policy: Policy) -> str:
    """What origins and `explain` show beside a policy: its namespace and Kuma role (outside the system namespace),
    and its top-level targetRef where the name alone does not say it (`selector`)."""
    return "; ".join(part for part in (policy.scope, selector(policy.target_ref)) if part)


# --- selection ------------------------------------------------------------------------------------------------


def selects(policy: Policy, proxy: Proxy) -> bool:
    return why_not(policy, proxy) is None


def why_not(policy: Policy, proxy: Proxy) -> str | None:
    """None when the policy's top-level targetRef selects the proxy; otherwise why not, in words for `explain`.

    The egress serves every mesh, so a policy of any mesh can select it; `why_not_to`/`why_not_from` then keep it to
    destinations and external services of the policy's own mesh.
    """
    ref = policy.target_ref
    if isinstance(proxy, ZoneEgress):
        if policy.namespace is not None:
            return (f"a {policy.role} policy in namespace {policy.namespace!r} configures dataplanes; the egress "
                    "lives in the system namespace")
        if EGRESS not in ref.proxy_types:
            if not ref.proxy_types:
                return ("targetRef has no proxyType, which selects sidecars and gateways but never the egress: "
                        'add proxyType: ["Egress"] to configure the egress')
            return f"targetRef proxyType {_types(ref)} does not include egress"
        if ref.kind not in ("Mesh", "MeshExternalService"):
            return (f"targetRef kind {ref.kind} selects dataplanes by their inbounds; the egress is selected only by "
                    "kind Mesh (for `to`) or MeshExternalService (its inbound for that external service)")
        return None
    if policy.mesh != proxy.mesh:
        return f"the policy is in mesh {policy.mesh!r}, dataplane {proxy.name!r} is in mesh {proxy.mesh!r}"
    if policy.scoped and proxy.namespace != policy.namespace:
        where = f"in namespace {proxy.namespace!r}" if proxy.namespace is not None else "in no namespace"
        return (f"a {policy.role} policy in namespace {policy.namespace!r} configures only the dataplanes of its "
                f"namespace (as Kuma), and dataplane {proxy.name!r} is {where}")
    if ref.kind == "MeshExternalService":
        return 'targetRef kind MeshExternalService selects only the egress (with proxyType: ["Egress"]), never a sidecar'
    if ref.kind == HTTP_ROUTE:
        return (f"targetRef MeshHTTPRoute {ref.name!r} selects that route's Envoy routes, on the proxies the route "
                "applies to, not a proxy's destinations or inbounds as a whole")
    if ref.proxy_types and SIDECAR not in ref.proxy_types:
        return f"targetRef proxyType {_types(ref)} does not include sidecar"
    if any(_selects_inbound(ref, proxy, inbound) for inbound in proxy.inbounds):
        return None
    return _dataplane_miss(ref, proxy)


def why_not_to(policy: Policy, proxy: Proxy, destination: Destination) -> str | None:
    """None when some `to` item of the policy applies to traffic from the proxy to the destination."""
    reason = why_not(policy, proxy)
    if reason is not None:
        return reason
    if policy.mesh != destination.mesh:
        return f"{destination} is in mesh {destination.mesh!r}, the policy in mesh {policy.mesh!r}"
    if policy.target_ref.kind == "MeshExternalService":
        return "targetRef kind MeshExternalService configures the egress's inbound (`from`), not a destination"
    if not policy.to:
        return f"{policy.kind} {policy.name!r} has no `to` items"
    if any(_targets(item.target_ref, destination) for item in policy.to):
        return None
    misses = "; ".join(f"to[{i.index}] targets {_describe(i.target_ref)}{_subset_note(i.target_ref, destination)}"
                       f"{_section_note(i.target_ref, destination)}" for i in policy.to)
    return f"no `to` item targets {destination}: {misses}"


def why_not_from(policy: Policy, proxy: Proxy, inbound: Inbound | Destination) -> str | None:
    """None when some `from` item of the policy applies on this inbound (on the egress: an external service)."""
    _check_inbound_type(proxy, inbound)
    reason = why_not(policy, proxy) or _inbound_miss(policy, proxy, inbound)
    if reason is not None:
        return reason
    if not policy.from_:
        return f"{policy.kind} {policy.name!r} has no `from` items"
    if not any(_ref_tags(item.target_ref) is not None for item in policy.from_):
        return ("its `from` items select clients by kinds that name no client tags "
                "(use Mesh, MeshSubset, MeshService or MeshServiceSubset)")
    return None


# --- merging --------------------------------------------------------------------------------------------------


def merge_to(policies: Iterable[Policy], proxy: Proxy, destination: Destination) -> Merged:
    """The `to` items of one policy kind that apply from `proxy` to `destination`, merged in order."""
    contributions = [
        Contribution(policy, item, TO)
        for policy in _one_kind(policies)
        if why_not_to(policy, proxy, destination) is None
        for item in policy.to
        if _targets(item.target_ref, destination)
    ]
    return _merge(_ordered(contributions))


def merge_route(policies: Iterable[Policy], proxy: Proxy, destination: Destination, routes: Iterable[str]) -> Merged:
    """One kind's settings for the Envoy routes that one MeshHTTPRoute rule made on this destination, where `routes`
    are the MeshHTTPRoute policies that wrote the rule: the items that apply to the destination, and the items that
    target one of those routes (a top-level `targetRef: {kind: MeshHTTPRoute}` with `to` items of kind Mesh, or a `to`
    item of kind MeshHTTPRoute in a policy that selects the proxy), merged in Kuma's order, where MeshHTTPRoute is the
    most specific kind. Empty when no item targets those routes (the routes then take the destination's merge)."""
    named = set(routes)
    listed = _one_kind(policies)
    on_route = [
        Contribution(policy, item, TO)
        for policy in listed
        if policy.mesh == destination.mesh
        for item in policy.to
        if (policy.target_ref.kind == HTTP_ROUTE and policy.target_ref.name in named and item.target_ref.kind == "Mesh")
        or (item.target_ref.kind == HTTP_ROUTE and item.target_ref.name in named and why_not(policy, proxy) is None)
    ]
    if not on_route:
        return Merged({}, {}, ())
    return _merge(_ordered(list(merge_to(listed, proxy, destination).contributions) + on_route))


def merge_single(policies: Iterable[Policy], proxy: Proxy) -> Merged:
    """The top-level `default` of every policy of one single-item kind (MeshTrace, MeshMetric) whose targetRef
    selects the proxy, merged in Kuma's order (top-level kind, then name descending)."""
    contributions = [
        Contribution(policy, PolicyItem(policy.target_ref, _default(policy), 0), SINGLE)
        for policy in _one_kind(policies)
        if why_not(policy, proxy) is None
    ]
    return _merge(_ordered(contributions))


def _default(policy: Policy) -> dict[str, Any]:
    default = policy.spec.get("default")
    return default if isinstance(default, dict) else {}


def merge_from(policies: Iterable[Policy], proxy: Proxy, inbound: Inbound | Destination) -> list[FromRule]:
    """Rules per client subset for one inbound of one policy kind, most specific first: a client takes the first rule
    it matches (`rule_for`).

    Each client subset is a `from` targetRef as tags (Mesh = no tags), or the union of the tags of `from` targetRefs
    that one client can match at the same time; its conf merges, in order, every item whose targetRef is equal or
    broader (its tags a subset). The unions are what Kuma's rules compute with negated tags; listing the most
    specific first gives the same answer for every client without negations.
    """
    _check_inbound_type(proxy, inbound)
    items = [
        Contribution(policy, item, FROM)
        for policy in _one_kind(policies)
        if why_not_from(policy, proxy, inbound) is None
        for item in policy.from_
        if _ref_tags(item.target_ref) is not None
    ]
    items = _ordered(items)
    written: dict[frozenset[tuple[str, str]], list[TargetRef]] = {}
    for c in items:
        refs = written.setdefault(_tag_set(c.item.target_ref), [])
        if c.item.target_ref not in refs:
            refs.append(c.item.target_ref)
    subsets = set(written)
    frontier = list(written)
    while frontier:
        grown = []
        for a in frontier:
            for b in written:
                union = a | b
                if _consistent(union) and union not in subsets:
                    subsets.add(union)
                    grown.append(union)
        frontier = grown
    rules = []
    for subset in sorted(subsets, key=lambda s: (-len(s), sorted(s))):
        covering = [c for c in items if _tag_set(c.item.target_ref) <= subset]
        selectors = tuple(ref for tags, refs in written.items() if tags <= subset for ref in refs)
        rules.append(FromRule(_client_ref(dict(subset)), _merge(covering), selectors))
    return rules


def rule_for(rules: list[FromRule], client_tags: Mapping[str, str]) -> FromRule | None:
    """The rule that applies to a client with these tags: the first one it matches."""
    return next((rule for rule in rules if rule.matches(client_tags)), None)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge key by key, null deletes, anything else (lists too) replaces. Inputs are not changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _one_kind(policies: Iterable[Policy]) -> list[Policy]:
    listed = list(policies)
    kinds = sorted({p.kind for p in listed})
    if len(kinds) > 1:
        raise ValueError(f"merge one policy kind at a time, got {', '.join(kinds)}")
    return listed


def _ordered(contributions: list[Contribution]) -> list[Contribution]:
    """Top-level kind, then Kuma's policy role (system, producer, consumer, workload-owner: Kuma's SortByTargetRef),
    then Kuma's initial default policies before the user's system ones (on Kubernetes they are the system namespace's
    own, which every user policy outranks), then the item's kind, then (a `to` MeshService) without `sectionName`
    before with it, then name descending; a policy's own items keep their written order."""
    by_name = sorted(contributions, key=lambda c: c.policy.name, reverse=True)  # stable, even reversed
    return sorted(by_name, key=lambda c: (_rank(c.policy.target_ref.kind), _dataplane_rank(c.policy.target_ref),
                                          ROLE_ORDER.index(c.policy.role), not c.policy.kuma_default,
                                          _rank(c.item.target_ref.kind), _section_rank(c)))


def _section_rank(c: Contribution) -> int:
    """As Kuma's CompareByToEntry: among `to` MeshService items, one port of the service (`sectionName`) after the
    whole service (later wins)."""
    return 1 if c.section == TO and c.item.target_ref.kind == "MeshService" and c.item.target_ref.section_name else 0


def _dataplane_rank(ref: TargetRef) -> tuple[int, int]:
    """Among top-level Dataplane targetRefs, as Kuma's CompareDataplaneKind: by labels (or every dataplane) before by
    name, and without sectionName before with it (later wins). Other kinds all rank (0, 0)."""
    if ref.kind != "Dataplane":
        return (0, 0)
    return (1 if ref.name is not None else 0, 1 if ref.section_name is not None else 0)


def _rank(kind: str) -> int:
    return _RANK.get(kind, len(KIND_ORDER))


def _merge(contributions: list[Contribution]) -> Merged:
    conf: dict[str, Any] = {}
    for c in contributions:
        conf = merge_patch(conf, c.item.default)
    # What each item wrote: a path to a scalar, a list, a null or an empty object (a non-empty object is walked).
    writes = [(i, path, value) for i, c in enumerate(contributions) for path, value in _writes(c.item.default, ())]

    def touching(path: Path) -> list[tuple[int, Path, Any]]:
        # Writes at the path or below it, and scalars/lists/nulls written over one of its ancestors.
        return [w for w in writes if w[1][: len(path)] == path
                or (path[: len(w[1])] == w[1] and not isinstance(w[2], dict))]

    def field_origin(path: Path, last: int, earlier: list[tuple[int, Path, Any]]) -> FieldOrigin:
        first: dict[int, Path] = {}
        for i, written, _ in earlier:
            if i < last:
                first.setdefault(i, written if len(written) < len(path) else path)
        overridden = tuple(contributions[i].origin(written) for i, written in first.items())
        return FieldOrigin(contributions[last].origin(path), overridden)

    origins: dict[str, FieldOrigin] = {}
    for path, _ in _leaves(conf, ()):
        touched = touching(path)
        # The last item that touched a field that survived wrote it (or, for an empty object, deleted under it).
        origins[".".join(path)] = field_origin(path, touched[-1][0], touched)
    removed: dict[str, FieldOrigin] = {}
    for i, path, value in writes:
        if value is None and not _present(conf, path) and touching(path)[-1][0] == i:
            setters = [w for w in writes if w[1][: len(path)] == path and w[2] is not None and w[0] < i]
            if setters:
                removed[".".join(path)] = field_origin(path, i, setters)
    return Merged(conf, origins, tuple(contributions), removed)


def _writes(patch: dict[str, Any], prefix: Path) -> Iterator[tuple[Path, Any]]:
    for key, value in patch.items():
        if isinstance(value, dict) and value:
            yield from _writes(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _leaves(conf: dict[str, Any], prefix: Path) -> Iterator[tuple[Path, Any]]:
    for key, value in conf.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _present(conf: Any, path: Path) -> bool:
    for key in path:
        if not isinstance(conf, dict) or key not in conf:
            return False
        conf = conf[key]
    return True


# --- targetRefs -----------------------------------------------------------------------------------------------


def _ref_tags(ref: TargetRef) -> dict[str, str] | None:
    """A targetRef as the tags it requires (Mesh: none); None for kinds that are not tag selectors."""
    if ref.kind == "Mesh":
        return {}
    if ref.kind == "MeshSubset":
        return dict(ref.tags)
    if ref.kind == "MeshService" and ref.name is not None:
        # by name in a namespace: the service's dataplanes carry it as Kuma's k8s.kuma.io/namespace tag
        return {SERVICE_TAG: ref.name, **({NAMESPACE_TAG: ref.namespace} if ref.namespace is not None else {})}
    if ref.kind == "MeshServiceSubset" and ref.name is not None:
        return {SERVICE_TAG: ref.name, **ref.tags}  # as Kuma: the tags are copied over the name
    return None


def _tag_set(ref: TargetRef) -> frozenset[tuple[str, str]]:
    return frozenset((_ref_tags(ref) or {}).items())


def _consistent(tags: frozenset[tuple[str, str]]) -> bool:
    return len({key for key, _ in tags}) == len(tags)


def _client_ref(tags: dict[str, str]) -> TargetRef:
    service = tags.pop(SERVICE_TAG, None)
    if service is None:
        return TargetRef("MeshSubset", tags=tags) if tags else TargetRef("Mesh")
    return TargetRef("MeshServiceSubset", service, tags) if tags else TargetRef("MeshService", service)


def _has_all(have: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(have.get(key) == value for key, value in wanted.items())


def _selects_inbound(ref: TargetRef, dp: Dataplane, inbound: Inbound) -> bool:
    if ref.kind == "Dataplane":
        return _dataplane_miss_of(ref, dp) is None and (ref.section_name is None or ref.section_name == inbound.section_name)
    wanted = _ref_tags(ref)
    return wanted is not None and _has_all(inbound.tags, wanted)


def _targets(ref: TargetRef, destination: Destination) -> bool:
    """Whether a `to` item's targetRef covers the whole destination.

    A MeshServiceSubset (or MeshSubset) whose tags a whole-service destination does not carry covers only some of its
    instances, so it does not apply to the service's cluster: like Kuma's Rules.Compute, a rule applies only where its
    subset contains the destination. Pass `Destination.tags` to ask about a subset of instances.
    """
    if ref.kind == "Mesh":
        return True
    if ref.kind == "MeshExternalService":
        return destination.external and ref.name == destination.name
    if ref.kind == "MeshService" and ref.section_name is not None and ref.section_name != destination.section:
        return False  # one port of the service: the outbound reaches another one
    wanted = _ref_tags(ref)
    return not destination.external and wanted is not None and _has_all(destination.all_tags, wanted)


def _inbound_miss(policy: Policy, proxy: Proxy, inbound: Inbound | Destination) -> str | None:
    ref = policy.target_ref
    if isinstance(proxy, Dataplane):
        assert isinstance(inbound, Inbound)
        if _selects_inbound(ref, proxy, inbound):
            return None
        return f"targetRef {_describe(ref)} does not select inbound {_inbound_name(inbound)}: {_tags_miss(ref, inbound)}"
    assert isinstance(inbound, Destination)
    if policy.mesh != inbound.mesh:
        return f"{inbound} is in mesh {inbound.mesh!r}, the policy in mesh {policy.mesh!r}"
    if ref.kind == "MeshExternalService" and ref.name != inbound.name:
        return f"targetRef selects the egress's inbound for MeshExternalService {ref.name!r}, not {inbound.name!r}"
    return None


def _check_inbound_type(proxy: Proxy, inbound: Inbound | Destination) -> None:
    if isinstance(proxy, Dataplane) and not isinstance(inbound, Inbound):
        raise TypeError("a dataplane's inbound side is one of its Inbounds")
    if isinstance(proxy, ZoneEgress) and not (isinstance(inbound, Destination) and inbound.external):
        raise TypeError("the egress's inbound side is an external service: pass Destination.of_external(...)")


def _dataplane_miss_of(ref: TargetRef, dp: Dataplane) -> str | None:
    """Why a Dataplane targetRef (by name, by labels, or neither: every dataplane) misses the dataplane; None if not."""
    if ref.name is not None and ref.name != dp.name:
        return f"targetRef selects Dataplane {ref.name!r}, not {dp.name!r}"
    if ref.name is not None and ref.namespace is not None and ref.namespace != dp.namespace:
        where = f"namespace {dp.namespace!r}" if dp.namespace is not None else "no namespace"
        return f"targetRef selects Dataplane {ref.name!r} in namespace {ref.namespace!r}, and {dp.name!r} is in {where}"
    if ref.labels is not None:
        missing = [f"{key}={value}" for key, value in sorted(ref.labels.items()) if dp.labels.get(key) != value]
        if missing:
            have = _tags(dp.labels) if dp.labels else "none"
            return (f"targetRef selects dataplanes labelled {_tags(ref.labels)}; dataplane {dp.name!r} lacks "
                    f"{', '.join(missing)} (its labels: {have})")
    return None


def _dataplane_miss(ref: TargetRef, dp: Dataplane) -> str:
    if ref.kind == "Dataplane":
        miss = _dataplane_miss_of(ref, dp)
        if miss is not None:
            return miss
        sections = ", ".join(repr(i.section_name) for i in dp.inbounds)
        return (f"targetRef sectionName {ref.section_name!r} names no inbound of dataplane {dp.name!r} "
                f"(its inbounds answer to {sections}: a name, or the port of an unnamed inbound)")
    inbounds = "; ".join(f"{_inbound_name(i)}: {_tags_miss(ref, i)}" for i in dp.inbounds)
    return f"targetRef {_describe(ref)} selects no inbound of dataplane {dp.name!r} ({inbounds})"


def _tags_miss(ref: TargetRef, inbound: Inbound) -> str:
    wanted = _ref_tags(ref)
    if wanted is None:
        return f"kind {ref.kind} is not a tag selector"
    parts = []
    for key, value in sorted(wanted.items()):
        have = inbound.tags.get(key)
        if have is None:
            parts.append(f"no {key} tag")
        elif have != value:
            parts.append(f"{key} is {have!r}, not {value!r}")
    return ", ".join(parts)


def _subset_note(ref: TargetRef, destination: Destination) -> str:
    if destination.external or ref.kind not in ("MeshSubset", "MeshServiceSubset"):
        return ""
    wanted = _ref_tags(ref) or {}
    if wanted.get(SERVICE_TAG, destination.name) == destination.name:
        return f" (only some instances of {destination}, so not its whole cluster)"
    return ""


def _section_note(ref: TargetRef, destination: Destination) -> str:
    if ref.kind != "MeshService" or ref.section_name is None or destination.external or ref.name != destination.name:
        return ""
    if destination.section is None:
        return " (the outbound reaches every port of the service)"
    return f" (the outbound reaches its port {destination.section!r})"


def _inbound_name(inbound: Inbound) -> str:
    return f":{inbound.port} ({inbound.service})"


def _describe(ref: TargetRef) -> str:
    name = f" {ref.name!r}" if ref.name is not None else ""
    name += f" namespace {ref.namespace!r}" if ref.namespace is not None else ""
    tags = f" {_tags(ref.tags)}" if ref.tags else ""
    labels = f" labels {_tags(ref.labels)}" if ref.labels is not None else ""
    section = f" sectionName {ref.section_name!r}" if ref.section_name is not None else ""
    every = " (every dataplane)" if ref.kind == "Dataplane" and ref.name is None and ref.labels is None else ""
    return f"{ref.kind}{name}{tags}{labels}{section}{every}"


def _tags(tags: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) + "}"


def _types(ref: TargetRef) -> str:
    return "[" + ", ".join(sorted(ref.proxy_types)) + "]"
