"""`meshplan plan` against real Envoys in the sandbox: no noise, exactly the changes made, drift behind our back,
and a dead proxy reported while the others are planned."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import jsonschema
import pytest
from conftest import deliver
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki
from tests.builders import DemoCopy, copy_demo, start_sandbox
from tests.golden import check_golden

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "plan.schema.json").read_text())

NEW_DATAPLANE = """---
type: Dataplane
mesh: default
name: backend-3
networking:
  address: 127.0.1.4
  admin:
    port: 9901
  inbound:
    - port: 8080
      serviceAddress: 127.0.1.4
      servicePort: 18080
      tags:
        kuma.io/service: backend
        kuma.io/protocol: http
"""
EXTERNAL_OUTBOUND = """    - address: 127.0.1.1
      port: 10002
      backendRef:
        kind: MeshExternalService
        name: httpbin
"""


def plan(demo: DemoCopy, state: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(
        app, ["plan", str(demo.path), "--state", str(state), *args]
    )
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def test_sandbox_running_the_rendered_config_plans_no_changes(tmp_path: Path, sandbox_state: Path) -> None:
    demo = copy_demo(tmp_path / "demo")
    start_sandbox(demo.path, sandbox_state)
    code, out, _ = plan(demo, sandbox_state, "--detailed-exitcode")
    assert code == 0, out
    assert "No changes." in out
    assert "Plan: 0 to add, 0 to change, 0 to destroy across 0 proxies" in out
    code, out, _ = plan(demo, sandbox_state, "--json", "--detailed-exitcode")
    document = json.loads(out)
    jsonschema.validate(document, SCHEMA)
    assert code == 0
    assert [(p["name"], p["status"], p["changes"]) for p in document["proxies"]] == [
        ("admin", "ok", []), ("backend-1", "ok", []), ("backend-2", "ok", []), ("web", "ok", []), ("egress", "ok", [])
    ]
    for proxy in document["proxies"]:  # the same config on both sides has the same fingerprint
        assert proxy["desired_fingerprint"] == proxy["live_fingerprint"]


def _start_before_edit(demo: DemoCopy, state: Path) -> None:
    """The mesh as it runs before the edit, plus an Envoy for the new dataplane started from its bootstrap with
    nothing delivered yet (as a new proxy joins)."""
    (demo.path / "new.yaml").write_text(demo.addr(NEW_DATAPLANE))
    after = load_and_parse(demo.path)
    (demo.path / "new.yaml").unlink()
    before = {p.name: p for p in render_all(load_and_parse(demo.path))}
    pki.ensure(after, state)
    proxies = [before.get(p.name) or dataclasses.replace(p, clusters=(), listeners=()) for p in render_all(after)]
    sandbox.up(after, proxies, state)


def _edit(demo: DemoCopy) -> None:
    (demo.path / "new.yaml").write_text(demo.addr(NEW_DATAPLANE))
    dataplanes = (demo.path / "dataplanes.yaml").read_text()
    (demo.path / "dataplanes.yaml").write_text(dataplanes.replace(demo.addr(EXTERNAL_OUTBOUND), ""))
    external = demo.path / "external.yaml"
    external.write_text(external.read_text().replace("port: 18080", "port: 18081"))


def test_edits_show_exactly_the_changed_resources_and_fields(tmp_path: Path, sandbox_state: Path, request: pytest.FixtureRequest) -> None:
    demo = copy_demo(tmp_path / "demo")
    _start_before_edit(demo, sandbox_state)
    _edit(demo)

    code, out, _ = plan(demo, sandbox_state, "--json", "--detailed-exitcode")
    assert code == 2
    document = json.loads(out)
    jsonschema.validate(document, SCHEMA)
    changes = {
        p["name"]: sorted((c["action"], c["type"], c["name"]) for c in p["changes"]) for p in document["proxies"]
    }
    web_listener = f"outbound:{demo.addr('127.0.1.1')}:10002"
    assert changes == {
        "admin": [("update", "cluster", "backend")],  # every client of backend sees the new instance
        "backend-1": [],
        "backend-2": [],
        "backend-3": [
            ("create", "cluster", f"local:{demo.addr('127.0.1.4')}:18080"),
            ("create", "listener", f"inbound:{demo.addr('127.0.1.4')}:8080"),
        ],
        "web": [("delete", "cluster", "mes:default:httpbin"), ("delete", "listener", web_listener), ("update", "cluster", "backend", )],
        "egress": [("update", "cluster", "mes:default:httpbin")],
    }
    fields = {
        (p["name"], c["name"]): [(f["path"], f["before"], f["after"], f["origins"]) for f in c["fields"]]
        for p in document["proxies"] for c in p["changes"] if c["action"] == "update"
    }
    assert fields[("egress", "mes:default:httpbin")] == [
        ("load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value", 18080, 18081,
         [f"MeshExternalService/httpbin ({demo.path / 'external.yaml'}:2)"])  # what changed it, not `base`
    ]
    (added,) = fields[("web", "backend")]
    assert added[0] == "load_assignment.endpoints[0].lb_endpoints[2]" and added[1] is None
    assert added[3] == [f"Dataplane/backend-3 ({demo.path / 'new.yaml'}:2)"]  # the new instance, not `base`
    assert added[2]["endpoint"]["address"]["socket_address"] == {"address": demo.addr("127.0.1.4"), "port_value": 8080}
    assert document["summary"] == {
        "add": 2, "change": 3, "destroy": 2, "proxies_changed": 4, "sidecars_changed": 3, "egresses_changed": 1,
        "unreachable": [],
    }

    code, human, _ = plan(demo, sandbox_state, "--detailed-exitcode")
    assert code == 2
    assert human.rstrip().endswith("Plan: 2 to add, 3 to change, 2 to destroy across 4 proxies (3 sidecars, 1 egress).")
    text = human.replace(demo.proxies, "127.0.1.").replace(demo.externals, "127.0.2.").replace(str(demo.path), "DEMO")
    check_golden(request, "plan-edits.golden.txt", text)
    code, summary, _ = plan(demo, sandbox_state, "--summary")
    assert code == 0
    assert f'- web [sidecar] listener "{web_listener}"' in summary
    assert len([line for line in summary.splitlines() if line[:2] in ("+ ", "~ ", "- ")]) == 7


def test_a_change_behind_meshplans_back_shows_in_the_plan(tmp_path: Path, sandbox_state: Path) -> None:
    demo = copy_demo(tmp_path / "demo")
    proxies = {p.name: p for p in start_sandbox(demo.path, sandbox_state)}
    backend = proxies["backend-1"]
    (local,) = [c for c in backend.clusters if c["name"].startswith("local:")]
    tampered = dataclasses.replace(backend, clusters=({**local, "connect_timeout": "0.250s"},))
    deliver(sandbox_state, tampered, "out-of-band")

    code, out, _ = plan(demo, sandbox_state, "--json", "--detailed-exitcode")
    assert code == 2
    changed = {p["name"]: p["changes"] for p in json.loads(out)["proxies"] if p["changes"]}
    assert list(changed) == ["backend-1"]
    (change,) = changed["backend-1"]
    assert (change["action"], change["name"]) == ("update", local["name"])
    assert [(f["path"], f["before"], f["after"]) for f in change["fields"]] == [("connect_timeout", "0.250s", local["connect_timeout"])]


def test_a_dead_proxy_is_reported_and_the_others_are_planned(tmp_path: Path, sandbox_state: Path) -> None:
    demo = copy_demo(tmp_path / "demo")
    start_sandbox(demo.path, sandbox_state)
    (victim,) = [p for p in sandbox.status(sandbox_state) if p.role == "envoy" and p.name == "backend-2"]
    os.kill(victim.pid, signal.SIGKILL)

    code, out, _ = plan(demo, sandbox_state, "--json", "--detailed-exitcode", "--timeout", "1")
    assert code == 1
    document = json.loads(out)
    jsonschema.validate(document, SCHEMA)
    assert document["complete"] is False
    assert document["summary"]["unreachable"] == ["backend-2"]
    status = {p["name"]: (p["status"], p["detail"]) for p in document["proxies"]}
    assert status["backend-2"][0] == "unreachable" and "refused" in status["backend-2"][1].lower()
    assert {name for name, (s, _) in status.items() if s == "ok"} == {"admin", "backend-1", "web", "egress"}

    code, human, _ = plan(demo, sandbox_state, "--timeout", "1")
    assert code == 1
    assert "Warning: the plan is incomplete: 1 proxy could not be read:" in human
    assert "! backend-2 [sidecar]" in human
    code, _, _ = plan(demo, sandbox_state, "--allow-incomplete", "--detailed-exitcode", "--timeout", "1")
    assert code == 0


def test_snapshot_then_plan_from_it(tmp_path: Path, sandbox_state: Path) -> None:
    demo = copy_demo(tmp_path / "demo")
    start_sandbox(demo.path, sandbox_state)
    result = CliRunner().invoke(app, ["snapshot", str(demo.path), str(tmp_path / "snap")])
    assert result.exit_code == 0, result.output
    sandbox.down(sandbox_state)
    external = demo.path / "external.yaml"
    external.write_text(external.read_text().replace("port: 18080", "port: 18081"))
    code, out, _ = plan(demo, sandbox_state, "--live-from", str(tmp_path / "snap"), "--summary", "--detailed-exitcode")
    assert code == 2
    assert out.splitlines()[0] == '~ egress [egress] cluster "mes:default:httpbin"'


def test_rendering_in_a_fork_while_fetching_gives_the_same_plan(
    tmp_path: Path, sandbox_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshplan.plan import workflow
    from meshplan.plan.model import to_json

    demo = copy_demo(tmp_path / "demo")
    start_sandbox(demo.path, sandbox_state)
    external = demo.path / "external.yaml"
    external.write_text(external.read_text().replace("port: 18080", "port: 18081"))
    here = to_json(workflow.compute_plan(demo.path, sandbox_state))
    monkeypatch.setattr(workflow, "FORK_AT", 0)  # large fleets render in a forked process
    forked = to_json(workflow.compute_plan(demo.path, sandbox_state))
    assert [p["changes"] for p in forked["proxies"]] == [p["changes"] for p in here["proxies"]]
    assert forked["summary"] == here["summary"] and forked["summary"]["change"] == 1
    assert [p["desired_fingerprint"] for p in forked["proxies"]] == [p["desired_fingerprint"] for p in here["proxies"]]
