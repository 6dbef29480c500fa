"""The sandbox: real Envoys and demo apps on loopback, real traffic, and nothing left running afterwards."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from conftest import deliver

from meshplan.errors import MeshplanError, SandboxError
from meshplan.model import Endpoint
from meshplan.sandbox import mesh as sandbox
from meshplan.util.processes import StopOutcome, TrackedProcess
from tests.builders import MeshBuilder, http_listener, listener_url, pid_running

pytestmark = pytest.mark.envoy


def test_up_serves_traffic_and_down_stops_every_process(
    mesh: MeshBuilder, sandbox_state: Path, http: httpx.Client
) -> None:
    web1, web2 = mesh.sidecar("web-1"), mesh.sidecar("web-2", service="backend")

    info = sandbox.up(mesh.desired(), mesh.proxies, sandbox_state)

    for proxy, service in ((web1, "web"), (web2, "backend")):
        answer = http.get(f"{listener_url(proxy)}/hello")
        assert answer.status_code == 200
        body = answer.json()
        assert (body["service"], body["instance"], body["path"]) == (service, proxy.name, "/hello")
        assert "x-request-id" in body["headers"]  # added by Envoy on the way: the request went through it
        assert (sandbox.host_dir(sandbox_state, proxy.name) / "bootstrap.json").is_file()
    recorded = json.loads((sandbox_state / sandbox.SANDBOX_FILE).read_text())
    assert sorted(p["pid"] for p in recorded["processes"]) == sorted(p.pid for p in info.processes)
    assert sorted((p.role, p.name) for p in info.processes) == [
        ("app", "backend/web-2"),
        ("app", "web/web-1"),
        ("envoy", "web-1"),
        ("envoy", "web-2"),
        ("server", "meshplan-serve"),
    ]
    pids = [p.pid for p in info.processes]
    assert all(pid_running(pid) for pid in pids)

    stopped = sandbox.down(sandbox_state)

    assert {s.outcome for s in stopped} == {StopOutcome.STOPPED}
    assert sorted(s.process.pid for s in stopped) == sorted(pids)
    assert not [pid for pid in pids if pid_running(pid)]
    assert not (sandbox_state / sandbox.SANDBOX_FILE).exists()
    assert sandbox.down(sandbox_state) == []  # idempotent
    assert sandbox.status(sandbox_state) == []


def test_status_reports_each_process(mesh: MeshBuilder, sandbox_state: Path) -> None:
    proxy = mesh.sidecar("web-1")
    info = sandbox.up(mesh.desired(), mesh.proxies, sandbox_state)
    app = next(p for p in info.processes if p.role == "app")

    app_status, envoy_status, server_status = sorted(sandbox.status(sandbox_state), key=lambda s: s.role)
    assert (server_status.role, server_status.name, server_status.alive) == ("server", "meshplan-serve", True)
    assert (envoy_status.role, envoy_status.name, envoy_status.alive) == ("envoy", "web-1", True)
    assert envoy_status.admin_url == proxy.admin_url
    assert (app_status.role, app_status.name, app_status.alive, app_status.admin_url) == (
        "app",
        "web/web-1",
        True,
        None,
    )

    subprocess.run(["kill", "-KILL", str(app.pid)], check=True)
    for _ in range(100):
        if not pid_running(app.pid):
            break
        time.sleep(0.02)
    alive = {s.name: s.alive for s in sandbox.status(sandbox_state)}
    assert alive == {"web/web-1": False, "web-1": True, "meshplan-serve": True}
    outcomes = {s.process.name: s.outcome for s in sandbox.down(sandbox_state)}
    assert outcomes == {"web/web-1": StopOutcome.NOT_RUNNING, "web-1": StopOutcome.STOPPED,
                        "meshplan-serve": StopOutcome.STOPPED}


def test_external_service_stand_in_answers_through_an_envoy(
    mesh: MeshBuilder, sandbox_state: Path, http: httpx.Client
) -> None:
    endpoint = mesh.external("httpbin")
    egress = mesh.egress("egress", endpoint)

    sandbox.up(mesh.desired(), mesh.proxies, sandbox_state)

    body = http.get(f"{listener_url(egress)}/anything").json()
    assert (body["service"], body["instance"]) == ("httpbin", f"{endpoint.address}:{endpoint.port}")


def test_refuses_a_second_sandbox_while_one_runs(mesh: MeshBuilder, sandbox_state: Path) -> None:
    mesh.sidecar("web-1")
    sandbox.up(mesh.desired(), mesh.proxies, sandbox_state)
    with pytest.raises(SandboxError, match="already running"):
        sandbox.up(mesh.desired(), mesh.proxies, sandbox_state)
    assert all(s.alive for s in sandbox.status(sandbox_state))  # the running one is untouched


def test_a_stale_record_does_not_block_up(mesh: MeshBuilder, sandbox_state: Path) -> None:
    mesh.sidecar("web-1")
    sandbox.up(mesh.desired(), mesh.proxies, sandbox_state)
    record = (sandbox_state / sandbox.SANDBOX_FILE).read_text()
    sandbox.down(sandbox_state)
    (sandbox_state / sandbox.SANDBOX_FILE).write_text(record)  # as if the machine had rebooted

    info = sandbox.up(mesh.desired(), mesh.proxies, sandbox_state)
    assert sorted(p.role for p in info.processes) == ["app", "envoy", "server"]


def _pids_from(messages: list[str]) -> list[int]:
    return [int(m) for line in messages for m in re.findall(r"\(pid (\d+)\)", line)]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("negative duration", "Invalid duration"),
        ("route to a missing cluster", "unknown cluster 'nowhere'"),
    ],
)
def test_a_rejected_config_stops_everything_and_says_why(
    mesh: MeshBuilder, sandbox_state: Path, breakage: str, message: str
) -> None:
    mesh.sidecar("web-1")
    broken = mesh.sidecar("web-2")
    if breakage == "negative duration":
        mesh.change("web-2", clusters=(dict(broken.clusters[0], connect_timeout="-1s"),))
    elif breakage == "unknown field":
        mesh.change("web-2", clusters=(dict(broken.clusters[0], colour="blue"),))
    else:
        listener = http_listener("in", broken.address, mesh.loopback.port(broken.address), "nowhere")
        mesh.change("web-2", listeners=(listener,))
    said: list[str] = []

    with pytest.raises(SandboxError) as failure:
        sandbox.up(mesh.desired(), mesh.proxies, sandbox_state, log=said.append)

    assert "web-2" in str(failure.value) and message in str(failure.value)
    pids = _pids_from(said)
    assert len(pids) == 5  # two apps, the server and two Envoys had started
    assert not [pid for pid in pids if pid_running(pid)]
    assert not (sandbox_state / sandbox.SANDBOX_FILE).exists()


def test_not_ready_in_time_stops_everything(mesh: MeshBuilder, sandbox_state: Path) -> None:
    mesh.sidecar("web-1")
    said: list[str] = []
    # The Envoy was started an instant before the first and only check: its admin API cannot be answering yet.
    with pytest.raises(SandboxError, match=r"not ready within 0s:(\n.*)*\n  envoy web-1 \(pid \d+\): admin API not"):
        sandbox.up(mesh.desired(), mesh.proxies, sandbox_state, log=said.append, ready_timeout=0)
    pids = _pids_from(said)
    assert len(pids) == 3
    assert not [pid for pid in pids if pid_running(pid)]
    assert not (sandbox_state / sandbox.SANDBOX_FILE).exists()


def test_an_unknown_field_is_refused_before_anything_starts(mesh: MeshBuilder, sandbox_state: Path) -> None:
    broken = mesh.sidecar("web-1")
    mesh.change("web-1", clusters=(dict(broken.clusters[0], colour="blue"),))
    said: list[str] = []
    # Snapshots are protobuf: a field Envoy's schema does not have cannot even be written down.
    with pytest.raises(MeshplanError, match='has no field named "colour"'):
        sandbox.up(mesh.desired(), mesh.proxies, sandbox_state, log=said.append)
    assert said == []
    assert not (sandbox_state / sandbox.SANDBOX_FILE).exists()


def test_a_taken_admin_port_is_refused_before_anything_starts(mesh: MeshBuilder, sandbox_state: Path) -> None:
    proxy = mesh.sidecar("web-1")
    with socket.socket() as squatter:
        squatter.bind((proxy.address, proxy.admin_port))
        squatter.listen()
        said: list[str] = []
        with pytest.raises(SandboxError, match=f"admin of proxy web-1: {proxy.address}:{proxy.admin_port} is already"):
            sandbox.up(mesh.desired(), mesh.proxies, sandbox_state, log=said.append)
    assert said == []
    assert not (sandbox_state / sandbox.SANDBOX_FILE).exists()


def test_refuses_non_loopback_addresses_and_collisions_all_at_once(mesh: MeshBuilder, sandbox_state: Path) -> None:
    mesh.external("httpbin")
    web1, web2 = mesh.sidecar("web-1"), mesh.sidecar("web-2")
    mesh.change("web-2", listeners=web1.listeners)  # the same inbound address:port twice
    mesh.sidecar("web-3")
    mesh.change("web-3", address="10.1.2.3")
    mesh.external_services.append(replace(mesh.external_services[0], endpoints=(Endpoint("10.9.9.9", 443),)))
    with pytest.raises(SandboxError) as failure:
        sandbox.up(mesh.desired(), mesh.proxies, sandbox_state)
    text = str(failure.value)
    assert "listener inbound" in text and "of proxy web-2 and listener" in text and "of proxy web-1 both use" in text
    assert "admin of proxy web-3: 10.1.2.3:" in text
    assert "external service httpbin endpoint 10.9.9.9:443: 10.9.9.9:443 is not a loopback address" in text
    assert not (sandbox_state / sandbox.SANDBOX_FILE).exists()
    del web2


def test_down_leaves_a_reused_pid_alone(sandbox_state: Path) -> None:
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        # A record whose PID now belongs to another program, as after a reboot.
        record = TrackedProcess("envoy", "web-1", stranger.pid, ("/usr/bin/envoy", "-c", "x"), 0.0, None, "127.0.0.1",
                                9901, "envoy.log")  # fmt: skip
        (sandbox_state / sandbox.SANDBOX_FILE).write_text(json.dumps({"processes": [record.to_json()]}))
        stopped = sandbox.down(sandbox_state)
        assert [s.outcome for s in stopped] == [StopOutcome.NOT_OURS]
        assert stranger.poll() is None
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait(timeout=5)


def test_a_new_snapshot_is_picked_up_by_the_running_envoy(
    mesh: MeshBuilder, sandbox_state: Path, http: httpx.Client
) -> None:
    proxy = mesh.sidecar("web-1")
    sandbox.up(mesh.desired(), mesh.proxies, sandbox_state)
    port = mesh.loopback.port(proxy.address)
    cluster = proxy.clusters[0]["name"]
    second = http_listener("second", proxy.address, port, cluster)
    changed = mesh.change("web-1", listeners=(*proxy.listeners, second))

    deliver(sandbox_state, changed, "v2")

    stats = http.get(f"{proxy.admin_url}/stats", params={"filter": "lds.version_text"}).text
    assert 'listener_manager.lds.version_text: "v2"' in stats
    # The stat says the main thread took it; the workers serve it a moment later: wait, boundedly, for the answer.
    deadline = time.monotonic() + 10
    for _ in range(500):
        try:
            answer = http.get(f"{listener_url(changed, 1)}/via-second")
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    assert answer.json()["path"] == "/via-second"


def test_a_localhost_endpoint_gets_its_stand_in_on_loopback(
    mesh: MeshBuilder, sandbox_state: Path, http: httpx.Client
) -> None:
    port = mesh.loopback.port("127.0.0.1")
    mesh.external("httpbin")
    mesh.external_services[0] = replace(mesh.external_services[0], endpoints=(Endpoint("localhost", port),))

    info = sandbox.up(mesh.desired(), [], sandbox_state)

    assert [(p.role, p.name, p.address) for p in info.processes] == [
        ("external", f"httpbin/localhost:{port}", "127.0.0.1"), ("server", "meshplan-serve", "127.0.0.1")
    ]
    assert http.get(f"http://127.0.0.1:{port}/").json()["instance"] == f"localhost:{port}"
