"""A plan over proxies that fail in every way an admin API can: each is reported, with its cause, in both views,
while the others are planned. A real Envoy answers for "wrong proxy"; respx stands in for what a real Envoy
cannot be made to do (answer 500, answer garbage, hang)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import httpx
import jsonschema
import respx
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2
from rich.console import Console
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.envoy.types import LISTENER
from meshplan.model import ProxyConfig
from meshplan.observe import live
from meshplan.plan.drift import Status, classify
from meshplan.plan.model import make_plan, to_json
from meshplan.present.human import render_plan
from meshplan.render.proxies import render_all
from meshplan.state.records import State
from meshplan.validate.resources import load_and_parse
from meshplan.xds import snapshot
from meshplan.xds.snapshot import Snapshot
from meshplan.xds.store import DirectoryStore
from tests.builders import DEMO, copy_demo, start_sandbox
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
    start_sandbox(demo.path, sandbox_state)
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


# A filter Envoy 1.40 has and xds-protos does not: a proxy running it cannot be read by meshplan (version skew).
UNKNOWN_TO_PROTOS = "type.googleapis.com/envoy.extensions.filters.http.body_size_limit.v3.BodySizeLimit"


def _deliver_with_unknown_filter(state: Path, web: ProxyConfig, version: str) -> None:
    """web's snapshot with an HTTP filter whose type Envoy knows and the protos do not, put in front of the router
    (protobuf holds it as an Any whose type is only named: no JSON could say it), and wait until Envoy ACKs it."""
    built = snapshot.build(state, web.name, version, web.clusters, web.listeners)
    listeners = {}
    for name, packed in built.of(LISTENER).items():
        listener = listener_pb2.Listener()
        packed.Unpack(listener)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.typed_config.type_url.endswith("HttpConnectionManager"):
                    manager = hcm_pb2.HttpConnectionManager()
                    network_filter.typed_config.Unpack(manager)
                    unknown = hcm_pb2.HttpFilter(name="envoy.filters.http.body_size_limit")
                    unknown.typed_config.type_url = UNKNOWN_TO_PROTOS
                    filters = [unknown, *manager.http_filters]
                    del manager.http_filters[:]
                    manager.http_filters.extend(filters)
                    network_filter.typed_config.Pack(manager)
        listeners[name] = any_pb2.Any()
        listeners[name].Pack(listener)
    store = DirectoryStore.under(state)
    store.write_snapshot(web.name, Snapshot(version, {**built.resources, LISTENER: listeners}))
    deadline = time.monotonic() + 10
    while (status := store.read_status(web.name)) is None or version not in (status.acked, status.nacked):
        assert time.monotonic() < deadline, f"{web.name} never answered {version}"
        time.sleep(0.02)
    assert status.acked == version, status.error


def test_a_proxy_running_what_meshplan_cannot_read_is_reported_and_the_others_are_planned(
    tmp_path: Path, sandbox_state: Path
) -> None:
    demo = copy_demo(tmp_path / "demo")
    proxies = {p.name: p for p in start_sandbox(demo.path, sandbox_state)}
    web = proxies["web"]
    _deliver_with_unknown_filter(sandbox_state, web, "skew")  # a real Envoy runs it

    planned = CliRunner().invoke(app, ["plan", str(demo.path), "--state", str(sandbox_state), "--json"])
    assert planned.exit_code == 1, planned.stderr  # incomplete, not failed for everyone
    status = {p["name"]: (p["status"], p["detail"]) for p in json.loads(planned.stdout)["proxies"]}
    assert status["web"][0] == "bad response"
    assert status["web"][1].startswith("its listeners cannot be read: envoy.config.listener.v3.Listener ")
    assert UNKNOWN_TO_PROTOS in status["web"][1]
    assert {name: s for name, s in status.items() if name != "web"} == dict.fromkeys(
        ("admin", "backend-1", "backend-2", "egress"), ("ok", ""))

    human = CliRunner().invoke(app, ["plan", str(demo.path), "--state", str(sandbox_state)])
    assert human.exit_code == 1
    assert f"! web [sidecar] {web.admin_url}: bad response: its listeners cannot be read" in human.stdout
    assert "No changes." not in human.stdout and "(incomplete)" in human.stdout

    drifted = CliRunner().invoke(app, ["drift", str(demo.path), "--state", str(sandbox_state), "--json"])
    assert drifted.exit_code == 4, drifted.stderr
    report = {p["name"]: p for p in json.loads(drifted.stdout)["proxies"]}
    assert report["web"]["status"] == "unreachable"
    assert report["web"]["detail"].startswith(f"web ({web.admin_url}): bad response: its configuration cannot be read")
    assert UNKNOWN_TO_PROTOS in report["web"]["detail"]
    assert {p["status"] for name, p in report.items() if name != "web"} == {"in-sync"}  # they run the desired config


def test_an_unknown_resource_type_from_one_admin_api_fails_only_that_proxy() -> None:
    """respx: a whole resource of a type no protos know (a real Envoy would refuse to run it)."""
    proxies = render_all(load_and_parse(DEMO))
    with respx.mock(assert_all_called=False) as router:
        for p in proxies:
            clusters = list(p.clusters)
            if p.name == "backend-2":
                clusters.append({"@type": "type.googleapis.com/nobody.knows.v3.This", "name": "odd"})
            answers = dump(p.name, clusters=clusters)
            answers[live.LISTENERS_PATH] = {"configs": [{
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "dynamic_listeners": [{"name": x["name"], "active_state": {"listener": x}} for x in p.listeners],
            }]}
            serve(router, p.admin_url, answers)

        async def run() -> dict[str, live.LiveResult]:
            async with live.new_client() as client:
                return await live.fetch_all(client, [(p.name, p.admin_url) for p in proxies])

        results = asyncio.run(run())
    plan = make_plan(proxies, results)
    status = {p.name: (p.status, p.detail) for p in plan.proxies}
    assert status.pop("backend-2") == (
        "bad response", "its clusters cannot be read: resource 'odd': unknown resource type "
                        "'type.googleapis.com/nobody.knows.v3.This'")
    assert set(status.values()) == {("ok", "")}
    report = {d.name: d for d in classify(proxies, State.empty(), results)}
    assert report["backend-2"].status is Status.UNREACHABLE and "unknown resource type" in report["backend-2"].detail
    assert {d.status for name, d in report.items() if name != "backend-2"} == {Status.IN_SYNC}
