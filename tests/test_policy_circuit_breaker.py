"""MeshCircuitBreaker: its validation table (both of the seed's spellings), its golden render, `envoy --mode
validate`, where it lands for an external service, and its limits on real Envoys."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshplan.compare.canonical import canonical
from meshplan.model import ProxyConfig
from meshplan.validate.resources import load_and_parse
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    assert_violation_reported,
    running_sandbox,
    stat,
    table_cases,
    violations,
    wait_for_stat,
    web_calling,
    write_mesh,
)
from tests.policy_render import envoy_validates
from tests.policy_tables import BODY_LINE, MARK, marked_line, policy_file

KIND = "MeshCircuitBreaker"

# --- validation -----------------------------------------------------------------------------------------------

SEED_EXTENSIVE = """
    connectionPool:
      maxConnections: 1024
      maxPendingRequests: 1024
      maxRetries: 3
      maxRequests: 1024
    outlierDetection:
      interval: 5s
      baseEjectionTime: 30s
      maxEjectionPercent: 20
      splitExternalAndLocalErrors: true
      detectors:
        consecutiveTotalFailures: 10
        consecutiveGatewayFailures: 10
        consecutiveLocalOriginFailures: 10
        successRate:
          minimumHosts: 5
          requestVolume: 10
          standardDeviationFactor: 1.9
        failurePercentage:
          requestVolume: 10
          minimumHosts: 5
          threshold: 85
    """

GOOD = [
    ("the seed's minimal policy", "connectionPool: {}"),
    ("the seed's default policy", "connectionPool: {maxConnections: 1024, maxPendingRequests: 1024, maxRetries: 3, "
                                  "maxRequests: 1024}"),
    ("the seed's extensive policy", SEED_EXTENSIVE),
    ("Kuma's spelling", """
        connectionLimits: {maxConnections: 2, maxConnectionPools: 4}
        outlierDetection:
          healthyPanicThreshold: "12.5"
          detectors:
            totalFailures: {consecutive: 20}
            gatewayFailures: {consecutive: 10}
            localOriginFailures: {consecutive: 7}
            successRate: {standardDeviationFactor: "1.9"}
        """),
    ("disabled outlier detection", "outlierDetection: {disabled: true, detectors: {totalFailures: {consecutive: 5}}}"),
]

# (id, body with the offending line marked, or a line number when the violation is on `default:` itself,
#  the path under spec.to[0].default, a fragment of the message)
BAD: list[tuple[str, str, int | None, str, str]] = [
    ("outlier detection without detectors (as Kuma)", f"outlierDetection: {{interval: 1s}} {MARK}", None,
     ".outlierDetection.detectors", "must be defined"),
    ("empty", "{}", BODY_LINE - 1, "", "at least one of `connectionPool` (or `connectionLimits`) or `outlierDetection`"),
    ("both pool spellings", f"connectionPool: {{maxConnections: 1}}\nconnectionLimits: {{maxRetries: 1}} {MARK}", None,
     ".connectionLimits", "`connectionPool` and `connectionLimits` are two spellings of one field: set only one"),
    ("both total failure spellings", f"outlierDetection:\n  detectors:\n    consecutiveTotalFailures: 3\n"
     f"    totalFailures: {{consecutive: 3}} {MARK}", None, ".outlierDetection.detectors.totalFailures",
     "`consecutiveTotalFailures` and `totalFailures` are two spellings of one field"),
    ("both gateway spellings", f"outlierDetection:\n  detectors:\n    gatewayFailures: {{consecutive: 3}} {MARK}\n"
     f"    consecutiveGatewayFailures: 3", None, ".outlierDetection.detectors.gatewayFailures",
     "`consecutiveGatewayFailures` and `gatewayFailures` are two spellings"),
    ("both local-origin spellings", f"outlierDetection:\n  detectors:\n    consecutiveLocalOriginFailures: 1\n"
     f"    localOriginFailures: {{consecutive: 1}} {MARK}", None, ".outlierDetection.detectors.localOriginFailures",
     "`consecutiveLocalOriginFailures` and `localOriginFailures` are two spellings"),
    ("zero connections", f"connectionPool:\n  maxConnections: 0 {MARK}", None, ".connectionPool.maxConnections",
     "must be between 1 and 4294967295, got 0"),
    ("negative pending", f"connectionLimits:\n  maxPendingRequests: -1 {MARK}", None,
     ".connectionLimits.maxPendingRequests", "must be between 1 and"),
    ("retries as text", f"connectionPool:\n  maxRetries: \"3\" {MARK}", None, ".connectionPool.maxRetries",
     "must be an integer, got a string"),
    ("too many requests", f"connectionPool:\n  maxRequests: 4294967296 {MARK}", None, ".connectionPool.maxRequests",
     "must be between 1 and 4294967295"),
    ("unknown limit", f"connectionPool:\n  maxStreams: 1 {MARK}", None, ".connectionPool.maxStreams", "unknown field"),
    ("zero interval", f"outlierDetection:\n  interval: 0s {MARK}", None, ".outlierDetection.interval",
     "must be greater than 0"),
    ("bad ejection time", f"outlierDetection:\n  baseEjectionTime: 30 {MARK}", None,
     ".outlierDetection.baseEjectionTime", "must be a string"),
    ("ejection percent", f"outlierDetection:\n  maxEjectionPercent: 101 {MARK}", None,
     ".outlierDetection.maxEjectionPercent", "must be between 0 and 100, got 101"),
    ("split as text", f"outlierDetection:\n  splitExternalAndLocalErrors: \"yes\" {MARK}", None,
     ".outlierDetection.splitExternalAndLocalErrors", "must be a boolean"),
    ("disabled as number", f"outlierDetection:\n  disabled: 1 {MARK}", None, ".outlierDetection.disabled",
     "must be a boolean, got an integer"),
    ("panic threshold", f"outlierDetection:\n  healthyPanicThreshold: 150 {MARK}", None,
     ".outlierDetection.healthyPanicThreshold", "must be at least 0 and at most 100"),
    ("no detector", f"outlierDetection:\n  detectors: {{}} {MARK}", None, ".outlierDetection.detectors",
     "must have at least one of"),
    ("unknown detector", f"outlierDetection:\n  detectors:\n    latency: {{}} {MARK}", None,
     ".outlierDetection.detectors.latency", "unknown field"),
    ("nested detector without consecutive", f"outlierDetection:\n  detectors:\n    totalFailures: {{}} {MARK}", None,
     ".outlierDetection.detectors.totalFailures", "`consecutive` is required (or write `consecutiveTotalFailures: N`)"),
    ("zero nested consecutive", f"outlierDetection:\n  detectors:\n    gatewayFailures:\n      consecutive: 0 {MARK}",
     None, ".outlierDetection.detectors.gatewayFailures.consecutive", "must be between 1 and"),
    ("zero flat consecutive", f"outlierDetection:\n  detectors:\n    consecutiveLocalOriginFailures: 0 {MARK}", None,
     ".outlierDetection.detectors.consecutiveLocalOriginFailures", "must be between 1 and"),
    ("zero deviation factor", f"outlierDetection:\n  detectors:\n    successRate:\n      standardDeviationFactor: 0 {MARK}",
     None, ".outlierDetection.detectors.successRate.standardDeviationFactor", "must be greater than 0"),
    ("deviation factor not a number", f"outlierDetection:\n  detectors:\n    successRate:\n"
     f"      standardDeviationFactor: lots {MARK}", None,
     ".outlierDetection.detectors.successRate.standardDeviationFactor", "must be a number, got 'lots'"),
    ("zero minimum hosts", f"outlierDetection:\n  detectors:\n    successRate:\n      minimumHosts: 0 {MARK}", None,
     ".outlierDetection.detectors.successRate.minimumHosts", "must be between 1 and"),
    ("failure threshold", f"outlierDetection:\n  detectors:\n    failurePercentage:\n      threshold: 101 {MARK}", None,
     ".outlierDetection.detectors.failurePercentage.threshold", "must be between 0 and 100"),
]


@pytest.fixture(scope="module")
def base_mesh(tmp_path_factory: pytest.TempPathFactory) -> MeshFiles:
    return write_mesh(tmp_path_factory.mktemp("cb-validate"), FixedAddresses(per_address=True), web_calling())


@pytest.mark.parametrize("body", table_cases(GOOD))
def test_good_specs_pass(base_mesh: MeshFiles, body: str) -> None:
    assert violations(base_mesh.write({"p.yaml": policy_file(KIND, body)})) == []


@pytest.mark.parametrize("body, line, path, message", table_cases(BAD))
def test_bad_specs_report_file_line_and_path(base_mesh: MeshFiles, body: str, line: int | None, path: str,
                                            message: str) -> None:
    found = violations(base_mesh.write({"p.yaml": policy_file(KIND, body)}))
    assert_violation_reported(found, "p.yaml", line or marked_line(body), f"spec.to[0].default{path}", message)


# --- rendering ------------------------------------------------------------------------------------------------

POLICIES = """
    # The seed's default policy, plus a detector for everyone.
    type: MeshCircuitBreaker
    mesh: default
    name: default-circuit-breaker
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: Mesh
          default:
            connectionPool:
              maxConnections: 1024
              maxPendingRequests: 1024
              maxRetries: 3
              maxRequests: 1024
            outlierDetection:
              interval: 10s
              detectors:
                consecutiveTotalFailures: 5
    ---
    # The seed's extensive policy, for backend.
    type: MeshCircuitBreaker
    mesh: default
    name: extensive-circuit-breaker
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: MeshService
            name: backend
          default:
    {extensive}
    ---
    # Kuma's spelling, for other: it merges field by field with the seed's spelling above.
    type: MeshCircuitBreaker
    mesh: default
    name: kuma-spelling
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: MeshService
            name: other
          default:
            connectionLimits:
              maxConnections: 5
              maxConnectionPools: 2
            outlierDetection:
              splitExternalAndLocalErrors: true
              healthyPanicThreshold: 0
              detectors:
                totalFailures:
                  consecutive: 3
                localOriginFailures:
                  consecutive: 2
        - targetRef:
            kind: MeshService
            name: quiet
          default:
            outlierDetection:
              disabled: true
              detectors:
                totalFailures:
                  consecutive: 5
    ---
    # The seed's egress example: for an external service the breaker is on the egress.
    type: MeshCircuitBreaker
    mesh: default
    name: circuit-breaker
    spec:
      targetRef:
        kind: Mesh
        proxyType: ["egress"]
      to:
        - targetRef:
            kind: MeshExternalService
            name: httpbin
          default:
            connectionPool:
              maxConnections: 10
            outlierDetection:
              detectors:
                totalFailures:
                  consecutive: 10
    """


def render_mesh(root: Path, policies: str = POLICIES) -> tuple[MeshFiles, dict[str, ProxyConfig]]:
    mesh = write_mesh(root, FixedAddresses(per_address=True), web_calling(http=("backend", "other", "quiet"), externals=("httpbin",)),
                      externals={"httpbin": "http"})
    extensive = "".join(f"            {line[4:]}\n" for line in SEED_EXTENSIVE.strip("\n").splitlines())
    mesh.write_policies(policies.replace("    {extensive}\n", extensive))
    return mesh, {p.name: p for p in mesh.render()}


def clusters(proxy: ProxyConfig) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in proxy.clusters}


def test_the_seed_extensive_policy(tmp_path: Path) -> None:
    _, proxies = render_mesh(tmp_path / "desired")
    backend = clusters(proxies["web"])["backend"]
    assert backend["circuit_breakers"] == {"thresholds": [{
        "priority": "DEFAULT", "max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024,
        "max_retries": 3, "track_remaining": True}]}
    assert backend["outlier_detection"] == {
        "interval": "5s",
        "base_ejection_time": "30s",
        "max_ejection_percent": 20,
        "split_external_local_origin_errors": True,
        "consecutive_5xx": 10,
        "enforcing_consecutive_5xx": 100,
        "consecutive_gateway_failure": 10,
        "enforcing_consecutive_gateway_failure": 100,
        "consecutive_local_origin_failure": 10,
        "enforcing_consecutive_local_origin_failure": 100,
        "enforcing_success_rate": 100,
        "enforcing_local_origin_success_rate": 100,
        "success_rate_minimum_hosts": 5,
        "success_rate_request_volume": 10,
        "success_rate_stdev_factor": 1900,
        "enforcing_failure_percentage": 100,
        "enforcing_failure_percentage_local_origin": 100,
        "failure_percentage_minimum_hosts": 5,
        "failure_percentage_request_volume": 10,
        "failure_percentage_threshold": 85,
    }


def test_both_spellings_merge_field_by_field(tmp_path: Path) -> None:
    mesh, proxies = render_mesh(tmp_path / "desired")
    web = proxies["web"]
    other = clusters(web)["other"]
    (threshold,) = other["circuit_breakers"]["thresholds"]
    assert threshold == {"priority": "DEFAULT", "max_connections": 5, "max_pending_requests": 1024,
                         "max_requests": 1024, "max_retries": 3, "max_connection_pools": 2, "track_remaining": True}
    # interval from the Mesh-wide policy; the nested `totalFailures` overrides the flat `consecutiveTotalFailures`.
    assert other["outlier_detection"] == {
        "interval": "10s", "split_external_local_origin_errors": True,
        "consecutive_5xx": 3, "enforcing_consecutive_5xx": 100,
        "enforcing_consecutive_gateway_failure": 0,
        "consecutive_local_origin_failure": 2, "enforcing_consecutive_local_origin_failure": 100,
        "enforcing_success_rate": 0, "enforcing_local_origin_success_rate": 0,
        "enforcing_failure_percentage": 0, "enforcing_failure_percentage_local_origin": 0,
    }
    assert other["common_lb_config"] == {"healthy_panic_threshold": {"value": 0.0}}
    origins = web.origins["cluster"]["other"]
    file = f"{mesh.root}/policies.yaml"
    assert origins[("outlier_detection", "consecutive_5xx")] == [f"MeshCircuitBreaker/kuma-spelling ({file}:78)"]
    assert origins[("outlier_detection", "interval")] == [f"MeshCircuitBreaker/default-circuit-breaker ({file}:18)"]
    assert origins[("circuit_breakers", "thresholds", 0, "max_connections")] == [
        f"MeshCircuitBreaker/kuma-spelling ({file}:71)"]
    assert origins[("circuit_breakers", "thresholds", 0, "max_pending_requests")] == [
        f"MeshCircuitBreaker/default-circuit-breaker ({file}:14)"]
    # `disabled: true` removes outlier detection; the limits still come from the Mesh-wide policy.
    quiet = clusters(web)["quiet"]
    assert "outlier_detection" not in quiet and quiet["circuit_breakers"]["thresholds"][0]["max_connections"] == 1024


# What Kuma's plugin writes on every cluster of every proxy, a MeshCircuitBreaker or not.
TRACK_REMAINING_ONLY = {"thresholds": [{"priority": "DEFAULT", "track_remaining": True}]}


def test_every_cluster_tracks_its_remaining_resources(tmp_path: Path) -> None:
    mesh = write_mesh(tmp_path / "desired", FixedAddresses(per_address=True),
                      web_calling(http=("backend",), externals=("httpbin",)), externals={"httpbin": "http"})
    proxies = {p.name: p for p in mesh.render()}
    assert sorted(proxies) == ["backend-1", "egress", "web"]
    for name, proxy in proxies.items():
        for cluster in proxy.clusters:
            assert cluster["circuit_breakers"] == TRACK_REMAINING_ONLY, (name, cluster["name"])
            # not a policy's doing: no origin, so a plan names no policy for it
            assert not any(path[0] == "circuit_breakers" for path in proxy.origins["cluster"].get(cluster["name"], {}))


def test_external_service_breaker_is_on_the_egress_and_on_no_sidecar(tmp_path: Path) -> None:
    _, proxies = render_mesh(tmp_path / "desired")
    (on_egress,) = proxies["egress"].clusters
    assert on_egress["name"] == "mes:default:httpbin"
    assert on_egress["circuit_breakers"]["thresholds"][0]["max_connections"] == 10
    assert on_egress["outlier_detection"]["consecutive_5xx"] == 10
    # Even the Mesh-wide `to: Mesh` policy skips the sidecar's cluster to the external service (it leads to the egress).
    to_egress = clusters(proxies["web"])["mes:default:httpbin"]
    assert "outlier_detection" not in to_egress
    assert to_egress["circuit_breakers"] == TRACK_REMAINING_ONLY


def test_an_egress_only_breaker_touches_no_sidecar(tmp_path: Path) -> None:
    egress_only = POLICIES[POLICIES.index("    # The seed's egress example"):]
    _, proxies = render_mesh(tmp_path / "desired", egress_only)
    for name, proxy in proxies.items():
        for cluster in proxy.clusters:
            on = cluster["circuit_breakers"] != TRACK_REMAINING_ONLY
            assert on == (name == "egress"), (name, cluster["name"])
    for resource in proxies["egress"].clusters + proxies["web"].clusters:
        canonical(resource)


@pytest.mark.envoy
def test_every_proxy_passes_envoy_validate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    mesh, _ = render_mesh(tmp_path / "desired")
    desired = load_and_parse(mesh.root)
    assert envoy_validates(desired, state) == dict.fromkeys(desired.proxy_names())


# --- real traffic ---------------------------------------------------------------------------------------------

TRAFFIC_POLICIES = """
    type: MeshCircuitBreaker
    mesh: default
    name: one-at-a-time
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: MeshService
            name: backend
          default:
            connectionLimits:
              maxConnections: 1
              maxPendingRequests: 1
    ---
    type: MeshCircuitBreaker
    mesh: default
    name: httpbin-one-at-a-time
    spec:
      targetRef:
        kind: Mesh
        proxyType: ["Egress"]
      to:
        - targetRef:
            kind: MeshExternalService
            name: httpbin
          default:
            connectionPool:
              maxConnections: 1
              maxPendingRequests: 1
    """
CONCURRENT = 10


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory, loopback: Addresses) -> Iterator[MeshFiles]:
    root = tmp_path_factory.mktemp("cb-traffic")
    mesh = write_mesh(root / "desired", loopback, web_calling(http=("backend",), externals=("httpbin",)),
                      externals={"httpbin": "http"})
    mesh.write_policies(TRAFFIC_POLICIES)
    state = root / "state"
    state.mkdir()
    with running_sandbox(load_and_parse(mesh.root), state):
        yield mesh


def slow_requests_at_once(url: str) -> list[httpx.Response]:
    def one(_: int) -> httpx.Response:
        # A client each: every request its own downstream connection, all in flight together.
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            return client.get(f"{url}/delay/500")

    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        return list(pool.map(one, range(CONCURRENT)))


@pytest.mark.envoy
def test_limits_overflow_with_envoy_overloaded(traffic: MeshFiles, http: httpx.Client) -> None:
    answers = slow_requests_at_once(traffic.outbound[("web", "backend")])
    statuses = sorted(a.status_code for a in answers)
    overloaded = [a for a in answers if a.status_code == 503]
    assert overloaded and statuses.count(200) >= 1, statuses
    assert all(a.headers.get("x-envoy-overloaded") == "true" for a in overloaded), [dict(a.headers) for a in overloaded]
    assert set(statuses) == {200, 503}, statuses
    assert wait_for_stat(http, traffic.admin["web"], "cluster.backend.upstream_rq_pending_overflow", 1) > 0


@pytest.mark.envoy
def test_external_service_limits_overflow_on_the_egress(traffic: MeshFiles, http: httpx.Client) -> None:
    answers = slow_requests_at_once(traffic.outbound[("web", "mes:httpbin")])
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) == {200, 503}, statuses
    egress, web = traffic.admin["egress"], traffic.admin["web"]
    assert wait_for_stat(http, egress, "cluster.mes:default:httpbin.upstream_rq_pending_overflow", 1) > 0
    # The sidecar in front of the egress has no breaker of its own for it: nothing overflowed there.
    assert stat(http, web, "cluster.mes:default:httpbin.upstream_rq_pending_overflow") == 0
