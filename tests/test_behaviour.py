"""What a plan says a change means (match/behaviour.py): facts per client and destination from the one matching
result, and the changes between two sets of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshplan.match.behaviour import ASPECTS, Change, Fact, changes, facts
from meshplan.match.result import match_proxy
from meshplan.policies.registry import KINDS
from meshplan.validate.resources import load_and_parse
from tests.builders import FixedAddresses, Service, write_mesh

ROOT = Path(__file__).parent.parent
TESTDATA = ROOT / "tests" / "testdata"


def _all_facts(directory: Path) -> list[Fact]:
    desired = load_and_parse(directory)
    return [f for p in [*desired.dataplanes, *desired.egresses] for f in facts(desired, match_proxy(desired, p, KINDS), p)]


EVERY_KIND = [
    ("access_log", "access-log"), ("circuit_breaker", "circuit-breaker"), ("fault_injection", "fault"),
    ("health_check", "health-check"), ("http_route-every-field", "route"), ("load_balancing", "load-balancing"),
    ("rate_limit", "rate-limit"), ("retry", "retry"), ("tcp_route", "route"), ("timeout", "timeout"),
    ("traffic_permission", "permission"), ("trace", "trace"), ("metric", "metrics"), ("proxy_patch", "patch"),
]


@pytest.mark.parametrize(("case", "aspect"), EVERY_KIND)
def test_every_kind_says_what_it_means(case: str, aspect: str) -> None:
    found = [f for f in _all_facts(TESTDATA / f"{case}.input") if f.aspect == aspect]
    assert found, f"no {aspect} fact in {case}"
    for fact in found:
        assert fact.origins and all("/" in o and ":" in o for o in fact.origins)  # Kind/name (file:line)
        assert fact.value not in (None, {}, [])


def test_the_table_covers_every_kind() -> None:
    assert {aspect for _, aspect in EVERY_KIND} == set(ASPECTS.values())
    assert set(ASPECTS) == set(KINDS)


def test_the_demo_permissions_per_client() -> None:
    permission = {(f.client, f.destination): f.value for f in _all_facts(ROOT / "examples" / "demo")
                  if f.aspect == "permission"}
    assert permission[("web", "backend")] == {"action": "Allow"}
    assert permission[("admin", "backend")] == {"action": "Deny"}
    assert permission[("backend", "httpbin")] == {"action": "Allow"}
    assert permission[("admin", "httpbin")] == {"action": "Deny"}


def _fact(client: str, value: object, aspect: str = "permission") -> Fact:
    return Fact(client, "backend", aspect, value, (f"MeshTrafficPermission/{client} (p.yaml:1)",))


def test_changes_between_two_applies() -> None:
    before = [_fact("admin", {"action": "Allow"}), _fact("web", {"action": "Allow"}), _fact("old", {"action": "Deny"})]
    after = [_fact("admin", {"action": "Deny"}), _fact("web", {"action": "Allow"}), _fact("new", {"action": "Allow"})]
    assert changes(before, after) == [
        Change("admin", "backend", "permission", {"action": "Allow"}, {"action": "Deny"},
               ("MeshTrafficPermission/admin (p.yaml:1)",)),
        Change("new", "backend", "permission", None, {"action": "Allow"}, ("MeshTrafficPermission/new (p.yaml:1)",)),
        Change("old", "backend", "permission", {"action": "Deny"}, None, ("MeshTrafficPermission/old (p.yaml:1)",)),
    ]


def test_a_fact_round_trips_through_json() -> None:
    fact = _fact("admin", {"action": "Deny"})
    assert Fact.from_json(fact.to_json()) == fact


def test_a_rule_for_some_instances_of_a_client_service_names_that_subset(tmp_path: Path) -> None:
    """A client's tags are all of its instance's inbounds' tags (what its certificate carries): a rule for
    `version: v2` shows under the subset it picks, and the rest of the service keeps its own fact."""
    policy = """
type: MeshTrafficPermission
name: no-v2
mesh: default
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
    - targetRef: {kind: Mesh}
      default: {action: Allow}
    - targetRef: {kind: MeshSubset, tags: {kuma.io/service: web, version: v2}}
      default: {action: Deny}
"""
    services = [Service("web", tags={"version": "v1"}, calls=("backend",), instance="web-1"),
                Service("web", tags={"version": "v2"}, calls=("backend",), instance="web-2"),
                Service("admin", calls=("backend",)), Service("backend")]
    files = write_mesh(tmp_path, FixedAddresses(), services, policies=policy)
    permission = {f.client: f.value for f in _all_facts(files.root) if f.aspect == "permission"}
    allow, deny = {"action": "Allow"}, {"action": "Deny"}
    assert permission == {"admin": allow, "backend": allow, "web (version=v1)": allow, "web (version=v2)": deny}
