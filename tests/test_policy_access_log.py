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

from meshplan.model import ProxyConfig
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
    ("open telemetry", "backends:\n  - openTelemetry:\n      endpoint: otel:4317",
     [(".backends[0].openTelemetry", "`openTelemetry` backends are not supported", "openTelemetry:")]),
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

def rendered(logs: str = "/var/log/mesh") -> dict[str, str]:
    return {"policy.yaml": "---\n".join([
        # Every destination of the sidecars, with Kuma's default format (HTTP or TCP by the destination).
        policy(f"backends:\n  - file:\n      path: {logs}/outbound.log", name="all-outbound", ref="kind: Mesh"),
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


def _traffic_policies(logs: Path) -> str:
    return "---\n".join([
        policy(f"backends:\n  - file:\n      path: {logs}/web-to-backend.log", name="to-backend"),
        policy(f"backends:\n  - file:\n      path: {logs}/web-to-db.log", name="to-db", ref="kind: MeshService\n        name: db"),
        policy(f"backends:\n  - file:\n      path: {logs}/web-to-httpbin.log", name="to-httpbin", ref=TO_HTTPBIN,
               top="kind: Mesh\n    proxyType: [Sidecar]"),
        policy(file_backend(f"{logs}/backend-inbound.log", json_format(
            {"path": "%REQ(:PATH)%", "status": "%RESPONSE_CODE%", "direction": "%KUMA_TRAFFIC_DIRECTION%",
             "service": "%KUMA_DESTINATION_SERVICE%"})), name="inbound", section="from", ref=FROM_MESH, top="kind: MeshService\n    name: backend"),
        policy(file_backend(f"{logs}/egress.log", "format:\n  plain: 'egress %KUMA_DESTINATION_SERVICE% %REQ(:PATH)% %RESPONSE_CODE%'"),
               name="egress-httpbin", ref=TO_HTTPBIN, top=EGRESS_TOP),
    ])  # fmt: skip


@pytest.fixture(scope="module")
def running(loopback: Loopback, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One sandbox for the module's traffic tests; brought down, and checked for leftovers, however they end."""
    root = tmp_path_factory.mktemp("access-log")
    logs = root / "logs"
    logs.mkdir()
    mesh = module_mesh(root / "desired", {"policy.yaml": _traffic_policies(logs)}, loopback)
    directory = mesh.root
    with running_sandbox(load_and_parse(directory), root / "state"), httpx.Client(trust_env=False, timeout=5.0) as client:
        yield Running(mesh, logs, client)


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
