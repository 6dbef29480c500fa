"""MeshMetric: its validation table (Kuma's verdicts, and every field that needs kuma-dp refused at its line), its
placement (never the egress), `envoy --mode validate` of its render (the golden is tests/testdata/metric.input), and
the endpoint on real Envoys answering in Prometheus's text format."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
from conftest import Loopback

from meshplan.validate.resources import load_and_parse
from tests.builders import (
    FixedAddresses,
    MeshFiles,
    Service,
    running_sandbox,
    split_violation,
    violations,
    write_mesh,
)
from tests.policy_render import envoy_validates
from tests.policy_tables import single_default_policy, validation_table_tests

KIND = "MeshMetric"
SERVICES = [Service("backend", instance="backend-1"), Service("web", calls=("backend",))]


policy = partial(single_default_policy, KIND, name="metrics")  # policy(default, name=..., top=...)


def write(directory: Path, files: dict[str, str]) -> Path:
    mesh = write_mesh(directory, FixedAddresses(network="127.0.4."), SERVICES, externals={"httpbin": "http"})
    return mesh.write(files)


PROMETHEUS = "backends:\n  - type: Prometheus\n    prometheus:\n      port: 5670\n      path: /metrics\n"
KUMA_DP = "Kuma implements it in its dataplane agent (kuma-dp)"

GOOD = {
    "kuma's defaults": "backends:\n  - type: Prometheus\n    prometheus: {}",
    "every field Envoy can do": """
        sidecar:
          includeUnused: true
          profiles:
            appendProfiles:
              - name: All
        applications: []
        backends:
          - prometheus:
              clientId: main
              port: 9102
              path: /stats/mesh
              tls:
                mode: Disabled
          - prometheus:
              clientId: second
              port: 9103
        """,
    "no backends": "sidecar:\n  includeUnused: false",
}

BAD: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    ("profiles Kuma rejects and kuma-dp's", "sidecar:\n  profiles:\n    appendProfiles:\n      - name: Everything\n"
                                            "      - name: Basic\n", [
        (".sidecar.profiles.appendProfiles[0].name", "unrecognized profile name 'Everything'", "- name: Everything"),
        (".sidecar.profiles.appendProfiles[1].name", f"profile 'Basic' is not supported: {KUMA_DP}", "- name: Basic"),
    ]),
    ("selectors", "sidecar:\n  profiles:\n    include:\n      - type: Regex\n        match: '(['\n"
                  "    exclude:\n      - type: Glob\n        match: x", [
        (".sidecar.profiles.include[0].match", "invalid regex", "match: '(['"),
        (".sidecar.profiles.include", f"`include` selectors are not supported: {KUMA_DP}", "include:"),
        (".sidecar.profiles.exclude[0].type", "unrecognized type 'Glob'", "- type: Glob"),
        (".sidecar.profiles.exclude", f"`exclude` selectors are not supported: {KUMA_DP}", "exclude:"),
    ]),
    ("sidecar regex (not a field of Kuma's)", "sidecar:\n  regex: http2_act.*",
     [(".sidecar.regex", "unknown field", "regex:")]),
    ("applications", "applications:\n  - name: app\n    path: /metrics/prometheus\n    port: 8888\n  - path: /m\n    port: 0", [
        (".applications[1].port", "must be a port between 1 and 65535", "port: 0"),
        (".applications", f"scraping applications is not supported: {KUMA_DP}", "applications:"),
    ]),
    ("open telemetry", "backends:\n  - type: OpenTelemetry\n    openTelemetry:\n      endpoint: otel:4317",
     [(".backends[0].openTelemetry", f"OpenTelemetry backends are not supported: {KUMA_DP}", "openTelemetry:")]),
    ("prometheus fields", "backends:\n  - prometheus:\n      port: 70000\n      path: metrics\n      scrape: true", [
        (".backends[0].prometheus.port", "must be a port between 1 and 65535", "port: 70000"),
        (".backends[0].prometheus.path", "must be an absolute URL path", "path: metrics"),
        (".backends[0].prometheus.scrape", "unknown field", "scrape: true"),
    ]),
    ("tls needs kuma-dp", "backends:\n  - prometheus:\n      tls:\n        mode: ProvidedTLS",
     [(".backends[0].prometheus.tls.mode", f"mode ProvidedTLS is not supported: {KUMA_DP}", "mode: ProvidedTLS")]),
    ("type and block", "backends:\n  - type: Prometheus\n  - type: Statsd", [
        (".backends[0].prometheus", "must be defined", "- type: Prometheus"),
        (".backends[1].type", "must be one of Prometheus, OpenTelemetry", "type: Statsd"),
    ]),
    ("one listener per port", PROMETHEUS + "  - prometheus:\n      clientId: b\n      port: 5670",
     [(".backends", "port 5670 is already the port of backends[0]", "backends:")]),
]


test_good_specs_pass, test_bad_specs_report_every_violation_with_file_line_and_path = validation_table_tests(
    write, policy, GOOD, BAD, section="spec.default")


def test_the_egress_is_refused_with_the_placement_words(tmp_path: Path) -> None:
    directory = write(tmp_path, {"egress.yaml": policy(PROMETHEUS, top="kind: Mesh\n    proxyType: [Egress]")})
    assert [split_violation(v) for v in violations(directory)] == [(
        "egress.yaml", 7, "spec.targetRef.proxyType",
        "MeshMetric is not implemented on the egress; the placement table says MeshMetric for a MeshExternalService "
        "is implemented on: Out of scope (single item)")]


@pytest.mark.envoy
def test_every_proxy_passes_envoy_validation(tmp_path: Path) -> None:
    directory = write(tmp_path / "desired", {"policy.yaml": policy(GOOD["every field Envoy can do"])})
    desired = load_and_parse(directory)
    assert envoy_validates(desired, tmp_path / "state") == dict.fromkeys(desired.proxy_names())


# --- real Envoys ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Running:
    mesh: MeshFiles
    web: str  # web's metrics endpoint (Kuma's defaults but the port), used metrics only
    backend: str  # backend-1's, every metric, on a path of its own


@pytest.fixture(scope="module")
def running(loopback: Loopback, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("metric")
    mesh = write_mesh(root / "desired", loopback, SERVICES)
    web_port, backend_port = loopback.port(mesh.address["web"]), loopback.port(mesh.address["backend-1"])
    mesh.write({"policy.yaml": "---\n".join([
        policy(f"backends:\n  - prometheus:\n      port: {web_port}", name="web", top="kind: Dataplane\n    name: web"),
        policy(f"sidecar:\n  includeUnused: true\nbackends:\n  - prometheus:\n      port: {backend_port}\n"
               "      path: /all-metrics", name="backend", top="kind: MeshService\n    name: backend"),
    ])})
    with running_sandbox(load_and_parse(mesh.root), root / "state"):
        yield Running(mesh, f"http://{mesh.address['web']}:{web_port}",
                      f"http://{mesh.address['backend-1']}:{backend_port}")


@pytest.mark.envoy
def test_the_endpoint_answers_in_prometheus_text_format(running: Running) -> None:
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        assert client.get(running.mesh.url("web", "backend", "/status/200")).status_code == 200
        answer = client.get(f"{running.web}/metrics")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/plain")
        text = answer.text
        # The request above went through web's outbound cluster `backend`: a used counter, in exposition format.
        assert "# TYPE envoy_cluster_upstream_rq_total counter" in text
        assert any(line.startswith('envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} ')
                   and int(line.rsplit(" ", 1)[1]) >= 1 for line in text.splitlines()), text[:2000]
        # Only the metrics path is forwarded to the admin API.
        assert client.get(f"{running.web}/config_dump").status_code == 404
        assert client.get(f"{running.web}/quitquitquit").status_code == 404


@pytest.mark.envoy
def test_include_unused_decides_whether_never_updated_metrics_are_listed(running: Running) -> None:
    never = "envoy_cluster_upstream_cx_overflow"  # no connection pool overflowed on any proxy here
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        used_only = client.get(f"{running.web}/metrics").text
        every = client.get(f"{running.backend}/all-metrics").text
        assert client.get(f"{running.backend}/metrics").status_code == 404
    assert f"# TYPE {never} counter" in every
    assert never not in used_only
