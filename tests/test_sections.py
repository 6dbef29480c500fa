"""A `to` MeshService with `sectionName` (Kuma 2.9+'s MeshService resource: one port of the service) as Kuma v2.14.3
reads it: a universal MeshService's ports come from its Dataplanes' inbounds (pkg/core/resources/apis/meshservice/
generate), each named by the inbound's `name` or else by its port number; `sectionName` picks the port of that name
(pkg/plugins/policies/core/rules/resolve/targetref.go), and among `to` MeshService items one with `sectionName`
merges after one without (rules/outbound/sort.go). Our own inputs; on real Envoys too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import Loopback

from meshplan.match.explain import explain_proxy, render_text
from meshplan.match.matcher import Destination, merge_to, why_not_to
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    Service,
    assert_answered_slowly,
    assert_timed_out,
    running_mesh,
    violations,
    write_mesh,
)

# backend's port is named `http`; reports' is unnamed, so Kuma names it by its number.
POLICIES = """\
type: MeshTimeout
mesh: default
name: a-whole-backend
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        http: {requestTimeout: 5s}
---
type: MeshTimeout
mesh: default
name: z-backend-http
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend, sectionName: http}
      default:
        http: {requestTimeout: 300ms}
"""


def named_ports(root: Path, addresses: Addresses, policies: str = POLICIES) -> MeshFiles:
    services = [Service("backend"), Service("reports"), Service("web", calls=("backend", "reports"))]
    files = write_mesh(root, addresses, services, policies=policies)
    docs = {d["name"]: d for d in yaml.safe_load_all((root / "dataplanes.yaml").read_text())}
    docs["backend"]["networking"]["inbound"][0] = {"name": "http", **docs["backend"]["networking"]["inbound"][0]}
    (root / "dataplanes.yaml").write_text(yaml.safe_dump_all(list(docs.values()), sort_keys=False))
    return files


def reports_port(root: Path) -> int:
    docs = {d["name"]: d for d in yaml.safe_load_all((root / "dataplanes.yaml").read_text())}
    return int(docs["reports"]["networking"]["inbound"][0]["port"])


def test_ports_are_named_as_kuma_generates_them(tmp_path: Path) -> None:
    named_ports(tmp_path, FixedAddresses())
    desired = load_and_parse(tmp_path)
    assert [name for name, _ in desired.service_ports("default", "backend")] == ["http"]
    assert desired.service_ports("default", "reports") == [(str(reports_port(tmp_path)), reports_port(tmp_path))]
    assert desired.service_section("default", "backend") == "http"


def test_a_section_selects_the_outbound_of_that_port_and_wins_over_the_whole_service(tmp_path: Path) -> None:
    named_ports(tmp_path, FixedAddresses())
    desired = load_and_parse(tmp_path)
    web = next(d for d in desired.dataplanes if d.name == "web")
    policies = [p for p in desired.policies if p.kind == "MeshTimeout"]
    backend = Destination("default", "backend", section="http")
    merged = merge_to(policies, web, backend)
    # `a-whole-backend` would win by name (the smallest name wins a tie); the section is more specific, as in Kuma
    assert [c.policy.name for c in merged.contributions] == ["a-whole-backend", "z-backend-http"]
    assert merged.conf == {"http": {"requestTimeout": "300ms"}}
    by_section = next(p for p in policies if p.name == "z-backend-http")
    assert why_not_to(by_section, web, Destination("default", "reports", section="10")) is not None
    assert "(the outbound reaches its port 'grpc')" in str(
        why_not_to(by_section, web, Destination("default", "backend", section="grpc")))
    # the rendered route carries the section's timeout, and the origin names the section
    (config,) = [p for p in render_all(desired) if p.name == "web"]
    text = render_text(explain_proxy(desired, "web"))
    assert "MeshTimeout/z-backend-http to[0] (" in text and "[to[0] sectionName 'http']; overrides" in text
    origins = [o for names in config.origins["listener"].values() for paths in names.values() for o in paths]
    assert any(o.startswith("MeshTimeout/z-backend-http (") and o.endswith("[to[0] sectionName 'http']")
               for o in origins), origins


def test_a_section_by_the_number_of_an_unnamed_port(tmp_path: Path) -> None:
    named_ports(tmp_path, FixedAddresses(), policies="")
    port = reports_port(tmp_path)
    (tmp_path / "policies.yaml").write_text(POLICIES.split("---\n")[1].replace(
        "name: backend, sectionName: http", f"name: reports, sectionName: '{port}'"))
    desired = load_and_parse(tmp_path)
    web = next(d for d in desired.dataplanes if d.name == "web")
    reports = Destination("default", "reports", section=str(port))
    assert merge_to(desired.policies, web, reports).conf == {"http": {"requestTimeout": "300ms"}}


def test_a_section_naming_no_port_is_refused_with_the_ports_there_are(tmp_path: Path) -> None:
    named_ports(tmp_path, FixedAddresses(), POLICIES.replace("sectionName: http", "sectionName: grpc"))
    assert violations(tmp_path) == [
        "policies.yaml:17: spec.to[0].targetRef.sectionName: names no port of MeshService 'backend' (its ports: "
        "'http' (port 10002); as Kuma names them, an inbound's `name`, or its port number when it has none), so it "
        "would select nothing"]


def test_a_section_of_a_service_with_several_ports_is_refused(tmp_path: Path) -> None:
    """meshplan's outbound to a service reaches every port of it (one cluster): one port cannot be set apart."""
    named_ports(tmp_path, FixedAddresses())
    docs = {d["name"]: d for d in yaml.safe_load_all((tmp_path / "dataplanes.yaml").read_text())}
    second = {**docs["backend"]["networking"]["inbound"][0], "name": "admin", "port": 10099, "servicePort": 10098}
    docs["backend"]["networking"]["inbound"].append(second)
    (tmp_path / "dataplanes.yaml").write_text(yaml.safe_dump_all(list(docs.values()), sort_keys=False))
    assert violations(tmp_path) == [
        "policies.yaml:17: spec.to[0].targetRef.sectionName: MeshService 'backend' has several ports ('admin' (port "
        "10099), 'http' (port 10002)), and meshplan sends an outbound to every port of a service through one cluster, "
        "so one port cannot be configured apart from the others; give each port its own kuma.io/service"]


def test_a_section_is_for_to_items_only(tmp_path: Path) -> None:
    named_ports(tmp_path, FixedAddresses(), policies="""\
type: MeshTrafficPermission
mesh: default
name: p
spec:
  targetRef: {kind: Mesh}
  from:
    - targetRef: {kind: MeshService, name: web, sectionName: http}
      default: {action: Deny}
""")
    assert violations(tmp_path) == [
        "policies.yaml:7: spec.from[0].targetRef.sectionName: not allowed here: sectionName picks one port of a "
        "destination MeshService, in a `to` item; a `from` item selects clients by their tags"]


# --- on real Envoys ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, loopback: Loopback) -> Iterator[MeshFiles]:
    yield from running_mesh(tmp_path_factory.mktemp("sections"), lambda d: named_ports(d, loopback))


@pytest.mark.envoy
def test_the_section_timeout_cuts_that_port_only(running: MeshFiles, http: httpx.Client) -> None:
    """web's outbound to backend's `http` port gets the section's 300ms (over the whole service's 5s, which would win
    by name); its outbound to reports, which no policy names, has no request timeout."""
    assert_timed_out(http, running, "web", "backend")
    assert_answered_slowly(http, running, "web", "reports")
