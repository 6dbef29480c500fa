"""Warnings about the desired directory: a policy that selects no proxy, a targetRef name that nothing has. Valid
input (exit 0), most often a typo: each names file:line and the closest existing name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.match.unused import warnings
from meshplan.validate.resources import load_and_parse

DEMO = Path(__file__).parent.parent / "examples" / "demo"
PROXIES = ("web", "backend-1", "backend-2", "admin", "egress")


@pytest.fixture
def desired(tmp_path: Path) -> Path:
    copy = tmp_path / "desired"
    shutil.copytree(DEMO, copy)
    return copy


# A timeout for a service nobody has: `backnd`, a typo of `backend` (its targetRef name is on line 10).
TYPO = """\
type: MeshTimeout
mesh: default
name: typo
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: MeshService
        name: backnd
      default:
        connectionTimeout: 2s
"""


def _add(directory: Path, text: str) -> Path:
    path = directory / "policies" / "extra.yaml"
    path.write_text(text)
    return path


def test_the_example_has_none() -> None:
    assert warnings(load_and_parse(DEMO)) == []


def test_a_misspelt_service_says_which_one_was_meant(desired: Path) -> None:
    path = _add(desired, TYPO)
    assert warnings(load_and_parse(desired)) == [
        f"{path}:10: MeshTimeout/typo: targetRef names MeshService 'backnd', a service that no Dataplane inbound "
        "provides (did you mean 'backend'?)"]


def test_a_policy_for_a_dataplane_that_does_not_exist(desired: Path) -> None:
    path = _add(desired, """\
type: MeshRetry
mesh: default
name: for-nobody
spec:
  targetRef:
    kind: Dataplane
    name: web-2
  to:
    - targetRef:
        kind: Mesh
      default:
        tcp:
          maxConnectAttempt: 2
""")
    (found,) = warnings(load_and_parse(desired))
    assert found == (f"{path}:7: MeshRetry/for-nobody: targetRef names Dataplane 'web-2', a Dataplane that does not "
                     "exist (did you mean 'web'?)")


def test_a_policy_that_selects_no_proxy(desired: Path) -> None:
    path = _add(desired, """\
type: MeshTimeout
mesh: default
name: no-such-version
spec:
  targetRef:
    kind: MeshSubset
    tags:
      version: v9
  to:
    - targetRef:
        kind: Mesh
      default:
        connectionTimeout: 2s
""")
    assert warnings(load_and_parse(desired)) == [
        f"{path}:5: MeshTimeout/no-such-version: selects no proxy, so it changes nothing"]


def test_validate_and_plan_show_them_and_still_succeed(desired: Path, tmp_path: Path) -> None:
    _add(desired, TYPO)
    checked = CliRunner().invoke(app, ["validate", str(desired)])
    assert checked.exit_code == 0
    assert "Warning: " in checked.stderr and "did you mean 'backend'?" in checked.stderr
    live = tmp_path / "live"
    live.mkdir()
    for proxy in PROXIES:
        (live / f"{proxy}.json").write_text('{"configs": []}')
    planned = CliRunner().invoke(app, ["plan", str(desired), "--live-from", str(live), "--state",
                                       str(tmp_path / "state"), "--json"])
    assert planned.exit_code == 0
    (warning,) = json.loads(planned.stdout)["warnings"]
    assert "did you mean 'backend'?" in warning
    shown = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["plan", str(desired), "--live-from", str(live),
                                                           "--state", str(tmp_path / "state")])
    assert shown.stdout.startswith("Warning: ")
