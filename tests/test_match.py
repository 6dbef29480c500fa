"""match/matcher.py: selection, ordering, RFC 7396 merging and the origin of every merged field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshplan.errors import Source
from meshplan.match.matcher import (
    Destination,
    FieldOrigin,
    Origin,
    merge_from,
    merge_patch,
    merge_to,
    rule_for,
    selects,
    why_not,
    why_not_from,
    why_not_to,
)
from meshplan.model import (
    SERVICE_TAG,
    Dataplane,
    Inbound,
    Policy,
    PolicyItem,
    TargetRef,
    ZoneEgress,
)

# --- helpers: the model built directly --------------------------------------------------------------------------

Item = tuple[TargetRef, dict[str, Any]]


def ref(kind: str, name: str | None = None, tags: dict[str, str] | None = None, proxy: tuple[str, ...] = ()) -> TargetRef:
    return TargetRef(kind, name, tags or {}, frozenset(proxy))


MESH = ref("Mesh")


def svc(name: str) -> TargetRef:
    return ref("MeshService", name)


def policy(
    name: str,
    to: list[Item] | None = None,
    from_: list[Item] | None = None,
    *,
    target: TargetRef = MESH,
    kind: str = "MeshTimeout",
    mesh: str = "default",
    lines: dict[str, int] | None = None,
    file: str | None = None,
) -> Policy:
    def items(section: list[Item] | None) -> tuple[PolicyItem, ...]:
        return tuple(PolicyItem(r, d, i) for i, (r, d) in enumerate(section or []))

    def written(section: list[Item] | None) -> list[dict[str, Any]]:
        return [{"targetRef": {"kind": r.kind}, "default": d} for r, d in section or []]

    spec = {"targetRef": {"kind": target.kind}, "to": written(to), "from": written(from_)}
    return Policy(kind, name, mesh, target, items(to), items(from_), spec, Source(file or f"{name}.yaml", 1), "spec",
                  lines or {})


def inbound(service: str, port: int = 8080, **tags: str) -> Inbound:
    return Inbound("10.0.0.1", port, "127.0.0.1", port + 10000, {SERVICE_TAG: service, **tags})


def dataplane(name: str = "web-1", *inbounds: Inbound, mesh: str = "default") -> Dataplane:
    return Dataplane(name, mesh, "10.0.0.1", 9901, inbounds or (inbound("web"),), (), Source("dp.yaml", 1))


WEB = dataplane("web-1", inbound("web", 8080, version="v1", zone="east"), inbound("admin", 8081, zone="west"))
EGRESS = ZoneEgress("egress-1", "10.0.0.9", 10002, 9902, Source("egress.yaml", 1))
BACKEND = Destination("default", "backend")
HTTPBIN = Destination("default", "httpbin", external=True)


def winner(merged_policies: list[Policy], proxy: Dataplane | ZoneEgress = WEB, dest: Destination = BACKEND) -> Any:
    return merge_to(merged_policies, proxy, dest).conf.get("x")


def order(merged_policies: list[Policy], proxy: Dataplane | ZoneEgress = WEB, dest: Destination = BACKEND) -> list[str]:
    return [f"{c.policy.name}/{c.section}[{c.item.index}]" for c in merge_to(merged_policies, proxy, dest).contributions]


# --- RFC 7396 ---------------------------------------------------------------------------------------------------

# RFC 7396 appendix A, every example.
RFC_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_EXAMPLES)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_merge_patch_changes_neither_input() -> None:
    target = {"a": {"b": 1, "l": [1]}}
    patch = {"a": {"c": 2, "l": [2, 3]}}
    merged = merge_patch(target, patch)
    merged["a"]["l"].append(4)
    assert target == {"a": {"b": 1, "l": [1]}}
    assert patch == {"a": {"c": 2, "l": [2, 3]}}


# --- selection and proxyType ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proxy_types", "sidecar", "egress"),
    [
        ((), True, False),  # empty: sidecars (and gateways), never the egress
        (("sidecar",), True, False),
        (("egress",), False, True),
        (("sidecar", "egress"), True, True),
        (("gateway",), False, False),
    ],
)
def test_proxy_type_selects(proxy_types: tuple[str, ...], sidecar: bool, egress: bool) -> None:
    p = policy("p", target=ref("Mesh", proxy=proxy_types))
    assert selects(p, WEB) is sidecar
    assert selects(p, EGRESS) is egress


def test_empty_proxy_type_never_selects_the_egress_and_says_so() -> None:
    p = policy("p", [(ref("MeshExternalService", "httpbin"), {"x": 1})])
    reason = why_not(p, EGRESS)
    assert reason is not None and "never the egress" in reason and '["Egress"]' in reason
    assert merge_to([p], EGRESS, HTTPBIN).empty


@pytest.mark.parametrize(
    ("proxy_types", "proxy", "expected"),
    [
        (("egress",), WEB, "does not include sidecar"),
        (("sidecar",), EGRESS, "does not include egress"),
    ],
)
def test_proxy_type_reasons(proxy_types: tuple[str, ...], proxy: Dataplane | ZoneEgress, expected: str) -> None:
    reason = why_not(policy("p", target=ref("Mesh", proxy=proxy_types)), proxy)
    assert reason is not None and expected in reason


@pytest.mark.parametrize(
    ("target", "sidecar", "egress"),
    [
        (ref("Mesh", proxy=("sidecar", "egress")), True, True),
        (ref("MeshExternalService", "httpbin", proxy=("egress",)), False, True),
        (ref("MeshExternalService", "httpbin", proxy=("sidecar", "egress")), False, True),
        (ref("MeshService", "web", proxy=("sidecar", "egress")), True, False),
        (ref("MeshSubset", tags={"zone": "east"}, proxy=("sidecar", "egress")), True, False),
        (ref("Dataplane", "web-1", proxy=("sidecar", "egress")), True, False),
        (ref("Dataplane", "egress-1", proxy=("sidecar", "egress")), False, False),
    ],
)
def test_top_level_kinds_on_sidecar_and_egress(target: TargetRef, sidecar: bool, egress: bool) -> None:
    p = policy("p", target=target)
    assert selects(p, WEB) is sidecar
    assert selects(p, EGRESS) is egress


@pytest.mark.parametrize(
    ("target", "selected", "reason"),
    [
        (ref("MeshService", "web"), True, None),
        (ref("MeshService", "admin"), True, None),
        (ref("MeshService", "api"), False, "kuma.io/service is 'web', not 'api'"),
        (ref("MeshSubset", tags={"version": "v1", "zone": "east"}), True, None),
        (ref("MeshSubset", tags={"zone": "west"}), True, None),
        # every tag must be on the same inbound: version=v1 is on web's, zone=west on admin's
        (ref("MeshSubset", tags={"version": "v1", "zone": "west"}), False, "zone is 'east', not 'west'"),
        (ref("MeshSubset", tags={"team": "a"}), False, "no team tag"),
        (ref("MeshServiceSubset", "web", {"version": "v1"}), True, None),
        (ref("MeshServiceSubset", "admin", {"version": "v1"}), False, ":8081 (admin): no version tag"),
        (ref("MeshServiceSubset", "web", {"version": "v2"}), False, "version is 'v1', not 'v2'"),
        (ref("Dataplane", "web-1"), True, None),
        (ref("Dataplane"), True, None),  # Kuma: a Dataplane targetRef without a name selects every dataplane
        (ref("Dataplane", "web-2"), False, "Dataplane 'web-2', not 'web-1'"),
        (ref("MeshExternalService", "httpbin", proxy=("egress",)), False, "never a sidecar"),
    ],
)
def test_top_level_target_ref_on_a_dataplane(target: TargetRef, selected: bool, reason: str | None) -> None:
    got = why_not(policy("p", target=target), WEB)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got
    assert selects(policy("p", target=target), WEB) is selected


# --- cross-mesh isolation ---------------------------------------------------------------------------------------


def test_a_policy_of_another_mesh_never_applies_to_a_dataplane() -> None:
    p = policy("p", [(MESH, {"x": 1})], mesh="other")
    assert why_not(p, WEB) == "the policy is in mesh 'other', dataplane 'web-1' is in mesh 'default'"
    assert merge_to([p], WEB, BACKEND).empty
    other = dataplane("o-1", mesh="other")
    assert merge_to([p], other, Destination("other", "backend")).conf == {"x": 1}


def test_the_egress_applies_a_policy_only_to_its_own_mesh_destinations() -> None:
    default = policy("d", [(MESH, {"x": "default"})], target=ref("Mesh", proxy=("egress",)))
    other = policy("o", [(MESH, {"x": "other"})], target=ref("Mesh", proxy=("egress",)), mesh="other")
    assert selects(other, EGRESS)  # the egress serves every mesh
    assert winner([default, other], EGRESS, HTTPBIN) == "default"
    assert winner([default, other], EGRESS, Destination("other", "httpbin", external=True)) == "other"
    reason = why_not_to(other, EGRESS, HTTPBIN)
    assert reason is not None and "in mesh 'default', the policy in mesh 'other'" in reason


def test_a_dataplane_destination_in_another_mesh_gets_nothing() -> None:
    p = policy("p", [(MESH, {"x": 1})])
    assert merge_to([p], WEB, Destination("other", "backend")).empty


# --- ordering ---------------------------------------------------------------------------------------------------

TOP_LEVEL = [
    ("Mesh", ref("Mesh")),
    ("Dataplane", ref("Dataplane", "web-1")),
    ("MeshSubset", ref("MeshSubset", tags={"zone": "east"})),
    ("MeshService", ref("MeshService", "web")),
    ("MeshServiceSubset", ref("MeshServiceSubset", "web", {"version": "v1"})),
]


@pytest.mark.parametrize(("less", "more"), [(a, b) for i, a in enumerate(TOP_LEVEL) for b in TOP_LEVEL[i + 1:]],
                         ids=lambda pair: pair[0])
def test_more_specific_top_level_kind_wins_whatever_the_names(less: tuple[str, TargetRef], more: tuple[str, TargetRef]) -> None:
    # Named so that the name order alone would pick the other one.
    broad = policy("a", [(MESH, {"x": less[0]})], target=less[1])
    narrow = policy("z", [(MESH, {"x": more[0]})], target=more[1])
    assert winner([narrow, broad]) == more[0]
    assert winner([broad, narrow]) == more[0]


def test_contributions_are_listed_least_to_most_specific() -> None:
    policies = [policy(f"p-{kind}", [(MESH, {"x": kind})], target=target) for kind, target in reversed(TOP_LEVEL)]
    assert order(policies) == [f"p-{kind}/to[0]" for kind, _ in TOP_LEVEL]


TO_KINDS = [
    ("Mesh", ref("Mesh")),
    ("MeshSubset", ref("MeshSubset", tags={SERVICE_TAG: "backend"})),
    ("MeshService", svc("backend")),
    ("MeshServiceSubset", ref("MeshServiceSubset", "backend", {"version": "v1"})),
]


@pytest.mark.parametrize(("less", "more"), [(a, b) for i, a in enumerate(TO_KINDS) for b in TO_KINDS[i + 1:]],
                         ids=lambda pair: pair[0])
def test_more_specific_to_kind_wins_whatever_the_names(less: tuple[str, TargetRef], more: tuple[str, TargetRef]) -> None:
    subset = Destination("default", "backend", tags={"version": "v1"})
    broad = policy("a", [(less[1], {"x": less[0]})])
    narrow = policy("z", [(more[1], {"x": more[0]})])
    assert winner([narrow, broad], dest=subset) == more[0]
    assert winner([broad, narrow], dest=subset) == more[0]


def test_to_kind_orders_items_of_one_policy_too() -> None:
    p = policy("p", [(svc("backend"), {"x": "service"}), (MESH, {"x": "mesh"})])
    assert order([p]) == ["p/to[1]", "p/to[0]"]
    assert winner([p]) == "service"


def test_top_level_kind_counts_before_to_kind() -> None:
    service_wide = policy("a", [(MESH, {"x": "top MeshService"})], target=svc("web"))
    mesh_wide = policy("b", [(svc("backend"), {"x": "top Mesh"})])
    assert winner([service_wide, mesh_wide]) == "top MeshService"


def test_external_service_item_beats_mesh_item_on_the_egress() -> None:
    egress = ref("Mesh", proxy=("egress",))
    p = policy("z", [(ref("MeshExternalService", "httpbin"), {"x": "mes"})], target=egress)
    q = policy("a", [(MESH, {"x": "mesh"})], target=egress)
    assert winner([p, q], EGRESS, HTTPBIN) == "mes"


@pytest.mark.parametrize("names", [["b", "a", "c"], ["a", "b", "c"], ["c", "b", "a"]])
def test_a_tie_is_broken_by_name_descending_so_the_smallest_name_wins(names: list[str]) -> None:
    policies = [policy(n, [(MESH, {"x": n})]) for n in names]
    assert order(policies) == ["c/to[0]", "b/to[0]", "a/to[0]"]
    assert winner(policies) == "a"


def test_items_of_one_kind_in_one_policy_keep_their_written_order() -> None:
    p = policy("p", [(MESH, {"x": "first"}), (MESH, {"x": "second"})])
    assert order([p]) == ["p/to[0]", "p/to[1]"]
    assert winner([p]) == "second"


# --- the "to" side: which items target a destination -----------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "dest", "applies"),
    [
        (MESH, BACKEND, True),
        (MESH, HTTPBIN, True),
        (svc("backend"), BACKEND, True),
        (svc("other"), BACKEND, False),
        (svc("httpbin"), HTTPBIN, False),  # a MeshService is never an external service
        (ref("MeshExternalService", "httpbin"), HTTPBIN, True),
        (ref("MeshExternalService", "backend"), BACKEND, False),
        (ref("MeshSubset", tags={SERVICE_TAG: "backend"}), BACKEND, True),
        # conservative: a subset covers only some instances, so not the whole service's cluster
        (ref("MeshSubset", tags={"version": "v1"}), BACKEND, False),
        (ref("MeshServiceSubset", "backend", {"version": "v1"}), BACKEND, False),
        (ref("MeshServiceSubset", "backend", {"version": "v1"}), Destination("default", "backend", tags={"version": "v1"}), True),
        (ref("MeshServiceSubset", "backend", {"version": "v1"}), Destination("default", "backend", tags={"version": "v2"}), False),
    ],
)
def test_to_item_target_refs(target: TargetRef, dest: Destination, applies: bool) -> None:
    p = policy("p", [(target, {"x": 1})], target=ref("Mesh", proxy=("sidecar", "egress")))
    proxy = EGRESS if dest.external else WEB
    assert (not merge_to([p], proxy, dest).empty) is applies
    assert (why_not_to(p, proxy, dest) is None) is applies


def test_why_not_to_lists_the_items_and_explains_subsets() -> None:
    p = policy("p", [(svc("api"), {"x": 1}), (ref("MeshServiceSubset", "backend", {"version": "v1"}), {"x": 2})])
    reason = why_not_to(p, WEB, BACKEND)
    assert reason == ("no `to` item targets MeshService 'backend': to[0] targets MeshService 'api'; "
                      "to[1] targets MeshServiceSubset 'backend' {version=v1} "
                      "(only some instances of MeshService 'backend', so not its whole cluster)")


def test_a_top_level_external_service_policy_has_no_to_side() -> None:
    p = policy("p", from_=[(MESH, {"action": "Deny"})], target=ref("MeshExternalService", "httpbin", proxy=("egress",)),
               kind="MeshTrafficPermission")
    reason = why_not_to(p, EGRESS, HTTPBIN)
    assert reason is not None and "`from`" in reason


def test_outbounds_and_external_services_make_destinations() -> None:
    from meshplan.model import Endpoint, ExternalTLS, MeshExternalService, Outbound

    assert Destination.of_outbound(WEB, Outbound("127.0.0.1", 10001, service="backend")) == BACKEND
    assert Destination.of_outbound(WEB, Outbound("127.0.0.1", 10002, external="httpbin")) == HTTPBIN
    mes = MeshExternalService("httpbin", "default", 443, "http", (Endpoint("1.2.3.4", 443),), ExternalTLS(True), Source("m", 1))
    assert Destination.of_external(mes) == HTTPBIN


def test_policies_of_two_kinds_are_not_merged_together() -> None:
    with pytest.raises(ValueError, match="one policy kind"):
        merge_to([policy("a"), policy("b", kind="MeshRetry")], WEB, BACKEND)


# --- merging and origins ----------------------------------------------------------------------------------------


def test_nested_objects_merge_lists_are_replaced_and_null_deletes() -> None:
    base = policy("base", [(MESH, {
        "connectionPool": {"maxConnections": 10, "maxRequests": 20},
        "outlierDetection": {"interval": "5s", "detectors": {"consecutiveTotalFailures": 10}},
        "retryOn": ["5xx", "reset"],
    })])
    narrow = policy("narrow", [(svc("backend"), {
        "connectionPool": {"maxConnections": 2},
        "outlierDetection": {"detectors": None},
        "retryOn": ["gateway-error"],
    })])
    merged = merge_to([narrow, base], WEB, BACKEND)
    assert merged.conf == {
        "connectionPool": {"maxConnections": 2, "maxRequests": 20},
        "outlierDetection": {"interval": "5s"},
        "retryOn": ["gateway-error"],
    }
    assert {path: o.set_by.name for path, o in merged.origins.items()} == {
        "connectionPool.maxConnections": "narrow",
        "connectionPool.maxRequests": "base",
        "outlierDetection.interval": "base",
        "retryOn": "narrow",  # a list is one leaf: it is replaced whole
    }
    assert [o.name for o in merged.origins["connectionPool.maxConnections"].overridden] == ["base"]
    assert [o.name for o in merged.origins["retryOn"].overridden] == ["base"]
    assert merged.origins["connectionPool.maxRequests"].overridden == ()
    removed = merged.removed["outlierDetection.detectors"]
    assert removed.set_by.name == "narrow" and [o.name for o in removed.overridden] == ["base"]


def test_overridden_lists_every_earlier_policy_in_merge_order() -> None:
    policies = [policy(n, [(MESH, {"x": n})]) for n in ("a", "b", "c")]
    origin = merge_to(policies, WEB, BACKEND).origins["x"]
    assert origin.set_by.name == "a"
    assert [o.name for o in origin.overridden] == ["c", "b"]


def test_an_empty_object_is_a_leaf_with_an_origin() -> None:
    # The seed's minimal MeshCircuitBreaker: `connectionPool: {}`.
    p = policy("cb", [(MESH, {"connectionPool": {}})], kind="MeshCircuitBreaker")
    merged = merge_to([p], WEB, BACKEND)
    assert merged.conf == {"connectionPool": {}}
    assert merged.origins["connectionPool"].set_by.name == "cb"


def test_an_object_emptied_by_deletions_is_set_by_the_deleting_policy() -> None:
    a = policy("a", [(MESH, {"pool": {"max": 1}})])
    b = policy("b", [(svc("backend"), {"pool": {"max": None}})])
    merged = merge_to([a, b], WEB, BACKEND)
    assert merged.conf == {"pool": {}}
    assert merged.origins["pool"] == FieldOrigin(Origin("MeshTimeout", "b", Source("b.yaml", 1)),
                                                 (Origin("MeshTimeout", "a", Source("a.yaml", 1)),))


def test_a_scalar_replaced_by_an_object_counts_as_overridden() -> None:
    a = policy("a", [(MESH, {"timeout": "5s"})])
    b = policy("b", [(svc("backend"), {"timeout": {"connect": "1s"}})])
    merged = merge_to([a, b], WEB, BACKEND)
    assert merged.conf == {"timeout": {"connect": "1s"}}
    assert [o.name for o in merged.origins["timeout.connect"].overridden] == ["a"]


def test_origins_carry_the_file_and_line_of_each_field() -> None:
    lines = {
        "spec.to[0]": 8,
        "spec.to[0].default": 10,
        "spec.to[0].default.connectionPool": 11,
        "spec.to[0].default.connectionPool.maxConnections": 12,
        "spec.to[1]": 20,
    }
    p = policy("cb", [(MESH, {"connectionPool": {"maxConnections": 2, "maxRequests": 3}, "other": 1}),
                      (svc("backend"), {"late": True})], lines=lines, file="policies/cb.yaml", kind="MeshCircuitBreaker")
    origins = merge_to([p], WEB, BACKEND).origins
    assert str(origins["connectionPool.maxConnections"].set_by) == "MeshCircuitBreaker/cb (policies/cb.yaml:12)"
    assert origins["connectionPool.maxRequests"].set_by.source == Source("policies/cb.yaml", 11)  # nearest ancestor
    assert origins["other"].set_by.source == Source("policies/cb.yaml", 10)  # the default block
    assert origins["late"].set_by.source == Source("policies/cb.yaml", 20)  # the item
    bare = policy("bare", [(MESH, {"x": 1})], file="bare.yaml")
    assert merge_to([bare], WEB, BACKEND).origins["x"].set_by.source == Source("bare.yaml", 1)  # the policy


def test_overridden_origins_have_their_own_lines() -> None:
    a = policy("a", [(MESH, {"x": 1})], lines={"spec.to[0].default.x": 7}, file="a.yaml")
    b = policy("b", [(svc("backend"), {"x": 2})], lines={"spec.to[0].default.x": 30}, file="b.yaml")
    origin = merge_to([a, b], WEB, BACKEND).origins["x"]
    assert str(origin.set_by) == "MeshTimeout/b (b.yaml:30)"
    assert [str(o) for o in origin.overridden] == ["MeshTimeout/a (a.yaml:7)"]


def test_route_items_without_a_default_block_take_their_lines_from_the_item() -> None:
    p = Policy("MeshHTTPRoute", "r", "default", MESH, (PolicyItem(svc("backend"), {"rules": [{"matches": []}]}, 0),), (),
               {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService"}, "rules": [{"matches": []}]}]},
               Source("r.yaml", 1), "spec", {"spec.to[0]": 5, "spec.to[0].rules": 8})
    merged = merge_to([p], WEB, BACKEND)
    assert merged.origins["rules"].set_by.source == Source("r.yaml", 8)
    assert str(merged.contributions[0]) == "MeshHTTPRoute/r to[0] (r.yaml:5)"


def test_origins_from_a_loaded_yaml_file(tmp_path: Path) -> None:
    from meshplan.load.resources import load_file
    from meshplan.validate.resources import parse

    (tmp_path / "cb.yaml").write_text(
        "type: MeshCircuitBreaker\n"      # 1
        "mesh: default\n"                 # 2
        "name: cb\n"                      # 3
        "spec:\n"                         # 4
        "  targetRef:\n"                  # 5
        "    kind: Mesh\n"                # 6
        "  to:\n"                         # 7
        "    - targetRef:\n"              # 8
        "        kind: Mesh\n"            # 9
        "      default:\n"                # 10
        "        connectionPool:\n"       # 11
        "          maxConnections: 2\n"   # 12
    )
    raws, problems = load_file(tmp_path / "cb.yaml", "cb.yaml")
    desired, more = parse(raws)
    assert problems == more == [] and desired is not None
    # the implicit mesh `default` has Kuma's initial policies: the circuit breaker among them merges first
    breakers = [p for p in desired.policies if p.kind == "MeshCircuitBreaker"]
    assert [p.name for p in breakers] == ["cb", "mesh-circuit-breaker-all-default"]
    merged = merge_to(breakers, WEB, BACKEND)
    assert str(merged.origins["connectionPool.maxConnections"].set_by) == "MeshCircuitBreaker/cb (cb.yaml:12)"
    assert [str(o) for o in merged.origins["connectionPool.maxConnections"].overridden] == [
        "MeshCircuitBreaker/mesh-circuit-breaker-all-default (default)"]
    assert str(merged.origins["connectionPool.maxRetries"].set_by) == (
        "MeshCircuitBreaker/mesh-circuit-breaker-all-default (default)")
    assert str(merged.contributions[1].source) == "cb.yaml:8"


# --- the "from" side --------------------------------------------------------------------------------------------


def test_the_seed_traffic_permission_on_the_egress() -> None:
    # The MeshExternalService seed's example: backend allowed, everyone else denied.
    mtp = policy("mtp", from_=[(svc("backend"), {"action": "Allow"}), (MESH, {"action": "Deny"})],
                 target=ref("MeshExternalService", "httpbin", proxy=("egress",)), kind="MeshTrafficPermission")
    rules = merge_from([mtp], EGRESS, HTTPBIN)
    assert [(r.client, r.merged.conf) for r in rules] == [
        (svc("backend"), {"action": "Allow"}),
        (MESH, {"action": "Deny"}),
    ]
    backend = rules[0].merged
    assert [f"{c.section}[{c.item.index}]" for c in backend.contributions] == ["from[1]", "from[0]"]
    assert [o.name for o in backend.origins["action"].overridden] == ["mtp"]
    assert rule_for(rules, {SERVICE_TAG: "backend"}) is rules[0]
    assert rule_for(rules, {SERVICE_TAG: "web"}) is rules[1]


def test_egress_inbound_policies_apply_per_external_service_and_mesh() -> None:
    mtp = policy("mtp", from_=[(MESH, {"action": "Allow"})],
                 target=ref("MeshExternalService", "httpbin", proxy=("egress",)), kind="MeshTrafficPermission")
    assert merge_from([mtp], EGRESS, Destination("default", "other", external=True)) == []
    assert merge_from([mtp], EGRESS, Destination("other", "httpbin", external=True)) == []
    reason = why_not_from(mtp, EGRESS, Destination("default", "other", external=True))
    assert reason == "targetRef selects the egress's inbound for MeshExternalService 'httpbin', not 'other'"
    no_type = policy("n", from_=[(MESH, {"action": "Allow"})], target=ref("MeshExternalService", "httpbin"),
                     kind="MeshTrafficPermission")
    assert merge_from([no_type], EGRESS, HTTPBIN) == []


def test_from_rules_apply_only_to_the_selected_inbound() -> None:
    p = policy("p", from_=[(MESH, {"x": 1})], target=svc("admin"))
    web_inbound, admin_inbound = WEB.inbounds
    assert [r.merged.conf for r in merge_from([p], WEB, admin_inbound)] == [{"x": 1}]
    assert merge_from([p], WEB, web_inbound) == []
    assert why_not_from(p, WEB, web_inbound) == (
        "targetRef MeshService 'admin' does not select inbound :8080 (web): kuma.io/service is 'web', not 'admin'")


def test_a_client_gets_every_equal_or_broader_item_merged() -> None:
    broad = policy("broad", from_=[(MESH, {"a": "mesh", "b": "mesh"})])
    narrow = policy("narrow", from_=[(svc("api"), {"a": "api"}),
                                     (ref("MeshServiceSubset", "api", {"version": "v2"}), {"b": "api-v2"})])
    rules = merge_from([broad, narrow], WEB, WEB.inbounds[0])
    assert [(r.client, r.merged.conf) for r in rules] == [
        (ref("MeshServiceSubset", "api", {"version": "v2"}), {"a": "api", "b": "api-v2"}),
        (svc("api"), {"a": "api", "b": "mesh"}),
        (MESH, {"a": "mesh", "b": "mesh"}),
    ]
    assert rule_for(rules, {SERVICE_TAG: "api", "version": "v2"}) is rules[0]
    assert rule_for(rules, {SERVICE_TAG: "api", "version": "v1"}) is rules[1]
    assert rule_for(rules, {SERVICE_TAG: "db"}) is rules[2]


def test_overlapping_client_selectors_get_a_rule_for_their_intersection() -> None:
    # A client can be both service api and in zone east: it gets both items, in order (MeshSubset < MeshService).
    p = policy("p", from_=[(svc("api"), {"a": "api"}), (ref("MeshSubset", tags={"zone": "east"}), {"a": "east", "z": 1})])
    rules = merge_from([p], WEB, WEB.inbounds[0])
    assert [(r.client, r.merged.conf) for r in rules] == [
        (ref("MeshServiceSubset", "api", {"zone": "east"}), {"a": "api", "z": 1}),
        (svc("api"), {"a": "api"}),
        (ref("MeshSubset", tags={"zone": "east"}), {"a": "east", "z": 1}),
    ]
    assert rules[0].selectors == (ref("MeshSubset", tags={"zone": "east"}), svc("api"))
    assert rule_for(rules, {SERVICE_TAG: "api", "zone": "east"}) is rules[0]
    assert rule_for(rules, {SERVICE_TAG: "api", "zone": "west"}) is rules[1]
    assert rule_for(rules, {SERVICE_TAG: "db", "zone": "east"}) is rules[2]
    assert rule_for(rules, {SERVICE_TAG: "db"}) is None


def test_selectors_that_cannot_meet_get_no_intersection() -> None:
    p = policy("p", from_=[(svc("api"), {"a": 1}), (svc("db"), {"a": 2})])
    assert [r.client for r in merge_from([p], WEB, WEB.inbounds[0])] == [svc("api"), svc("db")]


def test_from_ordering_follows_the_same_rules_as_to() -> None:
    policies = [policy(n, from_=[(MESH, {"x": n})]) for n in ("b", "a", "c")]
    (rule,) = merge_from(policies, WEB, WEB.inbounds[0])
    assert [c.policy.name for c in rule.merged.contributions] == ["c", "b", "a"]
    assert rule.merged.conf == {"x": "a"}


def test_the_inbound_must_fit_the_proxy() -> None:
    with pytest.raises(TypeError):
        merge_from([], WEB, HTTPBIN)
    with pytest.raises(TypeError):
        merge_from([], EGRESS, WEB.inbounds[0])
