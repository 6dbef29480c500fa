"""The whole job on a fleet meshplan did not start: `meshplan serve` on this machine, every proxy an Envoy started by
the test from its own `meshplan bootstrap --xds` host directory, each (as root, as in CI) on a host of its own — a
network namespace — so the network is the only way to meshplan and to each other. Without root, the same fleet
runs on loopback addresses of its own.

`apply` from here: sidecars talk over mesh mTLS with SDS-delivered certificates, and reach the external service
through the egress; then the server is killed in the middle of an apply, and restarted."""

from __future__ import annotations

import base64
import re
import shutil
import stat
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from typer.testing import CliRunner

from meshplan.apply import deliver as apply_module
from meshplan.cli import app
from meshplan.plan.workflow import compute_plan
from meshplan.render.proxies import render_all
from meshplan.state import records as state_module
from meshplan.validate.resources import load_and_parse
from meshplan.xds.store import DirectoryStore
from tests.builders import DEMO, fresh_prefix
from tests.fleet import Fleet, can_make_namespaces, wait_for

pytestmark = pytest.mark.envoy
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
ORIGINAL = re.compile(r"127\.0\.[12]\.\d+")


def meshplan(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def place(fleet: Fleet, desired: Path) -> tuple[dict[str, str], dict[str, str | None], str]:
    """Copy examples/demo to `desired` with a host per address: (original address -> new one, new address -> its
    namespace or None, this machine's address to serve on)."""
    shutil.copytree(DEMO, desired)
    originals = sorted({a for p in desired.rglob("*.y*ml") for a in ORIGINAL.findall(p.read_text())})
    namespaces: dict[str, str | None] = {}
    if can_make_namespaces():
        hosts = fleet.network()
        moved = {}
        for original in originals:
            ns, address = hosts.add()
            moved[original], namespaces[address] = address, ns
        local = hosts.local
    else:
        prefix = fresh_prefix()
        moved = {o: f"{prefix}{i + 2}" for i, o in enumerate(originals)}
        namespaces = dict.fromkeys(moved.values())
        local = f"{prefix}1"
    for path in desired.rglob("*.y*ml"):
        path.write_text(ORIGINAL.sub(lambda m: moved[m.group(0)], path.read_text()))
    return moved, namespaces, local


def test_apply_reaches_envoys_on_hosts_of_their_own(fleet: Fleet, tmp_path: Path) -> None:
    desired_dir, state = tmp_path / "desired", tmp_path / "state"
    moved, namespaces, local = place(fleet, desired_dir)
    desired = load_and_parse(desired_dir)
    server = fleet.serve(state, f"{local}:0")

    # Each host: what `meshplan bootstrap --xds` writes, an Envoy started from it, and the apps behind it.
    for proxy in render_all(desired):
        host = tmp_path / "hosts" / proxy.name
        code, _, err = meshplan("bootstrap", str(desired_dir), proxy.name, "--xds", server.address, "--out", str(host),
                                "--state", str(state))
        assert code == 0, err
        assert str(state) not in (host / "bootstrap.json").read_text()
        fleet.envoy(host, namespaces[proxy.address])
    for dp in desired.dataplanes:
        for inbound in dp.inbounds:
            fleet.app(inbound.service, dp.name, inbound.service_address, inbound.service_port, namespaces[dp.address])
    for mes in desired.external_services:
        for endpoint in mes.endpoints:
            fleet.app(mes.name, f"{endpoint.address}:{endpoint.port}", endpoint.address, endpoint.port,
                      namespaces[endpoint.address])
    store = DirectoryStore.under(state)
    names = desired.proxy_names()
    wait_for("every Envoy to connect", lambda: all((s := store.read_status(n)) and s.connected for n in names))

    code, out, err = meshplan("apply", str(desired_dir), "--state", str(state), "--auto-approve")
    assert code == 0, err
    assert "Apply complete: 5 applied." in err
    assert meshplan("plan", str(desired_dir), "--state", str(state), "--detailed-exitcode")[0] == 0

    web, admin = moved["127.0.1.1"], moved["127.0.1.5"]
    with httpx.Client(trust_env=False, timeout=5) as client:
        # web -> backend over mesh mTLS, both instances (after their first health check); /v2 to v2 only
        instances = wait_for("both backends to answer", lambda: len(
            seen := {client.get(f"http://{web}:10001/").json()["instance"] for _ in range(6)}) == 2 and seen)
        assert instances == {"backend-1", "backend-2"}
        assert client.get(f"http://{web}:10002/get").json()["service"] == "httpbin"  # through the egress
        assert client.get(f"http://{admin}:10001/").status_code == 403  # MeshTrafficPermission
        with pytest.raises(httpx.HTTPError):  # plain text to a sidecar's inbound: mTLS only
            client.get(f"http://{moved['127.0.1.2']}:8080/")

    # Each Envoy runs the certificate of its own identity, delivered over SDS; its key shows only as redacted.
    dump = httpx.get(f"http://{web}:9901/config_dump?mask=dynamic_active_secrets", trust_env=False).json()
    secrets = {s["name"]: s["secret"] for config in dump["configs"] for s in config.get("dynamic_active_secrets", [])}
    assert sorted(secrets) == ["ca:default", "identity:default"]
    tls = secrets["identity:default"]["tls_certificate"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(tls["certificate_chain"]["inline_bytes"]))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe:")] == [
        "spiffe://default/web"]
    assert tls["private_key"] == {"inline_bytes": base64.b64encode(b"[redacted]").decode()}

    _kill_the_server_mid_apply(fleet, server, desired_dir, state, web)


def _kill_the_server_mid_apply(fleet: Fleet, server: object, desired_dir: Path, state: Path, web: str) -> None:
    from tests.fleet import Server

    assert isinstance(server, Server)
    timeout = desired_dir / "policies" / "timeout.yaml"
    timeout.write_text(timeout.read_text().replace("connectionTimeout: 2s", "connectionTimeout: 4s"))
    plan = compute_plan(desired_dir, state)
    assert len(plan.changed_proxies) >= 2  # the clients: admin and web
    killed: list[str] = []

    def kill_after_first(result: apply_module.ProxyResult) -> None:
        if not killed:
            server.process.kill()
            server.process.wait()
            killed.append(result.name)

    with state_module.lock(state, "apply"):
        results = apply_module.apply_plan(plan, state, parallelism=1, wait=3, progress=kill_after_first)
        recorded = apply_module.record(state, results, plan)
    outcomes = [r.outcome for r in results if r.outcome is not apply_module.Outcome.UNCHANGED]
    assert outcomes[0] is apply_module.Outcome.APPLIED
    assert outcomes[1] is apply_module.Outcome.TIMED_OUT
    assert set(outcomes[2:]) <= {apply_module.Outcome.SKIPPED}
    timed_out = next(r for r in results if r.outcome is apply_module.Outcome.TIMED_OUT)
    assert recorded.proxies[timed_out.name].outcome == "timed out"
    assert recorded.proxies[killed[0]].outcome == "applied"
    # The Envoys keep serving what they have.
    assert httpx.get(f"http://{web}:10001/", timeout=5, trust_env=False).status_code == 200

    began = time.monotonic()
    restarted = fleet.restart(server)
    store = DirectoryStore.under(state)
    wait_for("every Envoy to reconnect", lambda: all(
        (s := store.read_status(p.name)) and s.connected and s.server != "" and s.acked == s.target for p in plan.proxies))
    print(f"reconnected {time.monotonic() - began:.2f}s after the restart")  # noqa: T201 - shown with -s
    # the snapshot that waited in the store was delivered: the timed-out proxy runs its desired config now
    code, out, err = meshplan("apply", str(desired_dir), "--state", str(state), "--auto-approve")
    assert code == 0, err
    assert meshplan("plan", str(desired_dir), "--state", str(state), "--detailed-exitcode")[0] == 0
    code, out, _ = meshplan("drift", str(desired_dir), "--state", str(state), "--json")
    assert code == 0, out
    assert "connected" in restarted.log_text()
    _no_private_key_anywhere(state, [server.log_text(), restarted.log_text(), out, err,
                                     meshplan("plan", str(desired_dir), "--state", str(state), "--json")[1]])


def _no_private_key_anywhere(state: Path, outputs: list[str]) -> None:
    """Every key file is 0600, and no key (nor any line of one) shows in any output, log, status or state."""
    keys = list(state.rglob("*.key")) + list((state.parent / "hosts").rglob("*.key"))
    assert keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (state / "xds" / "snapshots").iterdir())
    lines = {line for k in keys for line in k.read_text().splitlines() if "PRIVATE KEY" not in line and len(line) > 20}
    texts = outputs + [p.read_text(errors="replace") for p in state.rglob("*.json")]
    texts += [p.read_text(errors="replace") for p in (state.parent / "hosts").rglob("*.log")]
    for text in texts:
        assert "PRIVATE KEY" not in text
        assert not [line for line in lines if line in text]
