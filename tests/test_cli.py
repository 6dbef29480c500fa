"""The command line as a user meets it: help, render, bootstrap, and `validate --envoy` with the real binary."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from meshplan.cli import app

DEMO = Path(__file__).parent.parent / "examples" / "demo"
runner = CliRunner()


@pytest.mark.parametrize(
    "command, words",
    [
        ([], "Plan and apply Envoy configuration"),
        (["validate"], "report every problem"),
        (["render"], "clusters and listeners every proxy should run"),
        (["bootstrap"], "what one proxy's host needs"),
        (["serve"], "Serve every proxy its snapshot over ADS"),
        (["plan"], "Exit codes: 0"),
        (["snapshot"], "plan --live-from"),
        (["show"], "without contacting any proxy"),
        (["inspect"], "what one proxy's Envoy runs now"),
        (["sandbox"], "local mesh of real Envoys"),
        (["sandbox", "up"], "real Envoy per proxy"),
        (["sandbox", "down"], "by PID"),
        (["demo"], "whole story"),
    ],
)
def test_help_says_what_each_command_does(command: list[str], words: str) -> None:
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert words in " ".join(result.stdout.split())


def test_every_demo_proxy_passes_envoy_validate_mode(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(DEMO), "--envoy"])
    assert result.exit_code == 0, result.stderr
    for proxy in ("backend-1 [sidecar]", "backend-2 [sidecar]", "web [sidecar]", "egress [egress]"):
        assert f"{proxy}: Envoy accepts the configuration" in result.stderr


def test_envoy_rejection_is_reported_per_proxy(tmp_path: Path) -> None:
    desired = tmp_path / "desired"
    desired.mkdir()
    for name in ("mesh.yaml", "dataplanes.yaml", "egress.yaml"):
        (desired / name).write_text((DEMO / name).read_text())
    (desired / "external.yaml").write_text(
        (DEMO / "external.yaml").read_text()
        + "  tls:\n    enabled: true\n    verification:\n      caCert:\n        file: /nonexistent/ca.pem\n"
    )
    result = runner.invoke(app, ["validate", str(desired), "--envoy"])
    assert result.exit_code == 1
    assert "egress [egress]: Envoy rejects the configuration:" in result.stderr
    assert "/nonexistent/ca.pem" in result.stderr
    assert "web [sidecar]: Envoy accepts the configuration" in result.stderr
    assert "Error: Envoy rejected 1 of 5 proxies." in result.stderr


def test_render_one_proxy_as_yaml() -> None:
    result = runner.invoke(app, ["render", str(DEMO), "--proxy", "egress", "-o", "yaml"])
    assert result.exit_code == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert list(document) == ["egress"]
    assert [c["name"] for c in document["egress"]["clusters"]] == ["mes:default:httpbin"]


def test_render_unknown_proxy_is_an_error() -> None:
    result = runner.invoke(app, ["render", str(DEMO), "--proxy", "nope"])
    assert result.exit_code == 1
    assert "no proxy named 'nope' (proxies: admin, backend-1, backend-2, web, egress)" in result.stderr


def test_apply_refuses_to_prompt_without_a_terminal(tmp_path: Path) -> None:
    result = runner.invoke(app, ["apply", str(DEMO), "--state", str(tmp_path / "state")], input="yes\n")
    assert result.exit_code == 1
    assert "standard input is not a terminal; use --auto-approve" in result.stderr
    assert not (tmp_path / "state").exists()


def test_force_unlock_needs_the_lock_id(tmp_path: Path) -> None:
    from meshplan.state import records as state

    with state.lock(tmp_path, "apply") as held:
        wrong = runner.invoke(app, ["force-unlock", "nope", "--state", str(tmp_path)])
        assert wrong.exit_code == 1 and f"held with ID {held.id}" in wrong.stderr
        right = runner.invoke(app, ["force-unlock", held.id, "--state", str(tmp_path)])
        assert right.exit_code == 0
    assert state.holder(tmp_path) is None


def test_the_demo_finds_the_bundled_example() -> None:
    """`meshplan demo` without --example runs examples/demo of the checkout (a module moved deeper must follow)."""
    from meshplan.sandbox import demo

    assert (demo.EXAMPLE / "mesh.yaml").is_file() or any(demo.EXAMPLE.glob("*.yaml"))
    assert demo.EXAMPLE.parent.name == "examples"


def _meshplan(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point, as a user or a CI job runs it (not typer's test runner, which skips `main`)."""
    return subprocess.run([sys.executable, "-c", "from meshplan.cli import main; main()", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "200", **env})


@pytest.mark.parametrize(
    "args",
    [
        ["plan", str(DEMO), "--proxi", "x"],  # a typo in a cron or CI job must not read as "changes" (2)
        ["drift", str(DEMO), "--jsn"],
        ["render", str(DEMO), "-o", "xml"],
        ["inspect", str(DEMO), "web", "everything"],
        ["plan"],
        ["no-such-command"],
    ],
)
def test_a_usage_error_exits_1_not_2(args: list[str]) -> None:
    result = _meshplan(*args)
    assert result.returncode == 1, result.stderr
    assert "Usage: meshplan" in result.stderr
    assert "Traceback" not in result.stderr


def test_version() -> None:
    result = _meshplan("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"meshplan \d+\.\d+\.\d+\S*\n", result.stdout)


def _commands(group: Any, prefix: list[str]) -> list[list[str]]:
    found = [prefix]
    for name, sub in getattr(group, "commands", {}).items():
        found += _commands(sub, [*prefix, name])
    return found


@pytest.mark.parametrize("command", _commands(typer.main.get_command(app), []), ids=" ".join)
def test_help_names_no_python_types(command: list[str]) -> None:
    text = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*command, "--help"]).stdout
    assert "Show this message and exit" in text
    assert re.findall(r"<(?:bool|str|int|float|path|list\[[a-z]+\]|[a-z]+ range)>", text) == []


def test_help_lists_the_choices() -> None:
    text = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["apply", "--help"]).stdout
    assert "stop|continue" in text
    text = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["render", "--help"]).stdout
    assert "json|yaml" in text


def test_no_color_takes_the_colour_out_even_when_forced(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    for proxy in ("web", "backend-1", "backend-2", "admin", "egress"):
        (live / f"{proxy}.json").write_text('{"configs": []}')  # nothing runs yet: every resource is a change
    args = ["plan", str(DEMO), "--live-from", str(live), "--state", str(tmp_path / "state")]
    coloured = _meshplan(*args, FORCE_COLOR="1")
    plain = _meshplan("--no-color", *args, FORCE_COLOR="1")
    assert coloured.returncode == plain.returncode == 0
    assert "\x1b[" in coloured.stdout
    assert "\x1b[" not in plain.stdout
    assert "will be created" in plain.stdout


def _stderr_on_a_terminal(*args: str) -> tuple[int, str]:
    """Run meshplan with its stderr on a pseudo-terminal (as an operator's shell has it); what it drew there."""
    import pty
    import select

    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", "from meshplan.cli import main; main()", *args],
                               stdout=subprocess.DEVNULL, stderr=terminal, stdin=subprocess.DEVNULL,
                               env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(terminal)
    drawn = bytearray()
    try:
        for _ in range(10_000):  # bounded: 60 s of 6 ms polls at most, and a chunk per poll
            ready, _, _ = select.select([controller], [], [], 0.006)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not chunk:
                    break
                drawn += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout=60), drawn.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_reading_proxies_shows_progress_on_a_terminal_and_nothing_in_a_pipe(tmp_path: Path) -> None:
    # Nothing answers on a closed loopback port: each proxy is read (and found unreachable) quickly.
    desired = tmp_path / "desired"
    shutil.copytree(DEMO, desired)
    for path in desired.rglob("*.yaml"):
        path.write_text(path.read_text().replace("port: 9901", "port: 1"))
    args = ["plan", str(desired), "--state", str(tmp_path / "state"), "--timeout", "0.5", "--allow-incomplete"]
    code, drawn = _stderr_on_a_terminal(*args)
    assert code == 0, drawn
    assert "Reading the admin APIs (0/5)" in drawn
    piped = _meshplan(*args)
    assert piped.returncode == 0
    assert "Reading the admin APIs" not in piped.stderr


@pytest.mark.envoy
def test_sandbox_status_as_json(mesh: Any, sandbox_state: Path) -> None:
    from meshplan.sandbox import mesh as sandbox

    mesh.sidecar("web-1")
    sandbox.up(mesh.desired(), mesh.proxies, sandbox_state)
    result = CliRunner().invoke(app, ["sandbox", "status", "--state", str(sandbox_state), "-o", "json"])
    assert result.exit_code == 0, result.output
    processes = json.loads(result.stdout)["processes"]
    assert sorted((p["role"], p["name"], p["alive"]) for p in processes) == [
        ("app", "web/web-1", True), ("envoy", "web-1", True), ("server", "meshplan-serve", True)]
    envoy = next(p for p in processes if p["role"] == "envoy")
    os.kill(envoy["pid"], signal.SIGKILL)
    for _ in range(500):  # bounded: until the kill shows, at most ~10 s
        answer = CliRunner().invoke(app, ["sandbox", "status", "--state", str(sandbox_state), "-o", "json"])
        if answer.exit_code != 0:
            break
        time.sleep(0.02)
    assert answer.exit_code == 1
    assert {p["name"]: p["alive"] for p in json.loads(answer.stdout)["processes"]}["web-1"] is False


def test_sandbox_status_as_json_with_no_sandbox(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sandbox", "status", "--state", str(tmp_path), "-o", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"processes": []}


def _live_nothing(tmp_path: Path) -> Path:
    """Saved dumps of the demo's proxies running nothing yet: every resource is a change, and no Envoy is needed."""
    live = tmp_path / "live"
    live.mkdir()
    for proxy in ("web", "backend-1", "backend-2", "admin", "egress"):
        (live / f"{proxy}.json").write_text('{"configs": []}')
    return live


def test_show_prints_a_saved_plan_as_plan_printed_it(tmp_path: Path) -> None:
    saved = tmp_path / "demo.plan"
    cli = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
    planned = cli.invoke(app, ["plan", str(DEMO), "--live-from", str(_live_nothing(tmp_path)),
                               "--state", str(tmp_path / "state"), "--out", str(saved)])
    assert planned.exit_code == 0, planned.stderr
    assert f"Saved the plan to {saved}. To apply exactly this plan: meshplan apply {saved}" in planned.stderr
    shown = cli.invoke(app, ["show", str(saved)])
    assert shown.exit_code == 0, shown.stderr
    assert "will be created" in shown.stdout
    assert shown.stdout == planned.stdout
    as_json = cli.invoke(app, ["show", str(saved), "-o", "json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == json.loads(saved.read_text())


@pytest.mark.parametrize("content", [None, "not json", "[]", '{"format_version": "1.0"}', '{"format_version": "9.0", "proxies": []}',
                                     "[" * 10_000])
def test_show_refuses_what_is_not_a_saved_plan(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "bad.plan"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 1
    assert f"Error: {path}: not a meshplan plan file" in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
