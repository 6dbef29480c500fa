"""MeshTrace: its validation table (Kuma's verdicts, our inputs), its placement (never the egress), `envoy --mode
validate` of its render (the golden is tests/testdata/trace.input), and real requests whose spans reach a stand-in
Zipkin collector and a stand-in OpenTelemetry collector (OTLP/gRPC, tests/otlp_collector.py)."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Loopback

from meshplan.match.behaviour import facts
from meshplan.match.result import match_proxy
from meshplan.policies.registry import KINDS
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
from tests.otlp_collector import Collector as OtlpCollector
from tests.policy_render import envoy_validates
from tests.policy_tables import single_default_policy, validation_table_tests

KIND = "MeshTrace"
SERVER, CLIENT = 2, 3  # OTLP's SpanKind
SERVICES = [Service("backend", instance="backend-1"), Service("db", "tcp", instance="db-1"),
            Service("web", calls=("backend", "db"))]


policy = partial(single_default_policy, KIND, name="trace")  # policy(default, name=..., top=...)


def write(directory: Path, files: dict[str, str]) -> Path:
    mesh = write_mesh(directory, FixedAddresses(network="127.0.3."), SERVICES, externals={"httpbin": "http"})
    return mesh.write(files)


ZIPKIN = "backends:\n  - type: Zipkin\n    zipkin:\n      url: http://zipkin:9411/api/v2/spans\n"

GOOD = {
    "zipkin": ZIPKIN,
    "zipkin, every field": """
        backends:
          - zipkin:
              url: https://collector.example:443/api/v2/spans
              traceId128bit: true
              apiVersion: httpProto
              sharedSpanContext: false
        """,
    "datadog": "backends:\n  - type: Datadog\n    datadog:\n      url: http://127.0.0.1:8126\n      splitService: true",
    "open telemetry": "backends:\n  - type: OpenTelemetry\n    openTelemetry:\n      endpoint: otel-collector:4317",
    "sampling as numbers and strings": ZIPKIN + "sampling:\n  overall: 80\n  client: '99.5'\n  random: 0",
    "tags": ZIPKIN + "tags:\n  - name: team\n    literal: core\n  - name: agent\n    header:\n      name: user-agent\n"
                     "      default: none\n  - name: version\n    header:\n      name: x-version",
    "no backends (tracing off)": "backends: []",
}

# (case, default, [(path under spec.default, message fragment, text on the line the violation points at)])
BAD: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    ("backends missing", "sampling:\n  overall: 10", [("", "`backends` is required", "default:")]),
    ("two backends", ZIPKIN + "  - type: Datadog\n    datadog:\n      url: http://dd:8126",
     [(".backends", "must have zero or one backend defined, got 2", "backends:")]),
    ("block not defined", "backends:\n  - type: Zipkin", [(".backends[0].zipkin", "must be defined", "- type: Zipkin")]),
    ("type and block differ", "backends:\n  - type: Datadog\n    zipkin:\n      url: http://z:9411/api/v2/spans", [
        (".backends[0].zipkin", "`zipkin` is not used by a backend of type Datadog", "zipkin:"),
        (".backends[0].datadog", "must be defined", "- type: Datadog"),
    ]),
    ("unknown type", "backends:\n  - type: Jaeger", [(".backends[0].type", "must be one of Zipkin, Datadog, OpenTelemetry",
                                                      "type: Jaeger")]),
    ("zipkin url empty", "backends:\n  - zipkin:\n      url: ''", [(".backends[0].zipkin.url", "must not be empty", "url:")]),
    ("zipkin url not a url", "backends:\n  - zipkin:\n      url: not a url\n      apiVersion: grpc", [
        (".backends[0].zipkin.url", "must be a valid url", "url: not a url"),
        (".backends[0].zipkin.apiVersion", "must be one of httpJson, httpProto", "apiVersion: grpc"),
    ]),
    ("zipkin url without a path", "backends:\n  - zipkin:\n      url: http://zipkin:9411",
     [(".backends[0].zipkin.url", "must name the collector's endpoint path", "url:")]),
    ("zipkin fields", "backends:\n  - zipkin:\n      url: http://z:9411/api/v2/spans\n      traceId128bit: yes please\n"
                      "      sampling: 3", [
        (".backends[0].zipkin.traceId128bit", "must be a boolean", "traceId128bit:"),
        (".backends[0].zipkin.sampling", "unknown field", "sampling: 3"),
    ]),
    ("datadog url", "backends:\n  - datadog:\n      url: https://user@dd/path?q=1", [
        (".backends[0].datadog.url", "scheme must be http", "url:"),
        (".backends[0].datadog.url", "port must be defined", "url:"),
        (".backends[0].datadog.url", "user must not be defined", "url:"),
        (".backends[0].datadog.url", "path must not be defined", "url:"),
        (".backends[0].datadog.url", "query must not be defined", "url:"),
    ]),
    ("open telemetry endpoint", "backends:\n  - openTelemetry:\n      endpoint: http://otel/v1/traces",
     [(".backends[0].openTelemetry.endpoint", "must be host:port", "endpoint:")]),
    ("open telemetry backendRef", "backends:\n  - openTelemetry:\n      backendRef:\n        kind: MeshOpenTelemetryBackend\n"
                                  "        name: otel",
     [(".backends[0].openTelemetry.backendRef", "MeshOpenTelemetryBackend reference is not supported", "backendRef:")]),
    ("sampling", ZIPKIN + "sampling:\n  overall: 101\n  client: lots\n  random: -1\n  always: 1", [
        (".sampling.overall", "must be between 0 and 100", "overall: 101"),
        (".sampling.client", "must be a number between 0 and 100", "client: lots"),
        (".sampling.random", "must be between 0 and 100", "random: -1"),
        (".sampling.always", "unknown field", "always: 1"),
    ]),
    ("tags", ZIPKIN + "tags:\n  - name: ''\n    literal: x\n  - name: both\n    literal: x\n    header:\n      name: h\n"
                      "  - name: neither\n  - name: no-header-name\n    header:\n      default: d", [
        (".tags[0].name", "must not be empty", "- name: ''"),
        (".tags[1]", "must have only one type defined: `header` or `literal`", "- name: both"),
        (".tags[2]", "must have only one type defined: `header` or `literal`", "- name: neither"),
        (".tags[3].header", "`name` is required", "header:"),
    ]),
]


test_good_specs_pass, test_bad_specs_report_every_violation_with_file_line_and_path = validation_table_tests(
    write, policy, GOOD, BAD, section="spec.default")


def test_the_egress_is_refused_with_the_placement_words(tmp_path: Path) -> None:
    files = {"egress.yaml": policy(ZIPKIN, top="kind: Mesh\n    proxyType: [Egress]"),
             "both.yaml": policy(ZIPKIN, name="both", top="kind: Mesh\n    proxyTypes: [Sidecar, Egress]")}
    found = [split_violation(v) for v in violations(write(tmp_path, files))]
    assert [(file, line, path) for file, line, path, _ in found] == [
        ("both.yaml", 7, "spec.targetRef.proxyTypes"), ("egress.yaml", 7, "spec.targetRef.proxyType")]
    for *_, message in found:
        assert message == ("MeshTrace is not implemented on the egress; the placement table says MeshTrace for a "
                           "MeshExternalService is implemented on: Out of scope (single item)")


def test_the_most_specific_policy_wins_whole_lists(tmp_path: Path) -> None:
    """Kuma's merge: a Dataplane policy over a Mesh one; `backends` and `tags` are lists, replaced whole."""
    files = {"policy.yaml": "---\n".join([
        policy(ZIPKIN + "sampling:\n  overall: 10\n  random: 20\ntags:\n  - name: a\n    literal: x", name="mesh"),
        policy("backends:\n  - datadog:\n      url: http://127.0.0.1:8126\nsampling:\n  random: 30",
               name="web", top="kind: Dataplane\n    name: web"),
    ])}
    desired = load_and_parse(write(tmp_path, files))
    web = next(dp for dp in desired.dataplanes if dp.name == "web")
    merged = match_proxy(desired, web, KINDS).single(KIND)
    assert merged.conf == {"backends": [{"datadog": {"url": "http://127.0.0.1:8126"}}],
                           "sampling": {"overall": 10, "random": 30}, "tags": [{"name": "a", "literal": "x"}]}
    assert str(merged.origins["sampling.random"].set_by) == f"MeshTrace/web ({tmp_path}/policy.yaml:31)"  # random: 30
    egress = desired.egresses[0]
    assert match_proxy(desired, egress, KINDS).single(KIND).empty


def test_behaviour_shows_tracing_for_the_whole_proxy(tmp_path: Path) -> None:
    desired = load_and_parse(write(tmp_path, {"policy.yaml": policy(ZIPKIN)}))
    web = next(dp for dp in desired.dataplanes if dp.name == "web")
    found = [f for f in facts(desired, match_proxy(desired, web, KINDS), web) if f.aspect == "trace"]
    assert [(f.client, f.destination, f.origins) for f in found] == [
        ("web", "*", (f"MeshTrace/trace ({tmp_path}/policy.yaml:8)",))]
    assert found[0].value == {"backends": [{"type": "Zipkin", "zipkin": {"url": "http://zipkin:9411/api/v2/spans"}}]}


@pytest.mark.envoy
def test_every_proxy_passes_envoy_validation(tmp_path: Path) -> None:
    for case in ("zipkin, every field", "datadog", "open telemetry"):
        directory = write(tmp_path / case / "desired", {"policy.yaml": policy(GOOD[case] + "\n" + GOOD["tags"][len(ZIPKIN):])})
        desired = load_and_parse(directory)
        assert envoy_validates(desired, tmp_path / case / "state") == dict.fromkeys(desired.proxy_names()), case


# --- real traffic: spans reach a stand-in Zipkin collector ----------------------------------------------------


@dataclass
class Collector:
    """A Zipkin collector stand-in on loopback: keeps every span POSTed to /api/v2/spans (JSON v2)."""

    url: str
    spans: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The spans matching `predicate`, once there is one; Envoy flushes every few seconds, so the wait is long
        but bounded."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [span for span in self.spans if predicate(span)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@pytest.fixture(scope="module")
def collector(loopback: Loopback) -> Iterator[Collector]:
    ip = loopback.ip()
    spans: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server spelling
            body = self._body()
            if self.path == "/api/v2/spans":
                with lock:
                    spans.extend(json.loads(body))
            self.send_response(202 if self.path == "/api/v2/spans" else 404)
            self.end_headers()

        def _body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("content-length", "0")))
            chunks = []
            for _ in range(10_000):  # bounded: a batch of spans is a few chunks
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after the chunk
                if size == 0:
                    break
            return b"".join(chunks)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((ip, loopback.port(ip)), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Collector(f"http://{ip}:{server.server_address[1]}/api/v2/spans", spans, lock)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass(frozen=True)
class Running:
    mesh: MeshFiles
    collector: Collector


def traced_mesh(tmp_path_factory: pytest.TempPathFactory, loopback: Loopback, name: str,
                backend: str) -> Iterator[MeshFiles]:
    """web calling backend, both sidecars tracing to `backend` (one `backends` entry, indented as a list item) with a
    literal tag and a header tag, running."""
    root = tmp_path_factory.mktemp(name)
    mesh = write_mesh(root / "desired", loopback, [Service("backend", instance="backend-1"), Service("web", calls=("backend",))])
    mesh.write({"policy.yaml": policy(textwrap.dedent(backend) + textwrap.dedent("""\
        tags:
          - name: team
            literal: payments
          - name: agent
            header:
              name: user-agent
        """))})
    with running_sandbox(load_and_parse(mesh.root), root / "state"):
        yield mesh


def send_six(mesh: MeshFiles, agent: str) -> None:
    """Six requests web -> backend: Envoy's Zipkin and OpenTelemetry tracers flush after 5 spans or 5 seconds, so
    both sidecars flush soon."""
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        for i in range(6):
            answer = client.get(mesh.url("web", "backend", f"/status/20{i}"), headers={"user-agent": agent})
            assert answer.status_code == 200 + i


@pytest.fixture(scope="module")
def running(loopback: Loopback, collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    for mesh in traced_mesh(tmp_path_factory, loopback, "trace", f"""\
            backends:
              - type: Zipkin
                zipkin:
                  url: {collector.url}
            """):
        yield Running(mesh, collector)


@pytest.mark.envoy
def test_a_request_through_the_sidecars_produces_spans_at_the_collector(running: Running) -> None:
    send_six(running.mesh, "probe/7")

    def ours(kind: str) -> Any:
        return lambda span: span.get("kind") == kind and span.get("tags", {}).get("agent") == "probe/7"

    client_spans = running.collector.wait_for(ours("CLIENT"))
    server_spans = running.collector.wait_for(ours("SERVER"))
    assert client_spans, f"no client span from web's outbound at the collector: {running.collector.spans}"
    assert server_spans, f"no server span from backend's inbound at the collector: {running.collector.spans}"
    span = client_spans[0]
    assert span["tags"]["team"] == "payments" and span["tags"]["kuma.mesh"] == "default"
    assert span["tags"]["http.url"].endswith("/status/200") or any(
        s["tags"].get("http.url", "").endswith("/status/200") for s in client_spans)
    # One trace: the server span on backend continues the client span web started.
    traces = {s["traceId"] for s in client_spans} & {s["traceId"] for s in server_spans}
    assert traces, (client_spans, server_spans)


# --- real traffic: spans reach a stand-in OpenTelemetry collector (OTLP/gRPC) -----------------------------------


@pytest.fixture(scope="module")
def running_otel(loopback: Loopback, otlp_collector: OtlpCollector,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshFiles]:
    yield from traced_mesh(tmp_path_factory, loopback, "trace-otel", f"""\
        backends:
          - type: OpenTelemetry
            openTelemetry:
              endpoint: {otlp_collector.address}
        """)


@pytest.mark.envoy
def test_a_request_through_the_sidecars_produces_opentelemetry_spans(running_otel: MeshFiles,
                                                                     otlp_collector: OtlpCollector) -> None:
    send_six(running_otel, "otlp/9")

    def ours(kind: int) -> Any:
        return lambda span: span.kind == kind and span.attributes.get("agent") == "otlp/9"

    client_spans = otlp_collector.wait_for_span(ours(CLIENT))
    server_spans = otlp_collector.wait_for_span(ours(SERVER))
    assert client_spans, f"no client span from web's outbound at the collector: {otlp_collector.spans}"
    assert server_spans, f"no server span from backend's inbound at the collector: {otlp_collector.spans}"
    span = client_spans[0]
    assert span.attributes["team"] == "payments" and span.attributes["kuma.mesh"] == "default"
    assert span.resource["service.name"] == "web"  # the tracer's service_name: the sidecar's service
    assert {s.resource["service.name"] for s in server_spans} == {"backend"}
    assert any(s.attributes.get("http.url", "").endswith("/status/200") for s in client_spans), client_spans
    # One trace: the server span on backend continues the client span web started.
    assert {s.trace_id for s in client_spans} & {s.trace_id for s in server_spans}, (client_spans, server_spans)
