"""Kuma's initial default policies (validate/initial_policies.py): which a mesh gets, how `skipCreatingInitialPolicies`
removes them, how a user's policy of the same name replaces one, where they stand in the merge order, and how they
show (origin `Kind/name (default)`, no file)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.match.explain import explain_policy, explain_proxy, render_text
from meshplan.match.unused import warnings
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    assert_violation_reported,
    running_mesh,
    stats,
    violations,
    web_calling,
    write_mesh,
)
from tests.policy_tables import policy_file

ALL = ["MeshCircuitBreaker/mesh-circuit-breaker-all-default", "MeshRetry/mesh-retry-all-default",
       "MeshTimeout/mesh-timeout-all-default"]


def defaults_of(root: Path) -> list[str]:
    desired = load_and_parse(root)
    return sorted(f"{p.kind}/{p.name}" for p in desired.policies if p.kuma_default)


@pytest.mark.parametrize(("skip", "expected"), [
    (None, ALL),
    ("[]", ALL),
    ('["*"]', []),
    ("[MeshRetry]", [ALL[0], ALL[2]]),
    ("[MeshTimeout, MeshCircuitBreaker]", [ALL[1]]),
    ("[TrafficPermission, TrafficRoute]", ALL),  # Kuma's old-API defaults, which meshplan never creates
])
def test_skip_creating_initial_policies(tmp_path: Path, skip: str | None, expected: list[str]) -> None:
    write_mesh(tmp_path, FixedAddresses(), web_calling(), skip_initial_policies=skip)
    assert defaults_of(tmp_path) == expected


def test_every_mesh_gets_its_own_named_after_it(tmp_path: Path) -> None:
    (tmp_path / "meshes.yaml").write_text("type: Mesh\nname: default\nskipCreatingInitialPolicies: ['*']\n---\n"
                                          "type: Mesh\nname: payments\n")
    desired = load_and_parse(tmp_path)
    assert sorted((p.mesh, p.name) for p in desired.policies) == [
        ("payments", "mesh-circuit-breaker-all-payments"), ("payments", "mesh-retry-all-payments"),
        ("payments", "mesh-timeout-all-payments")]
    assert all(str(p.source) == "default" and p.kuma_default for p in desired.policies)


def test_the_implicit_default_mesh_gets_them_too(tmp_path: Path) -> None:
    (tmp_path / "dp.yaml").write_text(
        "type: Dataplane\nmesh: default\nname: web\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
        "    - port: 8080\n      servicePort: 18080\n      tags:\n        kuma.io/service: web\n")
    assert defaults_of(tmp_path) == ALL


def test_an_unknown_word_in_the_skip_list_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text("type: Mesh\nname: default\nskipCreatingInitialPolicies:\n  - MeshRetry\n"
                                        "  - mesh-retry-all-default\n  - 7\n")
    found = violations(tmp_path)
    assert len(found) == 2, found
    assert_violation_reported(found, "mesh.yaml", 5, "skipCreatingInitialPolicies[1]",
                              "'mesh-retry-all-default' names no kind of Kuma's initial policies")
    assert_violation_reported(found, "mesh.yaml", 6, "skipCreatingInitialPolicies[2]", "expected \"*\" or one of")


def user_timeout(name: str) -> str:
    """A user's MeshTimeout for every destination, named `name`."""
    return policy_file("MeshTimeout", "connectionTimeout: 2s").replace("name: p\n", f"name: {name}\n", 1)


def test_a_user_policy_of_the_same_name_replaces_the_default(tmp_path: Path) -> None:
    write_mesh(tmp_path, FixedAddresses(), web_calling(), skip_initial_policies=None,
               policies=user_timeout("mesh-timeout-all-default"))
    desired = load_and_parse(tmp_path)
    (timeout,) = [p for p in desired.policies if p.kind == "MeshTimeout"]
    assert not timeout.kuma_default and str(timeout.source) == f"{tmp_path}/policies.yaml:1"
    assert defaults_of(tmp_path) == ALL[:2]
    web = next(p for p in render_all(desired) if p.name == "web")
    backend = next(c for c in web.clusters if c["name"] == "backend")
    assert backend["connect_timeout"] == "2s"
    # the default's `from` is gone with it: the inbound gets nothing from a MeshTimeout
    inbound = next(lst for lst in web.listeners if lst["name"].startswith("inbound:"))
    route = inbound["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    assert "timeout" not in route["route"]


@pytest.mark.parametrize("name", ["a-timeout", "zz-timeout"])
def test_a_user_policy_on_the_mesh_merges_over_the_default_whatever_its_name(tmp_path: Path, name: str) -> None:
    write_mesh(tmp_path, FixedAddresses(), web_calling(), skip_initial_policies=None,
               policies=user_timeout(name))
    desired = load_and_parse(tmp_path)
    text = render_text(explain_proxy(desired, "web"))
    section = text[text.index("MeshTimeout to outbound"):]
    assert section.index("MeshTimeout/mesh-timeout-all-default to[0] (default)") < section.index(f"MeshTimeout/{name} to[0]")
    assert (f'connectionTimeout: "2s"  # MeshTimeout/{name} ({tmp_path}/policies.yaml:11); '
            "overrides MeshTimeout/mesh-timeout-all-default (default)") in section
    assert 'http.requestTimeout: "15s"  # MeshTimeout/mesh-timeout-all-default (default)' in section
    web = next(p for p in render_all(desired) if p.name == "web")
    backend = next(c for c in web.clusters if c["name"] == "backend")
    assert backend["connect_timeout"] == "2s"
    assert web.origins["cluster"]["backend"][("connect_timeout",)] == [f"MeshTimeout/{name} ({tmp_path}/policies.yaml:11)"]


def test_explain_names_where_a_default_lands(tmp_path: Path) -> None:
    write_mesh(tmp_path, FixedAddresses(), web_calling(), skip_initial_policies=None)
    text = render_text(explain_policy(load_and_parse(tmp_path), "web", "MeshRetry/mesh-retry-all-default"))
    assert "lands on outbound" in text and "-> backend" in text


def test_defaults_are_not_warned_about_and_are_counted_apart(tmp_path: Path) -> None:
    # a mesh with no dataplane: its defaults select nothing, which is no typo of the user's
    (tmp_path / "mesh.yaml").write_text("type: Mesh\nname: default\n---\ntype: Mesh\nname: empty\n")
    (tmp_path / "dp.yaml").write_text(
        "type: Dataplane\nmesh: default\nname: web\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
        "    - port: 8080\n      servicePort: 18080\n      tags:\n        kuma.io/service: web\n")
    assert warnings(load_and_parse(tmp_path)) == []
    result = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1"}).invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "(1 proxy, 0 external services, 0 policies, 6 Kuma default policies)" in result.output


# --- on real Envoys -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kuma_mesh(tmp_path_factory: pytest.TempPathFactory, loopback: Addresses) -> Iterator[MeshFiles]:
    """A mesh as a Kuma user gets it, with no policy of its own, on real Envoys."""
    root = tmp_path_factory.mktemp("initial-policies")
    yield from running_mesh(root, lambda d: write_mesh(d, loopback, web_calling(), skip_initial_policies=None))


@pytest.mark.envoy
def test_the_default_retry_retries_a_gateway_error(kuma_mesh: MeshFiles, http: httpx.Client) -> None:
    # mesh-retry-all-default: 5 retries on gateway-error, connect-failure, refused-stream (Kuma's plugin default)
    answer = http.get(kuma_mesh.url("web", "backend", f"/flaky/3/{uuid.uuid4().hex}"))
    assert answer.status_code == 200
    assert answer.json()["attempt"] == 4
    answer = http.get(kuma_mesh.url("web", "backend", f"/flaky/9/{uuid.uuid4().hex}"))
    assert (answer.status_code, answer.json()["attempt"]) == (503, 6)  # one try and numRetries: 5


@pytest.mark.envoy
def test_every_cluster_publishes_its_remaining_resources(kuma_mesh: MeshFiles, http: httpx.Client) -> None:
    # track_remaining (and mesh-circuit-breaker-all-default's 1024 connections) on web's cluster to backend
    found = stats(http, kuma_mesh.admin["web"], r"^cluster\.backend\.circuit_breakers\.default\.remaining_cx$")
    assert 0 < found["cluster.backend.circuit_breakers.default.remaining_cx"] <= 1024
