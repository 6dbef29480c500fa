"""A plan over proxies that fail in every way an admin API can: each is reported, with its cause, in both views,
while the others are planned. A real Envoy answers for "wrong proxy"; respx stands in for what a real Envoy
cannot be made to do (answer 500, answer garbage, hang)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import jsonschema
import respx
from rich.console import Console
from typer.testing import CliRunner

from meshplan import live
from meshplan.cli import app
from meshplan.plan import make_plan, to_json
from meshplan.present.human import render_plan
from meshplan.render import render_all
from meshplan.validate import load_and_parse
from tests.meshes import DEMO, copy_demo, start
from tests.test_live import dump, serve

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "plan.schema.json").read_text())


def test_500_garbage_and_a_hang_are_reported_while_the_others_are_planned() -> None:
    proxies = render_all(load_and_parse(DEMO))
    by_name = {p.name: p for p in proxies}

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    with respx.mock(assert_all_called=False) as router:
        for p in proxies:
            answers = dump(p.name, clusters=list(p.clusters))
            answers[live.LISTENERS_PATH] = {"configs": [{
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "dynamic_listeners": [{"name": x["name"], "active_state": {"version_info": "v1", "listener": x}}
                                      for x in p.listeners],
            }]}
            if p.name == "backend-1":
                answers[live.CLUSTERS_PATH] = httpx.Response(500, text="upstream connect error")
            elif p.name == "backend-2":
                answers[live.CLUSTERS_PATH] = httpx.Response(200, text="<html>not a config dump</html>")
            elif p.name == "admin":
                answers[live.LISTENERS_PATH] = hang
            serve(router, by_name[p.name].admin_url, answers)

        async def run() -> dict[str, live.LiveResult]:
            async with live.new_client() as client:
                return await live.fetch_all(client, [(p.name, p.admin_url) for p in proxies], timeout=0.3, retries=0)

        plan = make_plan(proxies, asyncio.run(run()))

    status = {p.name: (p.status, p.detail) for p in plan.proxies}
    assert status["backend-1"][0] == "bad response" and "HTTP 500" in status["backend-1"][1]
    assert status["backend-2"][0] == "bad response" and "not JSON" in status["backend-2"][1]
    assert status["admin"][0] == "timeout"
    assert (status["web"], status["egress"]) == (("ok", ""), ("ok", ""))  # planned: and running what is desired
    assert not plan.complete and not plan.has_changes
    document = to_json(plan)
    jsonschema.validate(document, SCHEMA)
    assert document["summary"]["unreachable"] == ["admin", "backend-1", "backend-2"]

    console = Console(width=200, no_color=True, record=True, file=io.StringIO())
    render_plan(console, plan)
    text = console.export_text()
    assert "Warning: the plan is incomplete: 3 proxies could not be read:" in text
    for name in ("admin", "backend-1", "backend-2"):
        assert f"! {name} [sidecar] {by_name[name].admin_url}: " in text


def test_an_admin_port_answered_by_another_proxy_is_a_wrong_proxy(tmp_path: Path, sandbox_state: Path) -> None:
    demo = copy_demo(tmp_path / "demo")
    start(demo.path, sandbox_state)
    dataplanes = demo.path / "dataplanes.yaml"
    # backend-2's admin now names backend-1's address: the Envoy that answers there says it is backend-1.
    text = dataplanes.read_text()
    dataplanes.write_text(text.replace(f"address: {demo.addr('127.0.1.3')}\n  admin:", f"address: {demo.addr('127.0.1.2')}\n  admin:"))
    result = CliRunner().invoke(app, ["plan", str(demo.path), "--state", str(sandbox_state), "--json"])
    assert result.exit_code == 1
    proxies = {p["name"]: p for p in json.loads(result.stdout)["proxies"]}
    assert proxies["backend-2"]["status"] == "wrong proxy"
    assert "backend-1" in proxies["backend-2"]["detail"]
    assert {n for n, p in proxies.items() if p["status"] == "ok"} == {"admin", "backend-1", "web", "egress"}
