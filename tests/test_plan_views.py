"""The plan as people review it, for the changes they review most: goldens of the human view at 80 and 200 columns
and of the markdown comment. Each case starts from the demo as last applied (the state records what meshplan
delivered and what its policies meant; the proxies run exactly that, read from saved dumps), then edits the desired
directory or changes a proxy behind meshplan's back, and plans. No value may be cut, and every change names its cause."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.plan.workflow import delivered
from meshplan.render.proxies import render_all
from meshplan.state import records as state
from meshplan.validate.resources import load_and_parse
from tests.golden import check_golden

DEMO = Path(__file__).parent.parent / "examples" / "demo"
CLUSTERS_DUMP = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
LISTENERS_DUMP = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


MESH_RULE = "        kind: Mesh\n      default:\n        action: Deny\n    - targetRef:\n        kind: MeshService\n        name: web\n"


def _let_everyone_in(desired: Path) -> None:
    """Before: backend-from-web let every client in."""
    _replace(desired / "policies" / "traffic-permission.yaml", MESH_RULE, MESH_RULE.replace("Deny", "Allow"))


def _deny_admin(desired: Path, live: Path) -> None:
    """Now: only web (the demo as it is)."""
    _replace(desired / "policies" / "traffic-permission.yaml", MESH_RULE.replace("Deny", "Allow"), MESH_RULE)


def _retry_more(desired: Path, live: Path) -> None:
    _replace(desired / "policies" / "retry.yaml", "numRetries: 3", "numRetries: 5")


def _external_endpoint(desired: Path, live: Path) -> None:
    _replace(desired / "external.yaml", "port: 18080", "port: 18081")


def _by_hand(desired: Path, live: Path) -> None:
    """Someone set backend-1's local cluster's connect timeout by hand; the desired directory did not change."""
    dump = json.loads((live / "backend-1.json").read_text())
    for entry in dump["configs"][0]["dynamic_active_clusters"]:
        if entry["cluster"]["name"].startswith("local:"):
            entry["cluster"]["connect_timeout"] = "0.250s"
    (live / "backend-1.json").write_text(json.dumps(dump))


def _slower_httpbin_for_every_client(desired: Path, live: Path) -> None:
    """A longer connect timeout to httpbin from every sidecar: web and admin get the same change to their cluster."""
    (desired / "policies" / "httpbin-timeout.yaml").write_text("""\
type: MeshTimeout
mesh: default
name: httpbin-connect
spec:
  targetRef:
    kind: Mesh
    proxyType: ["sidecar"]
  to:
    - targetRef:
        kind: MeshExternalService
        name: httpbin
      default:
        connectionTimeout: 4s
""")


CASES: dict[str, Callable[[Path, Path], None]] = {
    "permission": _deny_admin, "retry": _retry_more, "external-endpoint": _external_endpoint,
    "outside": _by_hand, "identical-proxies": _slower_httpbin_for_every_client,
}


def _applied(desired: Path, state_dir: Path, live: Path) -> None:
    """The demo as meshplan last applied it: every proxy runs it (its dump) and the state says so."""
    proxies = render_all(load_and_parse(desired))
    live.mkdir()
    records = {}
    for proxy in proxies:
        dump = {"configs": [
            {"@type": CLUSTERS_DUMP, "dynamic_active_clusters": [{"cluster": c} for c in proxy.clusters]},
            {"@type": LISTENERS_DUMP, "dynamic_listeners": [
                {"name": listener["name"], "active_state": {"listener": listener}} for listener in proxy.listeners]},
        ]}
        (live / f"{proxy.name}.json").write_text(json.dumps(dump))
        records[proxy.name] = state.ProxyRecord(
            "applied-fingerprint", "v1", "2026-12-01T00:00:00+00:00", "applied",
            resources={"clusters": list(proxy.clusters), "listeners": list(proxy.listeners)},
            behaviour=list(proxy.behaviour))
    state.write(state_dir, state.State(serial=1, lineage="lineage", proxies=records))


@pytest.fixture
def planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], dict[str, str]]:
    monkeypatch.chdir(tmp_path)  # origins name files as `desired/...`: the goldens hold no temporary path

    def plan(case: str) -> dict[str, str]:
        shutil.copytree(DEMO, tmp_path / "desired")
        if case == "permission":
            _let_everyone_in(Path("desired"))
        _applied(Path("desired"), Path("state"), Path("live"))
        assert delivered(state.read(Path("state")))  # the case starts from a real last apply
        CASES[case](Path("desired"), Path("live"))
        args = ["plan", "desired", "--live-from", "live", "--state", "state"]
        views = {}
        for name, columns, extra in (("80", "80", []), ("200", "200", []), ("md", "200", ["-o", "markdown"])):
            result = CliRunner(env={"COLUMNS": columns, "NO_COLOR": "1"}).invoke(app, [*args, *extra])
            assert result.exit_code == 0, result.output
            views[name] = result.stdout
        return views

    return plan


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_views(case: str, planned: Callable[[str], dict[str, str]], request: pytest.FixtureRequest) -> None:
    views = planned(case)
    for name, text in views.items():
        assert "..." not in text, f"a value is cut in the {name} view"
        assert "# base" not in text, f"a change in the {name} view names no cause"
        if name == "80":
            assert not _wider_than_80(text), f"lines wider than 80 columns in the 80-column view: {_wider_than_80(text)}"
        check_golden(request, f"plan-{case}.{'md' if name == 'md' else name + '-columns.txt'}", text)


def test_the_cases_show_what_they_are_about(planned: Callable[[str], dict[str, str]]) -> None:
    views = planned("permission")
    assert "admin → backend  permission: Allow → Deny" in views["200"]
    assert "| admin | backend | permission | Allow → Deny |" in views["md"]


def test_identical_proxies_are_shown_once(planned: Callable[[str], dict[str, str]]) -> None:
    views = planned("identical-proxies")
    assert "# admin, web [sidecar] (mesh default, 2 proxies, the same changes)" in views["200"]


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*",?|\S+')



def _wider_than_80(text: str) -> list[str]:
    """The lines of a view wider than 80 columns that are more than one token that cannot be broken (a long JSON
    string), after their indent and `+ ~ - #` marker."""
    return [line for line in text.splitlines()
            if len(line) > 80 and not _TOKEN.fullmatch(re.sub(r"^\s*(?:[-+~#]\s+)?", "", line))]
