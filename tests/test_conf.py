"""A kind's typed conf (meshplan/policies/conf.py), shown on MeshTimeout, MeshCircuitBreaker and MeshHealthCheck:
one parse for an item's `default` (violations at their paths) and for what several items merged to (typed values
with the policies that set them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshplan.load.resources import PathKey
from meshplan.match.matcher import Merged
from meshplan.match.result import match_proxy
from meshplan.policies import circuit_breaker, health_check, timeout
from meshplan.policies.conf import ConfReader, MergedConfError
from meshplan.validate.check import FieldCheck
from meshplan.validate.resources import load_and_parse
from tests.builders import violations

DEMO = Path(__file__).parent.parent / "examples" / "demo"


def _write(tmp_path: Path, default: str) -> Path:
    (tmp_path / "mesh.yaml").write_text("type: Mesh\nname: default\n")
    (tmp_path / "timeout.yaml").write_text(f"""\
type: MeshTimeout
mesh: default
name: t
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: Mesh
      default:
{default}""")
    return tmp_path


def test_one_item_is_checked_field_by_field(tmp_path: Path) -> None:
    found = violations(_write(tmp_path, "        connectionTimeout: 0s\n        http:\n          requestTimeot: 5s\n"))
    assert sorted(v.split(": ", 2)[1:] for v in found) == sorted([
        ["spec.to[0].default.connectionTimeout", "must be greater than 0, got '0s'"],
        ["spec.to[0].default.http.requestTimeot", "unknown field (expected one of: requestTimeout, streamIdleTimeout, "
         "maxStreamDuration, maxConnectionDuration, requestHeadersTimeout)"],
        ["spec.to[0].default.http", "at least one timeout in this section should be configured (one of: "
         "requestTimeout, streamIdleTimeout, maxStreamDuration, maxConnectionDuration, requestHeadersTimeout)"],
    ])


def test_a_merged_conf_reads_as_typed_values_with_their_origins() -> None:
    desired = load_and_parse(DEMO)
    web = next(dp for dp in desired.dataplanes if dp.name == "web")
    found = match_proxy(desired, web)
    merged = next(found.to(timeout.KIND, d.destination) for d in found.destinations
                  if not found.to(timeout.KIND, d.destination).empty)
    conf = timeout.parse(ConfReader.of_merged(merged))
    assert conf is not None
    assert conf.connection_timeout is not None
    assert conf.connection_timeout.value.endswith("s")  # Envoy's form, converted once
    assert conf.connection_timeout.origins and all(o.startswith("MeshTimeout/") for o in conf.connection_timeout.origins)


def test_a_merged_conf_that_parse_refuses_is_a_bug_not_a_violation() -> None:
    broken = Merged({"connectionTimeout": "soon"}, {}, ())
    with pytest.raises(MergedConfError, match="connectionTimeout"):
        timeout.parse(ConfReader.of_merged(broken))


CIRCUIT_BREAKER = Path(__file__).parent / "testdata" / "circuit_breaker.input"


def test_a_merged_circuit_breaker_reads_both_spellings_as_one_typed_conf() -> None:
    # `other`: the Mesh-wide policy in the seed's spelling, then kuma-spelling's connectionLimits and nested detectors.
    desired = load_and_parse(CIRCUIT_BREAKER)
    web = next(dp for dp in desired.dataplanes if dp.name == "web")
    found = match_proxy(desired, web)
    merged = next(found.to(circuit_breaker.KIND, d.destination) for d in found.destinations
                  if d.destination.name == "other")
    conf = circuit_breaker.parse(ConfReader.of_merged(merged))
    assert conf is not None and conf.pool is not None and conf.outlier_detection is not None
    assert conf.pool.max_connections is not None and conf.pool.max_connections.value == 5
    assert [o.split(" ")[0] for o in conf.pool.max_connections.origins] == ["MeshCircuitBreaker/kuma-spelling"]
    # Both policies wrote a pool: the seed's defaults for what neither set are theirs.
    assert [o.split(" ")[0] for o in conf.pool.written_by] == ["MeshCircuitBreaker/default-circuit-breaker",
                                                               "MeshCircuitBreaker/kuma-spelling"]
    detectors = conf.outlier_detection.detectors
    assert detectors is not None and detectors.total_failures is not None
    assert detectors.total_failures.value == 3  # `totalFailures: {consecutive: 3}`, over the flat 5
    assert detectors.gateway_failures is None and detectors.success_rate is None
    assert conf.outlier_detection.healthy_panic_threshold is not None
    assert conf.outlier_detection.healthy_panic_threshold.value == 0.0


def test_a_circuit_breaker_item_is_checked_in_either_spelling() -> None:
    reader_violations: list[str] = []

    class Recorder(FieldCheck):
        def __init__(self) -> None:
            self.out = []

        def fail(self, path: PathKey, message: str) -> None:
            reader_violations.append(f"{'.'.join(map(str, path))}: {message}")

    default = {"connectionLimits": {"maxConnections": 0},
               "outlierDetection": {"detectors": {"gatewayFailures": {},
                                                  "successRate": {"standardDeviationFactor": "0.0001"}}}}
    assert circuit_breaker.parse(ConfReader(default, ("default",), Recorder())) is not None
    assert reader_violations == [
        "default.connectionLimits.maxConnections: must be between 1 and 4294967295, got 0",
        ("default.outlierDetection.detectors.gatewayFailures: `consecutive` is required (or write "
         "`consecutiveGatewayFailures: N`)"),
        ("default.outlierDetection.detectors.successRate.standardDeviationFactor: must be at least 0.001 (Envoy "
         "counts thousandths)"),
    ]


HEALTH_CHECK = Path(__file__).parent / "testdata" / "health_check.input"


def test_a_merged_health_check_converts_once_with_origins() -> None:
    # web -> backend: hc for everyone, web-override (more specific) for web's http path and timeout.
    desired = load_and_parse(HEALTH_CHECK)
    web = next(dp for dp in desired.dataplanes if dp.name == "web")
    found = match_proxy(desired, web)
    merged = next(found.to(health_check.KIND, d.destination) for d in found.destinations
                  if d.destination.name == "backend")
    conf = health_check.parse(ConfReader.of_merged(merged))
    assert conf.timeout is not None and conf.timeout.value == "1s"
    assert [o.split(" ")[0] for o in conf.timeout.origins] == ["MeshHealthCheck/web-override"]
    assert conf.http is not None and conf.http.value.path is not None and conf.http.value.path.value == "/ready"
    # The section's origins: both policies set something in `http`.
    assert {o.split(" ")[0] for o in conf.http.origins} == {"MeshHealthCheck/hc", "MeshHealthCheck/web-override"}
    assert conf.http.value.add_headers is not None
    assert conf.http.value.add_headers.value == (health_check.Header("x-probe", "meshplan"),)
    assert conf.tcp is not None and conf.tcp.value.send is not None
    assert conf.tcp.value.send.value == b"hello".hex().upper()  # base64 decoded, then hex, once
    assert conf.healthy_panic_threshold is not None and conf.healthy_panic_threshold.value == 0.0
    assert len(conf.written_by) == 2


def test_a_merged_health_check_may_have_lost_its_checkers_to_nulls() -> None:
    # An item may write `http: null` alone (it names a checker); what it merges to then sets only the panic settings.
    merged = Merged({"failTrafficOnPanic": True}, {}, ())
    conf = health_check.parse(ConfReader.of_merged(merged))
    assert conf.http is None and conf.tcp is None and conf.grpc is None
    assert conf.fail_traffic_on_panic is not None and conf.fail_traffic_on_panic.value is True
