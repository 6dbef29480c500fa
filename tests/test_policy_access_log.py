"""MeshAccessLog: its validation table, its render (golden), Envoy's acceptance, and real requests that Envoy logs
to files: on a sidecar's outbound (HTTP and TCP), its inbound (`from`), and on the egress."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Loopback

from meshplan.match.behaviour import facts
from meshplan.match.explain import NOT_WRITTEN, explain_proxy, render_text
from meshplan.match.result import match_proxy
from meshplan.model import ProxyConfig
from meshplan.policies.registry import KINDS
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    Service,
    assert_violations_point_at,
    running_sandbox,
    split_violation,
    table_cases,
    violations,
    write_mesh,
)
from tests.otlp_collector import Collector
from tests.policy_render import envoy_validates

KIND = "MeshAccessLog"


# --- a small mesh: web -> backend (HTTP), web -> db (TCP), web -> httpbin (an external service, via the egress) ----


SERVICES = [Service("backend", instance="backend-1"), Service("db", "tcp", instance="db-1"),
            Service("web", calls=("backend", "db", "mes:httpbin"))]


def module_mesh(directory: Path, files: dict[str, str], addresses: Addresses | None = None) -> MeshFiles:
    """The module's mesh (fixed addresses unless others are given) and these files (policies) in `directory`."""
    mesh = write_mesh(directory, addresses or FixedAddresses(network="127.0.1."), SERVICES, externals={"httpbin": "http"},
                      external_endpoints=1)
    mesh.write({name: text for name, text in files.items()})
    return mesh


def write(directory: Path, files: dict[str, str]) -> Path:
    return module_mesh(directory, files).root


def policy(default: str, *, name: str = "log", section: str = "to", ref: str = "kind: MeshService\n        name: backend",
           top: str = "kind: Mesh") -> str:  # fmt: skip
    body = textwrap.indent(textwrap.dedent(default).strip(), " " * 8)
    return (
        f"type: {KIND}\nmesh: default\nname: {name}\nspec:\n  targetRef:\n    {top}\n  {section}:\n"
        f"    - targetRef:\n        {ref}\n      default:\n{body}\n"
    )


def file_backend(path: str, fmt: str = "") -> str:
    return f"backends:\n  - type: File\n    file:\n      path: {path}\n" + textwrap.indent(textwrap.dedent(fmt).strip(), " " * 6) + "\n"


def json_format(fields: dict[str, str], *, omit_empty: bool = False) -> str:
    """A backend's `format: {json: [...]}`, one key a field, in order."""
    keys = "".join(f'    - key: {key}\n      value: "{value}"\n' for key, value in fields.items())
    return "format:\n  json:\n" + keys + ("  omitEmptyValues: true\n" if omit_empty else "")


EGRESS_TOP = "kind: Mesh\n    proxyType: [Egress]"
TO_HTTPBIN = "kind: MeshExternalService\n        name: httpbin"
FROM_MESH = "kind: Mesh"


# --- validation -------------------------------------------------------------------------------------------------

GOOD = {
    "file, default format": "backends:\n  - file:\n      path: /var/log/access.log",
    "file, plain": file_backend("/tmp/a.log", "format:\n  type: Plain\n  plain: '%START_TIME% %KUMA_MESH% %RESPONSE_CODE%'"),
    "file, json": file_backend("/tmp/a.log", """
        format:
          type: Json
          omitEmptyValues: true
          json:
            - key: path
              value: "%REQ(:PATH)%"
            - key: source
              value: "%KUMA_SOURCE_SERVICE%"
        """),
    "format without type": file_backend("/tmp/a.log", "format:\n  plain: '%RESPONSE_CODE%'"),
    "two backends": "backends:\n  - file:\n      path: /tmp/a.log\n  - file:\n      path: /tmp/b.log",
    "no backends (turns logging off)": "backends: []",
    "open telemetry, endpoint only (Kuma's default line as the body)": "backends:\n  - openTelemetry:\n      endpoint: otel:4317",
    "open telemetry, no port (Kuma's 4317)": "backends:\n  - type: OpenTelemetry\n    openTelemetry:\n      endpoint: 10.0.0.9",
    "open telemetry, every body value": """
        backends:
          - type: OpenTelemetry
            openTelemetry:
              endpoint: "[::1]:4317"
              attributes:
                - key: http.route
                  value: "%REQ(:PATH)% %KUMA_MESH%"
                - key: a_b.c9
                  value: literal
              body:
                kvlistValue:
                  values:
                    - key: "%KUMA_SOURCE_SERVICE%"
                      value: {stringValue: "%RESPONSE_CODE%"}
                    - key: flags
                      value:
                        arrayValue:
                          values: [{stringValue: "%DURATION%"}, "plain", {kvlistValue: {values: []}},
                                   {arrayValue: {}}]
        """,
    "open telemetry, a string body": "backends:\n  - openTelemetry:\n      endpoint: otel:4317\n      body: '%KUMA_MESH% %RESPONSE_CODE%'",
}

# (case, default, [(path under spec.to[0].default, message fragment, text on the line the violation points at)])
BAD: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    ("no backends", "backend: []", [
        ("", "`backends` is required", "default:"),
        (".backend", "unknown field", "backend:"),
    ]),
    ("not a mapping", "backends:\n  - /tmp/a.log", [(".backends[0]", "must be a mapping", "- /tmp/a.log")]),
    ("no block", "backends:\n  - {}", [(".backends[0]", "exactly one of `file`, `tcp` or `openTelemetry`", "- {}")]),
    ("two blocks", "backends:\n  - file:\n      path: /tmp/a.log\n    tcp:\n      address: 127.0.0.1:5000",
     [(".backends[0]", "exactly one of `file`, `tcp` or `openTelemetry`, got 2", "- file:")]),
    ("tcp", "backends:\n  - type: Tcp\n    tcp:\n      address: 127.0.0.1:5000",
     [(".backends[0].tcp", "`tcp` backends are not supported", "tcp:")]),
    ("open telemetry without endpoint", "backends:\n  - type: OpenTelemetry\n    openTelemetry:\n      endpoint: ''\n"
                                         "  - openTelemetry:\n      body: x\n  - type: OpenTelemetry", [
        (".backends[0].openTelemetry", "must have exactly one defined: endpoint, backendRef", "openTelemetry:"),
        (".backends[1].openTelemetry", "must have exactly one defined: endpoint, backendRef", "openTelemetry:"),
        (".backends[2]", "`openTelemetry` is required", "- type: OpenTelemetry"),
    ]),
    ("open telemetry backendRef", "backends:\n  - openTelemetry:\n      backendRef:\n        kind: MeshOpenTelemetryBackend\n"
                                  "        name: otel\n  - openTelemetry:\n      endpoint: otel:4317\n      backendRef:\n"
                                  "        kind: MeshOpenTelemetryBackend\n        name: otel", [
        (".backends[0].openTelemetry.backendRef", "MeshOpenTelemetryBackend reference is not supported", "backendRef:"),
        (".backends[1].openTelemetry", "must have only one type defined: endpoint, backendRef", "openTelemetry:"),
    ]),
    ("open telemetry endpoints", "backends:\n  - openTelemetry:\n      endpoint: http://otel:4318/v1/logs\n"
                                 "  - openTelemetry:\n      endpoint: otel:99999\n  - openTelemetry:\n      endpoint: 'o tel:1'\n"
                                 "      format: x", [
        (".backends[0].openTelemetry.endpoint", "must be in host:port format, not a URL", "endpoint: http"),
        (".backends[1].openTelemetry.endpoint", "must be host:port", "endpoint: otel:99999"),
        (".backends[2].openTelemetry.endpoint", "must be host:port", "endpoint: 'o tel:1'"),
        (".backends[2].openTelemetry.format", "unknown field", "format: x"),
    ]),
    ("open telemetry attribute keys (Kuma's grammar)", """
        backends:
          - openTelemetry:
              endpoint: otel:4317
              attributes:
                - key: my custom attribute
                  value: x
                - key: "%KUMA_ZONE%"
                  value: x
                - key: otel.attribute
                  value: x
                - key: a..b
                  value: x
                - key: Upper
                  value: x
                - key: ""
                  value: x
                - key: fine
                  value: "%KUMA_REGION%"
                - key: fine.too
        """, [
        (".backends[0].openTelemetry.attributes[0].key", "must start with a lowercase letter", "my custom attribute"),
        (".backends[0].openTelemetry.attributes[1].key", "must be a static OpenTelemetry attribute name", "%KUMA_ZONE%"),
        (".backends[0].openTelemetry.attributes[2].key", "reserved OpenTelemetry prefix 'otel.'", "otel.attribute"),
        (".backends[0].openTelemetry.attributes[3].key", "avoid consecutive delimiters", "a..b"),
        (".backends[0].openTelemetry.attributes[4].key", "must start with a lowercase letter", "Upper"),
        (".backends[0].openTelemetry.attributes[5].key", "must be defined", 'key: ""'),
        (".backends[0].openTelemetry.attributes[6].value", "unknown placeholder %KUMA_REGION%", "%KUMA_REGION%"),
        (".backends[0].openTelemetry.attributes[7]", "`value` is required", "key: fine.too"),
    ]),
    ("open telemetry body", """
        backends:
          - openTelemetry:
              endpoint: otel:4317
              body:
                kvlistValue:
                  values:
                    - key: a
                      value: {intValue: 15}
                    - key: b
                      value: {stringValue: 7}
                    - key: c
                    - key: d
                      value: {stringValue: "%KUMA_REGION%"}
                    - key: e
                      value: {stringValue: x, intValue: 1}
                    - value: {stringValue: x}
                    - key: f
                      value:
                        arrayValue: [x]
          - openTelemetry:
              endpoint: otel:4317
              body: {textValue: x}
        """, [
        (".backends[0].openTelemetry.body.kvlistValue.values[0].value.intValue",
         "`intValue` is not supported in an access log body: Envoy's OpenTelemetry access logger takes only",
         "intValue: 15"),
        (".backends[0].openTelemetry.body.kvlistValue.values[1].value.stringValue", "must be a string", "stringValue: 7"),
        (".backends[0].openTelemetry.body.kvlistValue.values[2]", "must be a mapping with a string `key` and a `value`",
         "- key: c"),
        (".backends[0].openTelemetry.body.kvlistValue.values[3].value.stringValue", "unknown placeholder %KUMA_REGION%",
         "stringValue: \"%KUMA_REGION%\""),
        (".backends[0].openTelemetry.body.kvlistValue.values[4].value", "must be a string or an OTLP AnyValue",
         "stringValue: x, intValue: 1"),
        (".backends[0].openTelemetry.body.kvlistValue.values[5]", "must be a mapping with a string `key` and a `value`",
         "- value:"),
        (".backends[0].openTelemetry.body.kvlistValue.values[6].value.arrayValue", "must be a mapping with a list `values`",
         "arrayValue: [x]"),
        (".backends[1].openTelemetry.body", "must be a string or an OTLP AnyValue", "body:"),
        (".backends[1].openTelemetry.body.textValue", "unknown field (expected one of: stringValue,", "body:"),
    ]),
    ("type and block differ", "backends:\n  - type: File\n    tcp:\n      address: 127.0.0.1:5000", [
        (".backends[0].tcp", "`tcp` is not used by a backend of type File", "tcp:"),
        (".backends[0]", "`file` is required", "- type: File"),
    ]),
    ("unknown type", "backends:\n  - type: Syslog", [(".backends[0].type", "must be one of File, Tcp, OpenTelemetry", "type: Syslog")]),
    ("relative path", "backends:\n  - file:\n      path: access.log\n      rotate: true", [
        (".backends[0].file.path", "must be an absolute file path", "path: access.log"),
        (".backends[0].file.rotate", "unknown field", "rotate: true"),
    ]),
    ("format with two blocks", file_backend("/tmp/a.log", "format:\n  plain: x\n  json: []"),
     [(".backends[0].file.format", "exactly one of `plain` or `json`, got 2", "format:")]),
    ("plain", file_backend("/tmp/a.log", "format:\n  type: Plain\n  plain: ' '\n  omitEmptyValues: sure"), [
        (".backends[0].file.format.plain", "must not be empty", "plain:"),
        (".backends[0].file.format.omitEmptyValues", "must be a boolean", "omitEmptyValues:"),
    ]),
    ("json", file_backend("/tmp/a.log", """
        format:
          type: Json
          json:
            - key: path
              value: "%REQ(:PATH)%"
            - key: path
              value: "%RESPONSE_CODE%"
            - key: empty
              value: ""
            - key: zone
              value: "%KUMA_REGION%"
            - value: x
        """), [
        (".backends[0].file.format.json[1].key", "key 'path' is listed twice", "- key: path"),
        (".backends[0].file.format.json[2].value", "must not be empty", 'value: ""'),
        (".backends[0].file.format.json[3].value", "unknown placeholder %KUMA_REGION%", "value: \"%KUMA_REGION%\""),
        (".backends[0].file.format.json[4]", "`key` is required", "- value: x"),
    ]),
    ("empty json", file_backend("/tmp/a.log", "format:\n  type: Json\n  json: []"),
     [(".backends[0].file.format.json", "must not be empty", "json: []")]),
]


@pytest.mark.parametrize("case", sorted(GOOD))
def test_good_specs_pass(tmp_path: Path, case: str) -> None:
    files = {
        "to.yaml": policy(GOOD[case]),
        "from.yaml": policy(GOOD[case], name="inbound", section="from", ref=FROM_MESH),
    }
    assert violations(write(tmp_path, files)) == []


@pytest.mark.parametrize(("default", "expected"), table_cases(BAD))
def test_bad_specs_report_every_violation_with_file_line_and_path(
    tmp_path: Path, default: str, expected: list[tuple[str, str, str]]
) -> None:
    directory = write(tmp_path, {"policy.yaml": policy(default)})
    assert_violations_point_at(directory, "policy.yaml", expected)


def test_from_selects_every_client_and_never_the_egress(tmp_path: Path) -> None:
    default = GOOD["file, default format"]
    files = {
        "by-service.yaml": policy(default, section="from", ref="kind: MeshService\n        name: web"),
        "on-egress.yaml": policy(default, name="egress-from", section="from", ref=FROM_MESH, top=EGRESS_TOP),
    }
    directory = write(tmp_path, files)
    found = {(file, line, path): message for file, line, path, message in map(split_violation, violations(directory))}
    assert list(found) == [("by-service.yaml", 9, "spec.from[0].targetRef.kind"), ("on-egress.yaml", 8, "spec.from")]
    assert "`from` items select every client (kind Mesh), got 'MeshService'" in found[list(found)[0]]
    assert 'Sidecar (to), Egress (to + proxyType: ["egress"])' in found[list(found)[1]]


# --- render -----------------------------------------------------------------------------------------------------

# An OpenTelemetry backend as a list entry of `backends`: a body with Kuma's and Envoy's placeholders, attributes.
OTEL_BACKEND_AT = """\
  - type: OpenTelemetry
    openTelemetry:
      endpoint: {endpoint}
      body:
        kvlistValue:
          values:
            - key: route
              value: {{stringValue: "%KUMA_SOURCE_SERVICE% -> %KUMA_DESTINATION_SERVICE% %REQ(:PATH)%"}}
            - key: status
              value: {{stringValue: "%RESPONSE_CODE%"}}
            - key: direction
              value: {{stringValue: "%KUMA_TRAFFIC_DIRECTION%"}}
      attributes:
        - key: http.user_agent
          value: "%REQ(USER-AGENT)%"
        - key: mesh
          value: "%KUMA_MESH%"
"""
OTEL_BACKEND = OTEL_BACKEND_AT.format(endpoint="otel-collector:4317")

def rendered(logs: str = "/var/log/mesh") -> dict[str, str]:
    return {"policy.yaml": "---\n".join([
        # Every destination of the sidecars, with Kuma's default format (HTTP or TCP by the destination).
        policy(f"backends:\n  - file:\n      path: {logs}/outbound.log\n{OTEL_BACKEND}", name="all-outbound", ref="kind: Mesh"),
        # Inbound, as JSON.
        policy(file_backend(f"{logs}/inbound.log", json_format(
            {"path": "%REQ(:PATH)%", "status": "%RESPONSE_CODE%",
             "into": "%KUMA_DESTINATION_SERVICE% (%KUMA_TRAFFIC_DIRECTION%)"}, omit_empty=True)), name="all-inbound", section="from", ref=FROM_MESH),
        # On the egress, for one external service.
        policy(file_backend(f"{logs}/egress.log", "format:\n  plain: '%KUMA_MESH% %KUMA_SOURCE_SERVICE% -> "
                                                        "%KUMA_DESTINATION_SERVICE% %REQ(:PATH)% %RESPONSE_CODE%'"),
               name="egress-httpbin", ref=TO_HTTPBIN, top=EGRESS_TOP),  # fmt: skip
    ])}


def _loggers(proxy: ProxyConfig, listener_prefix: str) -> list[dict[str, Any]]:
    listener = next(item for item in proxy.listeners if item["name"].startswith(listener_prefix))
    loggers: list[dict[str, Any]] = listener["filter_chains"][0]["filters"][0]["typed_config"].get("access_log", [])
    return [logger["typed_config"] for logger in loggers]


def test_the_collector_cluster_and_logger_show_with_their_policies(tmp_path: Path) -> None:
    """The OpenTelemetry backend's collector cluster (Kuma's name, HTTP/2 for gRPC) and the logger carry the
    policy's origin in the plan; explain shows the backend as written into Envoy; behaviour has the access-log fact;
    two policies naming one endpoint share one cluster, another endpoint gets the next number."""
    files = {"policy.yaml": "---\n".join([
        policy("backends:\n" + OTEL_BACKEND, name="to-backend"),
        policy("backends:\n  - openTelemetry:\n      endpoint: otel-collector:4317\n"
               "  - openTelemetry:\n      endpoint: 10.1.2.3", name="to-db", ref="kind: MeshService\n        name: db"),
    ])}
    directory = write(tmp_path, files)
    desired = load_and_parse(directory)
    web = next(p for p in render_all(desired) if p.name == "web")
    clusters = {c["name"]: c for c in web.clusters if c["name"].startswith("meshaccesslog:")}
    assert sorted(clusters) == ["meshaccesslog:opentelemetry:0", "meshaccesslog:opentelemetry:1"]
    first, second = clusters["meshaccesslog:opentelemetry:0"], clusters["meshaccesslog:opentelemetry:1"]
    assert (first["type"], first["dns_lookup_family"], second["type"]) == ("STRICT_DNS", "V4_ONLY", "STATIC")
    assert second["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "10.1.2.3", "port_value": 4317}}  # Kuma's default port
    assert "http2_protocol_options" in json.dumps(first["typed_extension_protocol_options"])
    source = f"{directory}/policy.yaml"
    assert web.origins["cluster"]["meshaccesslog:opentelemetry:0"][("load_assignment",)] == [
        f"MeshAccessLog/to-backend ({source}:12)", f"MeshAccessLog/to-db ({source}:42)"]
    assert web.origins["cluster"]["meshaccesslog:opentelemetry:1"][("load_assignment",)] == [
        f"MeshAccessLog/to-db ({source}:42)"]
    loggers = _loggers(web, f"outbound:{web.address}:")  # the first outbound: backend
    assert [logger["common_config"]["grpc_service"] for logger in loggers] == [
        {"envoy_grpc": {"cluster_name": "meshaccesslog:opentelemetry:0"}}]
    explained = render_text(explain_proxy(desired, "web"))
    assert '"endpoint": "otel-collector:4317"' in explained and NOT_WRITTEN not in explained
    web_dp = next(dp for dp in desired.dataplanes if dp.name == "web")
    found = [f for f in facts(desired, match_proxy(desired, web_dp, KINDS), web_dp) if f.aspect == "access-log"]
    assert [(f.destination, f.origins) for f in found] == [
        ("backend", (f"MeshAccessLog/to-backend ({source}:12)",)), ("db", (f"MeshAccessLog/to-db ({source}:42)",))]


@pytest.mark.envoy
def test_every_proxy_passes_envoy_validation(tmp_path: Path) -> None:
    # Envoy opens every log file when it loads the listener: the directory must exist where the proxy runs.
    logs = tmp_path / "logs"
    logs.mkdir()
    directory = write(tmp_path / "desired", rendered(str(logs)))
    desired = load_and_parse(directory)
    assert envoy_validates(desired, tmp_path / "state") == dict.fromkeys(desired.proxy_names())


# --- real traffic -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Running:
    mesh: MeshFiles
    logs: Path
    client: httpx.Client
    collector: Collector


def _traffic_policies(logs: Path, collector: str) -> str:
    return "---\n".join([
        policy(f"backends:\n  - file:\n      path: {logs}/web-to-backend.log\n{OTEL_BACKEND_AT.format(endpoint=collector)}",
               name="to-backend"),
        policy(f"backends:\n  - file:\n      path: {logs}/web-to-db.log\n  - openTelemetry:\n      endpoint: {collector}",
               name="to-db", ref="kind: MeshService\n        name: db"),
        policy(f"backends:\n  - file:\n      path: {logs}/web-to-httpbin.log", name="to-httpbin", ref=TO_HTTPBIN,
               top="kind: Mesh\n    proxyType: [Sidecar]"),
        policy(file_backend(f"{logs}/backend-inbound.log", json_format(
            {"path": "%REQ(:PATH)%", "status": "%RESPONSE_CODE%", "direction": "%KUMA_TRAFFIC_DIRECTION%",
             "service": "%KUMA_DESTINATION_SERVICE%"})), name="inbound", section="from", ref=FROM_MESH, top="kind: MeshService\n    name: backend"),
        policy(file_backend(f"{logs}/egress.log", "format:\n  plain: 'egress %KUMA_DESTINATION_SERVICE% %REQ(:PATH)% %RESPONSE_CODE%'"),
               name="egress-httpbin", ref=TO_HTTPBIN, top=EGRESS_TOP),
    ])  # fmt: skip


@pytest.fixture(scope="module")
def running(loopback: Loopback, otlp_collector: Collector,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One sandbox for the module's traffic tests; brought down, and checked for leftovers, however they end."""
    root = tmp_path_factory.mktemp("access-log")
    logs = root / "logs"
    logs.mkdir()
    mesh = module_mesh(root / "desired", {"policy.yaml": _traffic_policies(logs, otlp_collector.address)}, loopback)
    directory = mesh.root
    with running_sandbox(load_and_parse(directory), root / "state"), httpx.Client(trust_env=False, timeout=5.0) as client:
        yield Running(mesh, logs, client, otlp_collector)


def _line_with(log: Path, text: str, timeout: float = 5.0) -> str:
    """The first line of `log` containing `text`, once Envoy has written it (it flushes every 100 ms here)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if log.exists():
            found = [line for line in log.read_text().splitlines() if text in line]
            if found:
                return found[0]
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    content = log.read_text() if log.exists() else "(no file)"
    raise AssertionError(f"no line with {text!r} in {log} within {timeout:g}s:\n{content}")


@pytest.mark.envoy
def test_outbound_request_is_logged_in_kumas_default_format(running: Running) -> None:
    answer = running.client.get(f"{running.mesh.outbound['web', 'backend']}/status/201", headers={"user-agent": "probe/1"})
    assert answer.status_code == 201
    line = _line_with(running.logs / "web-to-backend.log", "/status/201 ")
    assert ' default "GET /status/201 HTTP/1.1" 201 ' in line
    assert '"probe/1"' in line and f'"web" "backend" "{running.mesh.address["web"]}"' in line
    assert f'"{running.mesh.inbound["backend-1"]}"' in line  # %UPSTREAM_HOST%: backend's inbound


@pytest.mark.envoy
def test_inbound_request_is_logged_as_json(running: Running) -> None:
    answer = running.client.get(f"{running.mesh.outbound['web', 'backend']}/status/418")
    assert answer.status_code == 418
    record = json.loads(_line_with(running.logs / "backend-inbound.log", '"/status/418"'))
    assert record == {"path": "/status/418", "status": 418, "direction": "INBOUND", "service": "backend"}


@pytest.mark.envoy
def test_external_request_is_logged_on_the_sidecar_and_on_the_egress(running: Running) -> None:
    answer = running.client.get(f"{running.mesh.outbound['web', 'mes:httpbin']}/status/202")
    assert (answer.status_code, answer.json()["service"]) == (202, "httpbin")
    assert '"GET /status/202 HTTP/1.1" 202 ' in _line_with(running.logs / "web-to-httpbin.log", "/status/202")
    assert _line_with(running.logs / "egress.log", "/status/202") == "egress httpbin /status/202 202"


@pytest.mark.envoy
def test_tcp_connection_is_logged_when_it_closes(running: Running) -> None:
    # tcp_proxy logs a connection when it ends: ask the app to close it.
    with httpx.Client(trust_env=False, timeout=5.0) as once:
        answer = once.get(f"{running.mesh.outbound['web', 'db']}/tcp-probe", headers={"connection": "close"})
    assert (answer.status_code, answer.json()["service"]) == (200, "db")
    line = _line_with(running.logs / "web-to-db.log", "(db) took")
    assert f" default {running.mesh.address['web']}(web)->{running.mesh.inbound['db-1']}(db) took " in line
    sent = int(line.split("sent ")[1].split(" bytes")[0])
    received = int(line.split("received: ")[1].split(" bytes")[0])
    assert sent >= len(answer.content) and received > len("GET /tcp-probe HTTP/1.1\r\n")


@pytest.mark.envoy
def test_outbound_request_is_exported_to_the_opentelemetry_collector(running: Running) -> None:
    """web's outbound to backend exports each request to the collector (Envoy's OpenTelemetry access logger over
    the HTTP/2 cluster meshplan adds): the body and attributes the policy asks for, with the request's values."""
    answer = running.client.get(f"{running.mesh.outbound['web', 'backend']}/status/203", headers={"user-agent": "otel/3"})
    assert answer.status_code == 203
    found = running.collector.wait_for_log(lambda record: record.attributes.get("http.user_agent") == "otel/3")
    assert found, f"no log record from web's outbound at the collector: {running.collector.logs}"
    record = found[0]
    assert record.body == {"route": "web -> backend /status/203", "status": "203", "direction": "OUTBOUND"}
    assert record.attributes == {"http.user_agent": "otel/3", "mesh": "default"}
    assert record.resource["kuma.mesh"] == "default"
    assert record.resource["log_name"] == "MeshAccessLog"  # Envoy adds the logger's name; Kuma's is MeshAccessLog


@pytest.mark.envoy
def test_tcp_connection_is_exported_with_kumas_default_line(running: Running) -> None:
    with httpx.Client(trust_env=False, timeout=5.0) as once:
        answer = once.get(f"{running.mesh.outbound['web', 'db']}/otel-probe", headers={"connection": "close"})
    assert answer.status_code == 200
    web, db = running.mesh.address["web"], running.mesh.inbound["db-1"]
    found = running.collector.wait_for_log(lambda record: isinstance(record.body, str) and "(db) took" in record.body)
    assert found, f"no log record from web's TCP outbound at the collector: {running.collector.logs}"
    assert f" default {web}(web)->{db}(db) took " in found[0].body
