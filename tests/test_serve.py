"""`meshplan serve` and `meshplan bootstrap --xds` with real Envoys that the tests start themselves, from their host
directories: a held request, identity, NACKs, make-before-break, a server killed and restarted, one server per
address, and what a host needs."""

from __future__ import annotations

import json
import stat as stat_module
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.model import ProxyConfig
from meshplan.xds import identity, snapshot
from meshplan.xds.bootstrap import FILES, write_host_dir
from meshplan.xds.store import DirectoryStore, ProxyStatus
from tests.builders import (
    MeshBuilder,
    http_listener,
    listener_url,
    stat,
    static_cluster,
)
from tests.fleet import Fleet, Server, dynamic_clusters, wait_for

pytestmark = pytest.mark.envoy
DEMO = Path(__file__).parent.parent / "examples" / "demo"


def write(state: Path, proxy: ProxyConfig, version: str) -> None:
    DirectoryStore.under(state).write_snapshot(
        proxy.name, snapshot.build(state, proxy.name, version, proxy.clusters, proxy.listeners))


def status(state: Path, proxy: str) -> ProxyStatus | None:
    return DirectoryStore.under(state).read_status(proxy)


def taken(state: Path, proxy: str, version: str, timeout: float = 10.0) -> ProxyStatus:
    """Wait (bounded) until the server says the proxy ACKed or NACKed `version`."""
    found = wait_for(f"{proxy} to answer {version}",
                     lambda: (s := status(state, proxy)) is not None and version in (s.acked, s.nacked) and s, timeout)
    assert isinstance(found, ProxyStatus)
    return found


def start(fleet: Fleet, state: Path, server: Server, proxy: ProxyConfig, out: Path | None = None) -> Path:
    host = out or fleet.workdir / "hosts" / proxy.name
    write_host_dir(state, proxy, server.address, host)
    fleet.envoy(host)
    return host


def with_app(fleet: Fleet, mesh: MeshBuilder, proxy: ProxyConfig) -> None:
    inbound = mesh.dataplanes[[p.name for p in mesh.proxies].index(proxy.name)].inbounds[0]
    fleet.app(inbound.service, proxy.name, inbound.service_address, inbound.service_port)


def serving_v1(mesh: MeshBuilder, fleet: Fleet, state: Path) -> tuple[ProxyConfig, Server, ProxyStatus]:
    """A sidecar `web-1` with its app, and an xDS server under `state` that holds snapshot v1 for it, once its
    Envoy has answered v1: (the proxy, the server, the proxy's status then)."""
    proxy = mesh.sidecar("web-1")
    with_app(fleet, mesh, proxy)
    server = fleet.serve(state, f"{mesh.loopback.ip()}:0")
    write(state, proxy, "v1")
    start(fleet, state, server, proxy)
    return proxy, server, taken(state, "web-1", "v1")


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=2, trust_env=False)


def test_bootstrap_writes_what_a_host_needs_and_nothing_else(tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "host-web"
    runner = CliRunner()
    result = runner.invoke(app, ["bootstrap", str(DEMO), "web", "--xds", "10.0.0.5:15000", "--out", str(out),
                                 "--state", str(state)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert stat_module.S_IMODE((out / "xds-client.key").stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in result.output

    boot = json.loads((out / "bootstrap.json").read_text())
    assert boot["node"]["id"] == "web" and boot["node"]["cluster"] == "default"
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.1.1", "port_value": 9901}
    ads = boot["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC" and ads["set_node_on_first_message_only"] is True
    assert ads["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"] == {"base_interval": "0.25s", "max_interval": "2.5s"}
    for source in ("cds_config", "lds_config"):
        assert boot["dynamic_resources"][source] == {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
    (xds,) = boot["static_resources"]["clusters"]
    assert xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == {
        "address": "10.0.0.5", "port_value": 15000}
    text = json.dumps(boot)
    files = [v for v in _strings(boot) if v.startswith("/")]
    assert files and all(Path(f).parent == out.absolute() for f in files)
    assert str(state) not in text  # nothing of the state directory: the host has only these files

    cert = x509.load_pem_x509_certificate((out / "xds-client.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://meshplan-xds/proxy/web"]

    moved = runner.invoke(app, ["bootstrap", str(DEMO), "web", "--xds", "meshplan.internal:15000", "--out", str(out),
                                "--host-dir", "/etc/meshplan", "--state", str(state)])
    assert moved.exit_code == 0
    boot = json.loads((out / "bootstrap.json").read_text())
    assert all(f.startswith("/etc/meshplan/") for f in _strings(boot) if f.startswith("/"))
    assert boot["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"


def _strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_an_envoy_waits_for_its_snapshot_then_takes_it(mesh: MeshBuilder, fleet: Fleet, tmp_path: Path) -> None:
    state = tmp_path / "state"
    proxy = mesh.sidecar("web-1")
    with_app(fleet, mesh, proxy)
    server = fleet.serve(state, f"{mesh.loopback.ip()}:0")
    start(fleet, state, server, proxy)

    wait_for("web-1 to connect", lambda: (s := status(state, "web-1")) is not None and s.connected)
    # held, never answered empty: no configuration, and not ready
    assert dynamic_clusters(proxy.admin_url) == []
    assert get(f"{proxy.admin_url}/ready").status_code == 503

    write(state, proxy, "v1")
    assert taken(state, "web-1", "v1").acked == "v1"
    wait_for("the listener to serve", lambda: get(f"{listener_url(proxy)}/hello").json()["instance"] == "web-1")
    assert get(f"{proxy.admin_url}/ready").status_code == 200


def test_a_nacked_snapshot_is_never_sent_again(mesh: MeshBuilder, fleet: Fleet, tmp_path: Path, http: httpx.Client) -> None:
    state = tmp_path / "state"
    proxy, server, _ = serving_v1(mesh, fleet, state)

    bad = mesh.change("web-1", clusters=(dict(proxy.clusters[0], connect_timeout="-1s"),))
    write(state, bad, "v2")
    refused = taken(state, "web-1", "v2")
    assert (refused.nacked, refused.acked, refused.error_type) == ("v2", "v1", "cluster")
    assert "Invalid duration" in refused.error and "\n" not in refused.error and "goo.gle" not in refused.error
    assert "Envoy refused the clusters of v2" in server.log_text()
    # Envoy re-requests after a NACK; a server that answered with the same snapshot would be refused again and again.
    good = mesh.change("web-1", clusters=(dict(proxy.clusters[0], connect_timeout="2s"),))
    write(state, good, "v3")
    assert taken(state, "web-1", "v3").acked == "v3"
    assert stat(http, proxy.admin_url, "cluster_manager.cds.update_rejected") == 1
    assert get(f"{listener_url(proxy)}/").status_code == 200


def test_make_before_break_never_drops_a_request(mesh: MeshBuilder, fleet: Fleet, tmp_path: Path) -> None:
    """The listener moves to a new cluster and the old one goes: sent as one update, the listener would route to a
    cluster Envoy no longer has; sent make-before-break, no request fails. The same after a server restart, when
    only the store knows what the Envoy holds."""
    state = tmp_path / "state"
    proxy, server, _ = serving_v1(mesh, fleet, state)
    url = f"{listener_url(proxy)}/"
    failures: list[str] = []
    sent = [0]
    stop = threading.Event()

    def traffic() -> None:
        # A new connection per request: one kept alive stays on the listener's old filter chain while Envoy drains it
        # (--drain-time-s), and that chain routes to the old cluster even after it is gone.
        with httpx.Client(trust_env=False, timeout=2, headers={"connection": "close"}) as client:
            while not stop.is_set():
                sent[0] += 1
                try:
                    answer = client.get(url)
                    if answer.status_code != 200:
                        failures.append(f"HTTP {answer.status_code} {answer.text.strip()}")
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    current = proxy
    for version in ("v2", "v3"):
        app_address = current.clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        # The new cluster warms until its first health check answers (300 ms): a server that sent the clusters
        # without the old one would leave the listener routing to a missing cluster all that time.
        check = {"timeout": "2s", "interval": "10s", "healthy_threshold": 1, "unhealthy_threshold": 1,
                 "http_health_check": {"path": "/delay/300"}}
        renamed = static_cluster(f"app-{version}", app_address["socket_address"]["address"],
                                 app_address["socket_address"]["port_value"], health_checks=[check])
        listener = http_listener(proxy.listeners[0]["name"], proxy.address,
                                 proxy.listeners[0]["address"]["socket_address"]["port_value"], renamed["name"])
        current = mesh.change("web-1", clusters=(renamed,), listeners=(listener,))
        thread = threading.Thread(target=traffic)
        stop.clear()
        thread.start()
        try:
            wait_for("requests to flow", lambda: sent[0] > 5)
            write(state, current, version)
            assert taken(state, "web-1", version).acked == version
            before = sent[0]
            wait_for("requests after the change", lambda: sent[0] > before + 5)
        finally:
            stop.set()
            thread.join()
        assert failures == [], failures[:5]
        assert dynamic_clusters(proxy.admin_url) == [renamed["name"]]  # the old cluster did go, in the end
        if version == "v2":
            server.process.kill()
            server.process.wait()
            server = fleet.restart(server)
            wait_for("web-1 to reconnect", lambda: (s := status(state, "web-1")) is not None and s.connected
                     and s.server != "" and s.acked == "v2")


def test_a_server_killed_and_restarted_changes_nothing_and_envoys_come_back(
    mesh: MeshBuilder, fleet: Fleet, tmp_path: Path, http: httpx.Client
) -> None:
    state = tmp_path / "state"
    proxy, server, first = serving_v1(mesh, fleet, state)
    modified = {s: stat(http, proxy.admin_url, s) for s in ("cluster_manager.cluster_modified", "listener_manager.listener_modified")}

    server.process.kill()
    server.process.wait()
    # Envoy keeps serving what it has
    assert get(f"{listener_url(proxy)}/").status_code == 200
    wait_for("Envoy to notice", lambda: stat(http, proxy.admin_url, "control_plane.connected_state") == 0)

    restarted = fleet.restart(server)
    back = wait_for("web-1 to reconnect to the new server",
                    lambda: (s := status(state, "web-1")) is not None and s.connected and s.server != first.server and s)
    assert isinstance(back, ProxyStatus) and back.acked == "v1"
    # the same snapshot again: nothing changed in the Envoy
    assert {s: stat(http, proxy.admin_url, s) for s in modified} == modified
    assert get(f"{listener_url(proxy)}/").status_code == 200
    assert "web-1: connected" in restarted.log_text()


def test_only_a_proxys_own_certificate_gets_its_configuration(
    mesh: MeshBuilder, fleet: Fleet, tmp_path: Path, http: httpx.Client
) -> None:
    state, elsewhere = tmp_path / "state", tmp_path / "another-state"
    honest, liar, anonymous, stranger = (mesh.sidecar(n) for n in ("honest", "liar", "anonymous", "stranger"))
    server = fleet.serve(state, f"{mesh.loopback.ip()}:0")
    for proxy in mesh.proxies:
        write(state, proxy, "v1")
    start(fleet, state, server, honest)
    # liar: honest's own certificate, another proxy's node id
    liar_host = fleet.workdir / "hosts" / "liar"
    write_host_dir(state, honest, server.address, liar_host)
    boot = json.loads((liar_host / "bootstrap.json").read_text())
    boot["node"]["id"] = "liar"
    boot["admin"]["address"]["socket_address"] = {"address": liar.address, "port_value": liar.admin_port}
    (liar_host / "bootstrap.json").write_text(json.dumps(boot))
    fleet.envoy(liar_host)
    # anonymous: no client certificate at all
    anonymous_host = fleet.workdir / "hosts" / "anonymous"
    write_host_dir(state, anonymous, server.address, anonymous_host)
    boot = json.loads((anonymous_host / "bootstrap.json").read_text())
    del boot["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"]
    (anonymous_host / "bootstrap.json").write_text(json.dumps(boot))
    fleet.envoy(anonymous_host)
    # stranger: a certificate naming it, from another xDS CA
    stranger_host = fleet.workdir / "hosts" / "stranger"
    write_host_dir(elsewhere, stranger, server.address, stranger_host)
    (stranger_host / "xds-ca.crt").write_bytes(identity.ensure_server(state).ca.read_bytes())  # it trusts the server
    fleet.envoy(stranger_host)

    taken(state, "honest", "v1")
    wait_for("the liar to be refused", lambda: "refused" in server.log_text() and "'liar'" in server.log_text())
    for proxy in (anonymous, stranger):  # it tried, and tried again
        wait_for(f"{proxy.name} to try", lambda p=proxy: stat(http, p.admin_url, "cluster.meshplan_xds.upstream_cx_total") >= 2)
    for proxy in (liar, anonymous, stranger):
        assert dynamic_clusters(proxy.admin_url) == []
        found = status(state, proxy.name)
        assert found is None or not found.connected
    assert dynamic_clusters(honest.admin_url) == [c["name"] for c in honest.clusters]


def test_a_second_server_on_the_same_address_fails(mesh: MeshBuilder, fleet: Fleet, tmp_path: Path) -> None:
    server = fleet.serve(tmp_path / "state", f"{mesh.loopback.ip()}:0")
    second = subprocess.run([sys.executable, "-m", "meshplan.cli", "serve", "--listen", server.address, "--state",
                             str(tmp_path / "state")], capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert f"cannot listen on {server.address}" in second.stderr and "Traceback" not in second.stderr
    assert server.process.poll() is None
