"""The human plan is reviewable: every value whole (long ones as indented blocks), short paths, one name per policy."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from rich.console import Console

from meshplan.compare.diff import Action
from meshplan.plan.model import FieldPlan, Plan, ProxyPlan, ResourcePlan
from meshplan.present.human import origins_text, render_plan
from meshplan.present.markdown import render_markdown

DEMO = Path(__file__).parent.parent / "examples" / "demo"

HCM_PATH = 'filter_chains[0].filters["envoy.filters.network.http_connection_manager"].typed_config'
RULE = {"Deny Mesh": {"permissions": [{"any": True}], "principals": [{"authenticated": {"principal_name": {
    "exact": "spiffe://default/admin"}}}]}}


def test_one_policy_on_several_lines_is_named_once() -> None:
    assert origins_text(["MeshTimeout/a (p/t.yaml:12)", "MeshTimeout/a (p/t.yaml:13)", "base",
                         "MeshRetry/b (p/r.yaml:4)"]) == "base, MeshTimeout/a (p/t.yaml:12,13), MeshRetry/b (p/r.yaml:4)"


def _plan() -> Plan:
    field = FieldPlan(f'{HCM_PATH}.http_filters["envoy.filters.http.rbac"].typed_config.rules.policies', None, RULE,
                      ("MeshTrafficPermission/deny-admin (policies/tp.yaml:9)",))
    timeout = FieldPlan("connect_timeout", "5s", "2s", ("MeshTimeout/t (policies/timeout.yaml:12)",))
    change = ResourcePlan("listener", "inbound:127.0.1.2:8080", Action.UPDATE, (field, timeout), ())
    proxy = ProxyPlan(name="backend-1", type="sidecar", mesh="default", admin_url="http://127.0.1.2:9901", status="ok",
                      detail="", desired_fingerprint="a", live_fingerprint="b", changes=(change,), warnings=(),
                      desired={"clusters": (), "listeners": ()})
    return Plan((proxy,))


def test_at_80_columns_nothing_is_cut() -> None:
    console = Console(width=80, record=True, force_terminal=False, color_system=None, soft_wrap=True)  # as the CLI
    render_plan(console, _plan())
    text = console.export_text()
    assert "..." not in text
    assert '+ exact = "spiffe://default/admin"' in text
    assert '      # MeshTimeout/t (policies/timeout.yaml:12)\n      ~ connect_timeout = "5s" -> "2s"\n' in text
    assert '~ filter "envoy.filters.network.http_connection_manager" {' in text
    assert '+ policy "Deny Mesh" {' in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_proxies_with_the_same_changes_are_shown_once() -> None:
    (first,) = _plan().proxies
    second = dataclasses.replace(first, name="backend-2", admin_url="http://127.0.1.3:9901")
    other_change = dataclasses.replace(first.changes[0], fields=first.changes[0].fields[1:])
    third = dataclasses.replace(first, name="backend-3", changes=(other_change,))
    console = Console(width=200, record=True, force_terminal=False, color_system=None, soft_wrap=True)
    render_plan(console, Plan((first, second, third)))
    text = console.export_text()
    assert "# backend-1, backend-2 [sidecar] (mesh default, 2 proxies, the same changes)" in text
    assert "# backend-3 [sidecar]" in text
    assert text.count('~ resource "listener" "inbound:127.0.1.2:8080" {') == 2  # once for the pair, once for backend-3
    assert "Plan: 0 to add, 3 to change, 0 to destroy across 3 proxies (3 sidecars, 0 egress)." in text


def test_markdown_for_a_pull_request() -> None:
    (first,) = _plan().proxies
    second = dataclasses.replace(first, name="backend-2", admin_url="http://127.0.1.3:9901")
    text = render_markdown(Plan((first, second), warnings=("p.yaml:3: MeshTimeout/t: selects no proxy",)))
    assert text.startswith("### meshplan: 0 to add, 2 to change, 0 to destroy across 2 proxies (2 sidecars, 0 egress).")
    assert "> **Warning:** p.yaml:3: MeshTimeout/t: selects no proxy" in text
    assert "| backend-1, backend-2 | sidecar | 0 | 1 | 0 | MeshTimeout/t, MeshTrafficPermission/deny-admin |" in text
    (details,) = re.findall(r"<details>.*?</details>", text, re.S)
    assert "<summary>backend-1, backend-2 [sidecar]: 1 to change</summary>" in details
    assert '+ exact = "spiffe://default/admin"' in details and "..." not in details
    assert details.count("```") == 2


def test_plan_and_show_print_markdown(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from meshplan.cli import app

    live = tmp_path / "live"
    live.mkdir()
    for proxy in ("web", "backend-1", "backend-2", "admin", "egress"):
        (live / f"{proxy}.json").write_text('{"configs": []}')
    args = ["plan", str(DEMO), "--live-from", str(live), "--state", str(tmp_path / "state")]
    planned = CliRunner().invoke(app, [*args, "-o", "markdown", "--out", str(tmp_path / "plan.json")])
    assert planned.exit_code == 0, planned.output
    assert planned.stdout.startswith("### meshplan: 19 to add")
    shown = CliRunner().invoke(app, ["show", str(tmp_path / "plan.json"), "-o", "markdown"])
    assert shown.exit_code == 0
    assert shown.stdout == planned.stdout
