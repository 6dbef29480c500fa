"""Control characters from outside (file names, map keys, lock and sandbox records, what an Envoy reports) reach the
terminal escaped in every human output, and exactly as they were in JSON."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import respx
from rich.console import Console
from typer.testing import CliRunner

from meshplan.apply.command import _progress
from meshplan.apply.deliver import Outcome, ProxyResult
from meshplan.cli import app
from meshplan.observe import live
from meshplan.present.text import printable
from meshplan.sandbox import mesh as sandbox
from meshplan.state import records as state
from meshplan.util.processes import TrackedProcess
from tests.builders import DEMO
from tests.test_live import dump, serve

EVIL = "\x1b]0;owned\x07\x1b[2J\nError: forged line\u202e"
ESCAPED = "\\x1b]0;owned\\x07\\x1b[2J\\nError: forged line\\u202e"
runner = CliRunner()


def assert_clean(text: str) -> None:
    """Nothing in `text` a terminal would obey, and no line that an outsider's newline made."""
    assert not any(c in text for c in "\x1b\x07\u202e\x9b"), repr(text)
    assert "\nError: forged line" not in text


def test_printable() -> None:
    assert printable(EVIL) == ESCAPED
    assert printable("plain text, ünïcödé, tabs\tand [brackets]") == "plain text, ünïcödé, tabs\\tand [brackets]"
    assert printable("two\nlines\x1b", keep_newlines=True) == "two\nlines\\x1b"
    assert printable("\x00\x7f\x85\x9b\u2028") == "\\x00\\x7f\\x85\\x9b\\u2028"


def test_file_names_and_keys_in_validate_errors(tmp_path: Path) -> None:
    desired = tmp_path / "desired"
    shutil.copytree(DEMO, desired)
    (desired / f"bad{EVIL}.yaml").write_text("type: MeshTimeout\nname: t\nspec: [1, 2\n")  # malformed
    (desired / "keys.yaml").write_text(
        "type: MeshTimeout\nname: t2\nspec:\n  targetRef: {kind: Mesh}\n  "
        + json.dumps(EVIL) + ": 1\n")  # an unknown key whose name is the payload
    result = runner.invoke(app, ["validate", str(desired)])
    assert result.exit_code == 1
    assert_clean(result.stderr)
    assert f"bad{ESCAPED}.yaml:" in result.stderr
    # the key, in the path: quoted as JSON quotes a string, since it does not print
    assert f"spec[{json.dumps(EVIL)}]: unknown field" in result.stderr


def test_explain_shows_a_file_name_escaped(tmp_path: Path) -> None:
    desired = tmp_path / "desired"
    shutil.copytree(DEMO, desired)
    policy = desired / "policies" / "timeout.yaml"
    policy.rename(policy.with_name(f"timeout{EVIL}.yaml"))
    result = runner.invoke(app, ["explain", str(desired), "web"])
    assert result.exit_code == 0, result.stderr
    assert_clean(result.stdout)
    assert f"timeout{ESCAPED}.yaml:" in result.stdout


def _envoy_answers(tmp_path: Path) -> tuple[respx.MockRouter, dict[str, Any]]:
    """Admin APIs for the demo whose web reports a listener in error with the payload in Envoy's message."""
    from meshplan.render.proxies import render_all
    from meshplan.validate.resources import load_and_parse

    proxies = render_all(load_and_parse(DEMO))
    router = respx.mock(assert_all_called=False)
    for p in proxies:
        listeners = [{"name": x["name"], "active_state": {"listener": x}} for x in p.listeners]
        if p.name == "web":
            listeners.append({"name": f"bad{EVIL}", "error_state": {"details": f"cannot bind {EVIL}"}})
        answers = dump(p.name, clusters=list(p.clusters), listeners=listeners)
        serve(router, p.admin_url, answers)
    return router, {p.name: p for p in proxies}


def test_envoy_reported_strings_in_plan_and_drift(tmp_path: Path) -> None:
    router, _ = _envoy_answers(tmp_path)
    with router:
        human = runner.invoke(app, ["plan", str(DEMO), "--state", str(tmp_path / "state")])
        machine = runner.invoke(app, ["plan", str(DEMO), "--state", str(tmp_path / "state"), "--json"])
        drift_text = runner.invoke(app, ["drift", str(DEMO), "--state", str(tmp_path / "state")])
        drift_json = runner.invoke(app, ["drift", str(DEMO), "--state", str(tmp_path / "state"), "--json"])
    assert human.exit_code == 0, human.stderr
    assert_clean(human.stdout)
    assert f'Warning: web: listener "bad{ESCAPED}" was rejected by Envoy: cannot bind {ESCAPED}' in human.stdout

    [web] = [p for p in json.loads(machine.stdout)["proxies"] if p["name"] == "web"]
    assert web["warnings"] == [f'listener "bad{EVIL}" was rejected by Envoy: cannot bind {EVIL}']  # exact

    assert drift_text.exit_code == 4
    assert_clean(drift_text.stdout)
    assert f"rejected     web [sidecar]: listener bad{ESCAPED}: cannot bind {ESCAPED}" in drift_text.stdout
    [web] = [p for p in json.loads(drift_json.stdout)["proxies"] if p["name"] == "web"]
    assert web["detail"] == f"listener bad{EVIL}: cannot bind {EVIL}"


def test_a_node_id_and_an_error_body_from_an_admin_api(tmp_path: Path) -> None:
    with respx.mock(assert_all_called=False, assert_all_mocked=False) as router:  # the others answer nothing
        answers: dict[str, Any] = dump(f"web{EVIL}")
        serve(router, "http://127.0.1.1:9901", answers)  # the demo's web: answered by another node id
        other = dump("backend-1")
        other[live.CLUSTERS_PATH] = live.httpx.Response(500, text=f"boom {EVIL}")
        serve(router, "http://127.0.1.2:9901", other)
        result = runner.invoke(app, ["plan", str(DEMO), "--state", str(tmp_path / "state")])
    assert result.exit_code == 1
    assert_clean(result.stdout)
    assert "boom \\x1b]0;owned\\x07\\x1b[2J Error: forged line\\u202e" in result.stdout  # its newline made a space


def test_apply_progress_escapes_names_and_envoys_words_and_markup() -> None:
    console = Console(file=io.StringIO(), width=300, no_color=True, record=True)
    _progress(console, ProxyResult(f"web{EVIL}", "sidecar", Outcome.ROLLED_BACK, f"[bold]refused[/bold] {EVIL}"))
    text = console.export_text()
    assert_clean(text)
    assert f"rolled back web{ESCAPED} [sidecar] (0 ms): [bold]refused[/bold] {ESCAPED}" in text


def test_sandbox_status_escapes_a_recorded_name(tmp_path: Path) -> None:
    process = TrackedProcess("app", f"web{EVIL}", 2**22 + 5, ("python",), 0.0, None, "127.0.0.1", 1, "/dev/null")
    (tmp_path / sandbox.SANDBOX_FILE).write_text(json.dumps({"format_version": 1, "version": "x",
                                                             "processes": [process.to_json()]}))
    result = runner.invoke(app, ["sandbox", "status", "--state", str(tmp_path)])
    assert result.exit_code == 1  # the process is not running
    assert_clean(result.stdout)
    assert f"app      web{ESCAPED}" in result.stdout and "DEAD" in result.stdout


def test_error_messages_escape_what_a_lock_file_says(tmp_path: Path) -> None:
    lock = {"id": "abc", "who": EVIL, "pid": 2**22, "host": "elsewhere", "operation": EVIL, "since": "now"}
    (tmp_path / state.LOCK_FILE).write_text(json.dumps(lock))
    refused = runner.invoke(app, ["apply", str(DEMO), "--auto-approve", "--state", str(tmp_path)])
    assert refused.exit_code == 1
    assert_clean(refused.stderr)
    assert f"held by {ESCAPED} (pid 4194304 on elsewhere) for {ESCAPED}" in refused.stderr
    removed = runner.invoke(app, ["force-unlock", "abc", "--state", str(tmp_path)])
    assert removed.exit_code == 0
    assert_clean(removed.stderr)
    assert f"Removed the lock ID abc, held by {ESCAPED}" in removed.stderr
