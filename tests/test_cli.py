"""The command line as a user meets it: help, render, bootstrap, and `validate --envoy` with the real binary."""

from __future__ import annotations

from pathlib import Path

import pytest
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
