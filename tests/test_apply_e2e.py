"""`meshplan apply` and `meshplan drift` on real Envoys in the sandbox: apply then plan is quiet; pre-flight stops a
config Envoy rejects; a proxy that refuses its update is rolled back and still carries traffic; a dead proxy is
reported while the others are applied; the lock keeps two applies apart; a stale saved plan is refused; and every
drift class gets its exit code and its gauge."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import deliver
from typer.testing import CliRunner

from meshplan.apply import deliver as apply_module
from meshplan.cli import app
from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.state import records as state
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki
from meshplan.xds.store import DirectoryStore
from tests.builders import DEMO, DemoCopy, copy_demo, static_cluster

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def start_empty(demo: DemoCopy, state_dir: Path) -> None:
    """Every proxy's Envoy up from its bootstrap with nothing delivered yet, as before a first apply."""
    desired = load_and_parse(demo.path)
    pki.ensure(desired, state_dir)
    sandbox.up(desired, [dataclasses.replace(p, clusters=(), listeners=()) for p in render_all(desired)], state_dir)


def meshplan(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def apply(demo: DemoCopy, state_dir: Path, *args: str) -> tuple[int, str, str]:
    return meshplan("apply", str(demo.path), "--state", str(state_dir), "--auto-approve", *args)


def plan_exit(demo: DemoCopy, state_dir: Path) -> int:
    return meshplan("plan", str(demo.path), "--state", str(state_dir), "--detailed-exitcode")[0]


def drift(demo: DemoCopy, state_dir: Path, tmp_path: Path) -> tuple[int, dict[str, str], str]:
    prom = tmp_path / "drift.prom"
    code, out, _ = meshplan("drift", str(demo.path), "--state", str(state_dir), "--json", "--textfile", str(prom),
                            "--timeout", "1")
    return code, {p["name"]: p["status"] for p in json.loads(out)["proxies"]}, prom.read_text()


@pytest.fixture
def demo(tmp_path: Path) -> DemoCopy:
    return copy_demo(tmp_path / "demo")


def get(demo: DemoCopy, address: str, port: int, path: str = "/") -> httpx.Response:
    return httpx.get(f"http://{demo.addr(address)}:{port}{path}", timeout=5, trust_env=False)


def both_backends_answer(demo: DemoCopy, seconds: float = 5.0) -> bool:
    """Both backend instances answer web within `seconds`: every sidecar is updated at once, so web's first health
    check of a backend can beat that backend's listener, and the instance is unhealthy until the next check (2s).
    Right after a rollback, web's outbound was once seen refusing a connection (CI, under load; a NACK can take
    listeners away and the rollback puts them back): a refused connection is retried too, within the same bound."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if {get(demo, "127.0.1.1", 10001).json()["instance"] for _ in range(6)} == {"backend-1", "backend-2"}:
                return True
        except httpx.ConnectError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def test_apply_then_plan_shows_no_changes_and_traffic_flows(demo: DemoCopy, sandbox_state: Path, tmp_path: Path) -> None:
    start_empty(demo, sandbox_state)
    assert plan_exit(demo, sandbox_state) == 2
    code, out, err = apply(demo, sandbox_state)
    assert code == 0, err
    assert "Plan: 19 to add, 0 to change, 0 to destroy across 5 proxies (4 sidecars, 1 egress)." in out
    serial = state.read(sandbox_state).serial
    assert f"Apply complete: 5 applied. State serial {serial}." in err
    assert serial == 2  # written as each of the two waves (servers, then their clients) ended
    assert plan_exit(demo, sandbox_state) == 0
    assert both_backends_answer(demo)
    assert get(demo, "127.0.1.1", 10002).json()["service"] == "httpbin"
    with pytest.raises(httpx.HTTPError):  # straight to a sidecar's inbound without a mesh certificate: refused
        get(demo, "127.0.1.2", 8080)
    recorded = state.read(sandbox_state)
    assert {name: r.outcome for name, r in recorded.proxies.items()} == dict.fromkeys(["admin", "backend-1", "backend-2", "web", "egress"], "applied")
    code, statuses, prom = drift(demo, sandbox_state, tmp_path)
    assert code == 0 and set(statuses.values()) == {"in-sync"}
    assert 'meshplan_proxy_status{proxy="web",type="sidecar",status="in-sync"} 1' in prom
    assert "meshplan_drift_exit_code 0" in prom
    assert apply(demo, sandbox_state)[0] == 0  # nothing to apply is a success, and writes no new state
    assert state.read(sandbox_state).serial == serial


def test_preflight_stops_a_config_envoy_rejects_and_writes_nothing(demo: DemoCopy, sandbox_state: Path, tmp_path: Path) -> None:
    start_empty(demo, sandbox_state)
    assert apply(demo, sandbox_state)[0] == 0
    store = DirectoryStore.under(sandbox_state)
    serial = state.read(sandbox_state).serial
    served = {p: (store.root / "snapshots" / f"{p}.pb").read_bytes() for p in ("web", "egress")}
    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text("this is not a certificate\n")
    external = demo.path / "external.yaml"
    external.write_text(external.read_text() + f"  tls:\n    enabled: true\n    verification:\n      caCert:\n        file: {garbage}\n")

    code, _, err = apply(demo, sandbox_state)
    assert code == 1
    assert "pre-flight: Envoy rejects the configuration of 1 proxy; nothing was applied:" in err
    assert "egress:" in err and str(garbage) in err
    assert {p: (store.root / "snapshots" / f"{p}.pb").read_bytes() for p in ("web", "egress")} == served
    assert state.read(sandbox_state).serial == serial


@pytest.fixture
def occupied(demo: DemoCopy) -> Iterator[int]:
    """A port on web's address held by a plain socket: Envoy cannot bind a listener there (validate mode can't tell)."""
    with socket.socket() as holder:
        holder.bind((demo.addr("127.0.1.1"), 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_a_proxy_that_refuses_its_update_is_rolled_back_and_still_carries_traffic(
    demo: DemoCopy, sandbox_state: Path, tmp_path: Path, occupied: int
) -> None:
    start_empty(demo, sandbox_state)
    assert apply(demo, sandbox_state)[0] == 0
    dataplanes = demo.path / "dataplanes.yaml"
    extra = f"    - address: {demo.addr('127.0.1.1')}\n      port: {occupied}\n      tags:\n        kuma.io/service: web\n"
    dataplanes.write_text(dataplanes.read_text().replace("  outbound:\n", "  outbound:\n" + extra, 1))

    code, _, err = apply(demo, sandbox_state)
    assert code == 3, err
    assert "Pre-flight: Envoy accepts the configuration of all 1 changed proxies." in err
    assert "[1/1] rolled back web [sidecar]" in err
    assert "Envoy refused the listeners" in err and "Address already in use" in err  # Envoy's own words
    assert "Apply finished with problems: 4 unchanged, 1 rolled back." in err
    assert both_backends_answer(demo)
    web = state.read(sandbox_state).proxies["web"]
    assert web.outcome == "rolled back"
    code, statuses, prom = drift(demo, sandbox_state, tmp_path)
    assert code == 4 and statuses["web"] == "rejected"
    assert 'meshplan_proxy_status{proxy="web",type="sidecar",status="rejected"} 1' in prom


def test_an_envoy_killed_mid_apply_times_out_and_the_others_are_applied(
    demo: DemoCopy, sandbox_state: Path, tmp_path: Path
) -> None:
    start_empty(demo, sandbox_state)
    (victim,) = [p for p in sandbox.status(sandbox_state) if p.role == "envoy" and p.name == "backend-2"]
    from meshplan.plan.workflow import compute_plan

    plan = compute_plan(demo.path, sandbox_state)
    killed = []

    def kill_after_first(result: apply_module.ProxyResult) -> None:
        if not killed:
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(result.name)

    results = apply_module.apply_plan(plan, sandbox_state, parallelism=1, stop_on_failure=False, timeout=1, wait=2,
                                      progress=kill_after_first)
    outcomes = {r.name: r.outcome for r in results}
    assert killed == ["backend-1"]  # servers are delivered before their clients
    assert outcomes == {"admin": apply_module.Outcome.APPLIED, "backend-1": apply_module.Outcome.APPLIED,
                        "backend-2": apply_module.Outcome.TIMED_OUT, "web": apply_module.Outcome.APPLIED,
                        "egress": apply_module.Outcome.APPLIED}
    with state.lock(sandbox_state, "apply"):
        recorded = apply_module.record(sandbox_state, results, plan)
    assert {n: r.outcome for n, r in recorded.proxies.items()} == {
        "admin": "applied", "backend-1": "applied", "backend-2": "timed out", "web": "applied", "egress": "applied"}
    assert "not connected to meshplan serve" in recorded.proxies["backend-2"].detail
    # its snapshot waits in the store, for when it comes back
    assert DirectoryStore.under(sandbox_state).read_snapshot("backend-2") is not None
    code, statuses, prom = drift(demo, sandbox_state, tmp_path)
    assert code == 4 and statuses == {"admin": "in-sync", "backend-1": "in-sync", "backend-2": "unreachable", "web": "in-sync",
                                      "egress": "in-sync"}
    assert 'meshplan_proxies{status="unreachable"} 1' in prom


def test_servers_are_delivered_before_their_clients() -> None:
    from meshplan.plan.model import make_plan
    from meshplan.plan.workflow import desired_proxies

    plan = make_plan(desired_proxies(DEMO), {})
    levels = [[p.name for p in level] for level in apply_module.delivery_order(list(plan.proxies))]
    assert levels == [["backend-1", "backend-2", "egress"], ["admin", "web"]]
    # two proxies that send to each other: no order helps, both go together
    by_name = {p.name: p for p in plan.proxies}
    web, backend = by_name["web"], by_name["backend-1"]
    web_listens = web.desired["listeners"][0]["address"]["socket_address"]
    to_web = static_cluster("to-web", web_listens["address"], web_listens["port_value"])
    backend_calls_web = dataclasses.replace(backend, desired={**backend.desired, "clusters": (to_web,)})
    assert [[p.name for p in level] for level in apply_module.delivery_order([web, backend_calls_web])] == [["web", "backend-1"]]


def test_a_second_apply_fails_with_the_holders_info(demo: DemoCopy, sandbox_state: Path) -> None:
    start_empty(demo, sandbox_state)
    with state.lock(sandbox_state, "apply") as held:
        code, _, err = apply(demo, sandbox_state, "--lock-timeout", "0.3")
    assert code == 1
    assert f"ID {held.id}" in err and f"pid {os.getpid()}" in err and "for apply since" in err
    assert not (sandbox_state / "state.json").exists()
    code, _, err = apply(demo, sandbox_state)  # the lock is free again
    assert code == 0, err


def test_a_stale_saved_plan_is_refused(demo: DemoCopy, sandbox_state: Path, tmp_path: Path) -> None:
    start_empty(demo, sandbox_state)
    saved = tmp_path / "plan.json"
    code, _, _ = meshplan("plan", str(demo.path), "--state", str(sandbox_state), "--out", str(saved))
    assert code == 0
    web = next(p for p in render_all(load_and_parse(demo.path)) if p.name == "web")
    deliver(sandbox_state, dataclasses.replace(web, listeners=()), "out-of-band")  # someone else was here

    code, _, err = meshplan("apply", str(saved), "--state", str(sandbox_state))
    assert code == 1
    assert "is stale, nothing was applied" in err
    assert "web: its running configuration changed since the plan was made" in err
    assert "backend-1" not in err
    assert f"meshplan plan {demo.path} --out {saved}" in err
    assert not (sandbox_state / "state.json").exists()

    code, _, _ = meshplan("plan", str(demo.path), "--state", str(sandbox_state), "--out", str(saved))
    code, _, err = meshplan("apply", str(saved), "--state", str(sandbox_state))  # a fresh one goes through, unprompted
    assert code == 0, err
    assert plan_exit(demo, sandbox_state) == 0


def test_drift_classes_exit_codes_and_gauges(demo: DemoCopy, sandbox_state: Path, tmp_path: Path) -> None:
    start_empty(demo, sandbox_state)
    code, statuses, _ = drift(demo, sandbox_state, tmp_path)
    assert code == 2 and set(statuses.values()) == {"pending"}  # nothing applied yet
    assert apply(demo, sandbox_state)[0] == 0
    serial = state.read(sandbox_state).serial
    assert drift(demo, sandbox_state, tmp_path)[0] == 0

    external = demo.path / "external.yaml"
    external.write_text(external.read_text().replace("port: 18080", "port: 18081"))
    code, statuses, prom = drift(demo, sandbox_state, tmp_path)
    assert code == 2 and statuses["egress"] == "pending" and statuses["web"] == "in-sync"
    assert 'meshplan_proxy_status{proxy="egress",type="egress",status="pending"} 1' in prom

    backend = next(p for p in render_all(load_and_parse(demo.path)) if p.name == "backend-1")
    deliver(sandbox_state, dataclasses.replace(backend, clusters=()), "out-of-band")
    code, statuses, prom = drift(demo, sandbox_state, tmp_path)
    assert code == 3 and statuses["backend-1"] == "drifted" and statuses["egress"] == "pending"
    assert "meshplan_drift_exit_code 3" in prom

    (victim,) = [p for p in sandbox.status(sandbox_state) if p.role == "envoy" and p.name == "web"]
    os.kill(victim.pid, signal.SIGKILL)
    code, statuses, prom = drift(demo, sandbox_state, tmp_path)
    assert code == 4 and statuses["web"] == "unreachable"
    assert 'meshplan_proxies{status="drifted"} 1' in prom
    assert state.read(sandbox_state).serial == serial  # drift never writes state


def test_a_hand_edit_shows_as_changed_outside_meshplan_not_as_a_policy_change(
    demo: DemoCopy, sandbox_state: Path
) -> None:
    start_empty(demo, sandbox_state)
    assert apply(demo, sandbox_state)[0] == 0
    backend = next(p for p in render_all(load_and_parse(demo.path)) if p.name == "backend-1")
    (local,) = [c for c in backend.clusters if c["name"].startswith("local:")]
    others = [c for c in backend.clusters if c is not local]
    deliver(sandbox_state, dataclasses.replace(backend, clusters=(*others, {**local, "connect_timeout": "0.250s"})),
            "by-hand")

    code, out, _ = meshplan("plan", str(demo.path), "--state", str(sandbox_state), "--json")
    assert code == 0
    proxies = {p["name"]: p for p in json.loads(out)["proxies"]}
    assert [p for p, doc in proxies.items() if doc["outside"]] == ["backend-1"]
    (outside,) = proxies["backend-1"]["outside"]
    assert (outside["action"], outside["name"]) == ("update", local["name"])
    assert outside["fields"] == [{"path": "connect_timeout", "before": local["connect_timeout"], "after": "0.250s"}]
    (change,) = proxies["backend-1"]["changes"]
    assert [(f["path"], f["before"], f["after"], f["origins"]) for f in change["fields"]] == [
        ("connect_timeout", "0.250s", local["connect_timeout"], ["reverts a change made outside meshplan"])]

    _, human, _ = meshplan("plan", str(demo.path), "--state", str(sandbox_state))
    section, planned = human.split("meshplan will perform the following actions:")
    assert section.startswith("Changed outside meshplan:")
    before = local["connect_timeout"]  # the inbound's, from Kuma's default MeshTimeout in the demo's mesh
    assert f'~ connect_timeout = "{before}" -> "0.250s"' in section
    assert (f'  # reverts a change made outside meshplan\n  ~ resource "cluster" "{local["name"]}" {{\n'
            f'      ~ connect_timeout = "0.250s" -> "{before}"\n') in planned

    code, out, _ = meshplan("drift", str(demo.path), "--state", str(sandbox_state), "--json")
    assert code == 3
    (drifted,) = [p for p in json.loads(out)["proxies"] if p["status"] == "drifted"]
    assert drifted["name"] == "backend-1"
    assert drifted["detail"] == f'the running configuration is not what meshplan delivered: cluster "{local["name"]}"'


def test_the_behaviour_summary_says_a_client_is_now_denied_and_it_is(demo: DemoCopy, sandbox_state: Path) -> None:
    permissions = demo.path / "policies" / "traffic-permission.yaml"
    denying = permissions.read_text()
    mesh_rule = "    - targetRef:\n        kind: Mesh\n      default:\n        action: Deny\n    - targetRef:\n        kind: MeshService\n        name: web\n"
    assert mesh_rule in denying
    permissions.write_text(denying.replace(mesh_rule, mesh_rule.replace("action: Deny", "action: Allow"), 1))
    start_empty(demo, sandbox_state)
    assert apply(demo, sandbox_state)[0] == 0
    assert get(demo, "127.0.1.5", 10001).status_code == 200  # admin -> backend: allowed for now

    permissions.write_text(denying)
    code, out, _ = meshplan("plan", str(demo.path), "--state", str(sandbox_state), "--json")
    assert code == 0
    behaviour = json.loads(out)["behaviour"]
    denied = [b for b in behaviour if (b["client"], b["destination"], b["aspect"]) == ("admin", "backend", "permission")]
    assert [(b["before"], b["after"]) for b in denied] == [({"action": "Allow"}, {"action": "Deny"})]
    assert denied[0]["origins"][0].startswith("MeshTrafficPermission/backend-from-web (")
    assert ("web", "backend", "permission") not in {(b["client"], b["destination"], b["aspect"]) for b in behaviour}
    _, human, _ = meshplan("plan", str(demo.path), "--state", str(sandbox_state))
    assert 'admin → backend  permission: Allow → Deny' in human

    assert apply(demo, sandbox_state)[0] == 0
    deadline = time.monotonic() + 5  # bounded: the new RBAC is verified as applied; its answer is what is asserted
    while (status := get(demo, "127.0.1.5", 10001).status_code) != 403 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 403  # what the summary said: admin can no longer call backend
    assert get(demo, "127.0.1.1", 10001).status_code == 200  # web still can
