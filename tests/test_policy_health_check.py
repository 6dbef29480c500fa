"""MeshHealthCheck: its validation table, its render (golden), Envoy's acceptance, and real health checks taking a
dead instance out of the load balancer, on a sidecar and on the egress."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import Loopback

from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    Service,
    assert_violations_point_at,
    pid_running,
    split_violation,
    stat,
    table_cases,
    violations,
    write_mesh,
)
from tests.golden import TESTDATA
from tests.policy_render import envoy_validates, render, touched

KIND = "MeshHealthCheck"


# --- a small mesh: web -> backend (2 instances) and web -> httpbin (an external service with 2 endpoints) ---------


SERVICES = [Service("backend", instance="backend-1"), Service("backend", instance="backend-2"),
            Service("web", calls=("backend", "mes:httpbin"))]


def module_mesh(directory: Path, files: dict[str, str], addresses: Addresses | None = None) -> MeshFiles:
    """The module's mesh (fixed addresses unless others are given) and these files (policies) in `directory`."""
    mesh = write_mesh(directory, addresses or FixedAddresses(network="127.0.1."), SERVICES, externals={"httpbin": "http"},
                      external_endpoints=2)
    mesh.write(files, dedent=True)
    return mesh


def write(directory: Path, files: dict[str, str]) -> Path:
    return module_mesh(directory, files).root


def policy(default: str, *, name: str = "hc", to: str = "kind: MeshService\n        name: backend",
           top: str = "kind: Mesh") -> str:  # fmt: skip
    """A MeshHealthCheck with one `to` item whose `default` is `default` (YAML, indented by the caller's dedent)."""
    body = textwrap.indent(textwrap.dedent(default).strip(), " " * 8)
    return (
        f"type: {KIND}\nmesh: default\nname: {name}\nspec:\n  targetRef:\n    {top}\n  to:\n"
        f"    - targetRef:\n        {to}\n      default:\n{body}\n"
    )


# --- validation -------------------------------------------------------------------------------------------------

GOOD = {
    "http-only": "http: {}",
    "tcp-only": "tcp: {}",
    "grpc-only": "grpc:\n  serviceName: health\n  authority: backend.local",
    "everything": """
        interval: 10s
        timeout: 2s
        unhealthyThreshold: 3
        healthyThreshold: 2
        initialJitter: 100ms
        intervalJitter: 1s
        intervalJitterPercent: 10
        healthyPanicThreshold: "62.5"
        failTrafficOnPanic: true
        eventLogPath: /tmp/hc-events.log
        alwaysLogHealthCheckFailures: true
        noTrafficInterval: 30s
        reuseConnection: false
        http:
          disabled: false
          path: /health
          expectedStatuses: [200, 204]
          requestHeadersToAdd:
            add:
              - name: x-probe
                value: meshplan
            set:
              - name: x-kind
                value: active
        tcp:
          disabled: true
          send: aGVsbG8=
          receive: [d29ybGQ=]
        grpc:
          disabled: true
        """,
    "panic-as-integer": "healthyPanicThreshold: 0\nhttp: {}",
}

# (case, default, [(path under spec.to[0].default, message fragment, text on the line the violation points at)])
BAD: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    ("no checker", "interval: 1s", [("", "at least one of `http`, `tcp` or `grpc`", "default:")]),
    ("unknown field", "http: {}\nintervall: 1s", [(".intervall", "unknown field", "intervall:")]),
    ("bad durations", "interval: soon\ntimeout: 0s\nnoTrafficInterval: 5\nhttp: {}", [
        (".interval", "must be a duration like 500ms", "interval: soon"),
        (".timeout", "must be greater than 0", "timeout: 0s"),
        (".noTrafficInterval", "must be a string, got an integer", "noTrafficInterval: 5"),
    ]),
    ("thresholds", "unhealthyThreshold: 0\nhealthyThreshold: two\nhttp: {}", [
        (".unhealthyThreshold", "must be between 1 and 4294967295, got 0", "unhealthyThreshold: 0"),
        (".healthyThreshold", "must be an integer", "healthyThreshold: two"),
    ]),
    ("jitter percent", "intervalJitterPercent: 101\nhttp: {}",
     [(".intervalJitterPercent", "must be between 0 and 100", "intervalJitterPercent:")]),
    ("panic threshold", "healthyPanicThreshold: \"101\"\nhttp: {}",
     [(".healthyPanicThreshold", "must be a percentage between 0 and 100", "healthyPanicThreshold:")]),
    ("booleans", "failTrafficOnPanic: yes please\nreuseConnection: 1\nhttp: {}", [
        (".failTrafficOnPanic", "must be a boolean", "failTrafficOnPanic:"),
        (".reuseConnection", "must be a boolean", "reuseConnection:"),
    ]),
    ("relative event log", "eventLogPath: logs/hc.log\nhttp: {}",
     [(".eventLogPath", "must be an absolute file path", "eventLogPath:")]),
    ("http", """
        http:
          path: health
          expectedStatuses: [200, 99, "ok"]
          requestHeadersToAdd:
            add:
              - name: ":path"
                value: /x
              - value: no-name
            replace: []
        """, [
        (".http.path", "must be an HTTP path starting with `/`", "path: health"),
        (".http.expectedStatuses[1]", "between 100 and 599, got 99", "expectedStatuses:"),
        (".http.expectedStatuses[2]", "between 100 and 599, got 'ok'", "expectedStatuses:"),
        (".http.requestHeadersToAdd.add[0].name", "must be an HTTP header name", 'name: ":path"'),
        (".http.requestHeadersToAdd.add[1]", "`name` is required", "value: no-name"),
        (".http.requestHeadersToAdd.replace", "unknown field", "replace:"),
    ]),
    ("tcp payloads", "tcp:\n  send: not base64!\n  receive: [\"\", 7]", [
        (".tcp.send", "must be base64-encoded bytes", "send:"),
        (".tcp.receive[0]", "must not be empty", "receive:"),
        (".tcp.receive[1]", "must be a base64 string", "receive:"),
    ]),
    ("grpc", "grpc:\n  serviceName: 5\n  authority: 7\n  disabled: no way", [
        (".grpc.serviceName", "must be a string", "serviceName:"),
        (".grpc.authority", "must be a string", "authority:"),
        (".grpc.disabled", "must be a boolean", "disabled:"),
    ]),
]


@pytest.mark.parametrize("case", sorted(GOOD))
def test_good_specs_pass(tmp_path: Path, case: str) -> None:
    files = {"policy.yaml": policy(GOOD[case])}
    assert violations(write(tmp_path, files)) == []


@pytest.mark.parametrize(("default", "expected"), table_cases(BAD))
def test_bad_specs_report_every_violation_with_file_line_and_path(
    tmp_path: Path, default: str, expected: list[tuple[str, str, str]]
) -> None:
    directory = write(tmp_path, {"policy.yaml": policy(default)})
    assert_violations_point_at(directory, "policy.yaml", expected)


def test_placement_external_service_needs_the_egress(tmp_path: Path) -> None:
    # The seed: MeshHealthCheck for a MeshExternalService lives on the egress only.
    on_sidecar = policy("http: {}", to="kind: MeshExternalService\n        name: httpbin", top="kind: Mesh\n    proxyType: [Sidecar]")
    directory = write(tmp_path, {"policy.yaml": on_sidecar})
    [(_, _, path, message)] = map(split_violation, violations(directory))
    assert path == "spec.to[0].targetRef"
    assert 'Egress (to + proxyType: ["egress"])' in message


# --- render -----------------------------------------------------------------------------------------------------


def test_policies_merge_by_specificity_and_external_services_are_checked_on_the_egress() -> None:
    # The golden case health_check (tests/test_goldens.py) shows everything these policies set.
    directory = TESTDATA / "health_check.input"
    proxies = render(directory)
    # Merged: web's own policy (more specific) sets timeout and path over the mesh-wide one's other fields.
    backend = next(c for c in proxies["web"].clusters if c["name"] == "backend")
    [check] = backend["health_checks"]
    assert (check["timeout"], check["interval"], check["unhealthy_threshold"]) == ("1s", "10s", 3)
    assert check["http_health_check"]["path"] == "/ready"
    assert check["http_health_check"]["expected_statuses"] == [{"start": 200, "end": 201}, {"start": 204, "end": 205}]
    assert backend["common_lb_config"] == {"healthy_panic_threshold": {"value": 0.0},
                                           "zone_aware_lb_config": {"fail_traffic_on_panic": True}}  # fmt: skip
    # The seed's row: the external service is health-checked on the egress, never by the sidecar.
    web_httpbin = next(c for c in proxies["web"].clusters if c["name"] == "mes:default:httpbin")
    assert "health_checks" not in web_httpbin
    egress_httpbin = next(c for c in proxies["egress"].clusters if c["name"] == "mes:default:httpbin")
    [egress_check] = egress_httpbin["health_checks"]
    # http disabled on an HTTP service: Kuma falls back to the tcp checker; `ping` as hex.
    assert egress_check["tcp_health_check"] == {"send": {"text": "70696E67"}}
    assert egress_check["interval"] == "5s" and egress_check["timeout"] == "15s"  # Kuma's default timeout
    for name in ("backend-1", "backend-2"):
        assert touched(proxies[name], directory) == {}  # nothing sends to a backend from there


def test_checker_follows_the_destination_protocol(tmp_path: Path) -> None:
    # Kuma: only `tcp` for an HTTP destination sets no health check at all (the panic settings still apply).
    files = {"policy.yaml": policy("healthyPanicThreshold: 10\ntcp: {}")}
    backend = next(c for c in render(write(tmp_path, files))["web"].clusters if c["name"] == "backend")
    assert "health_checks" not in backend
    assert backend["common_lb_config"] == {"healthy_panic_threshold": {"value": 10.0}}


def test_a_mesh_wide_check_leaves_the_sidecars_cluster_to_the_egress_alone(tmp_path: Path) -> None:
    # The seed: "we don't want to be health checking Egress but the underlying MeshExternalServices".
    files = {"policy.yaml": policy("http: {}", to="kind: Mesh")}
    clusters = {c["name"]: c for c in render(write(tmp_path, files))["web"].clusters}
    assert "health_checks" in clusters["backend"]
    assert "health_checks" not in clusters["mes:default:httpbin"]


@pytest.mark.envoy
def test_every_proxy_passes_envoy_validation(tmp_path: Path) -> None:
    desired = load_and_parse(TESTDATA / "health_check.input")  # the golden case's mesh and policies
    assert envoy_validates(desired, tmp_path / "state") == dict.fromkeys(desired.proxy_names())


# --- real traffic -----------------------------------------------------------------------------------------------

TRAFFIC_POLICIES = policy("""
    interval: 300ms
    noTrafficInterval: 300ms
    timeout: 250ms
    unhealthyThreshold: 1
    healthyThreshold: 1
    healthyPanicThreshold: 0
    http:
      path: /health
    """) + "---\n" + policy("""
    interval: 300ms
    noTrafficInterval: 300ms
    timeout: 250ms
    unhealthyThreshold: 1
    healthyPanicThreshold: 0
    http:
      path: /health
    """, name="hc-egress", to="kind: MeshExternalService\n        name: httpbin", top="kind: Mesh\n    proxyType: [Egress]")


def _wait_for(what: str, ready: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        if ready():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:g}s")


def _kill(state: Path, role: str, name: str) -> None:
    [process] = [p for p in sandbox.status(state) if p.role == role and p.name == name]
    os.kill(process.pid, signal.SIGTERM)
    _wait_for(f"{role} {name} (pid {process.pid}) to exit", lambda: not pid_running(process.pid), timeout=5.0)


def _instances(client: httpx.Client, url: str, count: int) -> list[tuple[int, str]]:
    answers = [client.get(f"{url}/hello") for _ in range(count)]
    return [(a.status_code, a.json()["instance"] if a.status_code == 200 else a.text) for a in answers]


@pytest.mark.envoy
def test_a_dead_instance_is_marked_unhealthy_and_traffic_avoids_it(
    tmp_path: Path, loopback: Loopback, sandbox_state: Path
) -> None:
    mesh = module_mesh(tmp_path / "desired", {"policy.yaml": TRAFFIC_POLICIES}, loopback)
    directory = mesh.root
    desired = load_and_parse(directory)
    pki.ensure(desired, sandbox_state)
    proxies = {p.name: p for p in render_all(desired)}
    sandbox.up(desired, list(proxies.values()), sandbox_state)
    web_admin, egress_admin = proxies["web"].admin_url, proxies["egress"].admin_url
    ext1, ext2 = mesh.endpoints["httpbin"]

    with httpx.Client(trust_env=False, timeout=5.0) as client:
        # Healthy: round robin over both instances, and over both endpoints behind the egress.
        _wait_for("both backend instances to answer", lambda: sorted(set(_instances(client, mesh.outbound['web', 'backend'], 10)))
                  == [(200, "backend-1"), (200, "backend-2")])  # fmt: skip
        _wait_for("both external endpoints to answer", lambda: sorted(set(_instances(client, mesh.outbound['web', 'mes:httpbin'], 10)))
                  == sorted([(200, ext1), (200, ext2)]))  # fmt: skip
        assert stat(client, web_admin, "cluster.backend.membership_healthy") == 2
        assert stat(client, web_admin, "cluster.backend.health_check.success") > 0

        # backend-1's app and one external endpoint die; their checks fail on the next round.
        _kill(sandbox_state, "app", "backend/backend-1")
        _kill(sandbox_state, "external", f"httpbin/{ext1}")

        # Then every request reaches the live instance: none is sent to the dead one (no 503). Waited for as such:
        # the workers learn of a health change a moment after the stat flips, so under load a request right after
        # `membership_healthy` drops can still reach the dead host.
        _wait_for("every request from web to reach backend-2 only",
                  lambda: set(_instances(client, mesh.outbound['web', 'backend'], 20)) == {(200, "backend-2")})  # fmt: skip
        _wait_for(f"every request through the egress to reach {ext2} only",
                  lambda: set(_instances(client, mesh.outbound['web', 'mes:httpbin'], 20)) == {(200, ext2)})  # fmt: skip
        # ...because health checking marked the dead ones unhealthy (the stat flips before the workers act on it).
        # Envoy writes the `:` of a cluster name as `_` in stat names.
        assert stat(client, web_admin, "cluster.backend.membership_healthy") == 1
        assert stat(client, egress_admin, "cluster.mes_default_httpbin.membership_healthy") == 1
        assert stat(client, web_admin, "cluster.backend.health_check.failure") >= 1
        assert stat(client, egress_admin, "cluster.mes_default_httpbin.health_check.failure") >= 1
