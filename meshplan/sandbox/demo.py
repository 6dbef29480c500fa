"""`meshplan demo`: the whole story on the bundled example, on real Envoys, then everything torn down.

validate -> a sandbox of Envoys with nothing delivered -> plan -> apply -> traffic -> change the desired directory,
plan and apply again -> change a proxy behind meshplan's back -> drift -> teardown.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from rich.console import Console

from meshplan.apply.deliver import Outcome, apply_plan, record
from meshplan.errors import MeshplanError
from meshplan.model import Desired
from meshplan.plan import drift
from meshplan.plan.workflow import compute_plan, desired_proxies, fetch_live
from meshplan.present.human import render_plan
from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.state import records as state
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki, snapshot
from meshplan.xds.store import DirectoryStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "demo"  # meshplan/sandbox/demo.py -> the checkout
REQUESTS = 6
HEALTHY_WAIT = 5.0  # seconds: more than two health-check intervals of the demo's MeshHealthCheck


def run_demo(console: Console, example: Path = EXAMPLE) -> int:
    if not example.is_dir():
        raise MeshplanError(f"the example directory {example} is missing (run from a checkout, or pass --example)")
    with tempfile.TemporaryDirectory(prefix="meshplan-demo-") as tmp:
        desired_dir = Path(tmp) / "desired"
        shutil.copytree(example, desired_dir)
        state_dir = Path(tmp) / "state"
        try:
            return _story(console, desired_dir, state_dir)
        finally:
            stopped = sandbox.down(state_dir)
            console.rule("teardown")
            console.print(f"Stopped {len(stopped)} processes; nothing left running.")


def _wait_for_ack(store: DirectoryStore, proxy: str, version: str, seconds: float = 5.0) -> None:
    """Until the server says the proxy ACKed `version` whole."""
    deadline = time.monotonic() + seconds
    while (status := store.read_status(proxy)) is None or status.acked != version:
        if time.monotonic() > deadline:
            raise MeshplanError(f"{proxy} did not take the out-of-band change within {seconds:g}s")
        time.sleep(0.02)


def _step(console: Console, title: str) -> None:
    console.print()
    console.rule(title)


def _apply(console: Console, desired_dir: Path, state_dir: Path) -> None:
    with state.lock(state_dir, "apply"):
        plan = compute_plan(desired_dir, state_dir)
        render_plan(console, plan)
        results = apply_plan(plan, state_dir)
        written = record(state_dir, results, plan)
    for r in results:
        if r.outcome is not Outcome.UNCHANGED:
            detail = f": {r.detail}" if r.detail else ""
            console.print(f"  {r.outcome.value} {r.name} [{r.type}] in {r.seconds * 1000:.0f} ms{detail}", markup=False)
    if any(r.outcome not in (Outcome.APPLIED, Outcome.UNCHANGED) for r in results):
        raise MeshplanError("the apply did not go through")
    console.print(f"  state serial {written.serial}")


def _traffic(console: Console, desired: Desired) -> None:
    web = next(dp for dp in desired.dataplanes if dp.name == "web")
    to_backend = next(o for o in web.outbounds if o.service == "backend")
    to_external = next(o for o in web.outbounds if o.external is not None)
    with httpx.Client(trust_env=False, timeout=5) as client:
        # All sidecars were updated at once, so web's first health check of a backend may have beaten that backend's
        # inbound listener: the instance then counts as unhealthy until the next check (2s). Give it that long.
        deadline = time.monotonic() + HEALTHY_WAIT
        while True:
            seen = Counter(client.get(f"http://{to_backend.address}:{to_backend.port}/hello").json()["instance"]
                           for _ in range(REQUESTS))
            if len(seen) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        console.print(f"  web -> backend (mTLS through two sidecars): {dict(seen)}", markup=False)
        if len(seen) < 2:
            raise MeshplanError("expected both backend instances to answer")
        canary = Counter(client.get(f"http://{to_backend.address}:{to_backend.port}/v2/hello").json()["instance"]
                         for _ in range(REQUESTS))
        console.print(f"  web -> backend /v2/... (MeshHTTPRoute to version=v2 only): {dict(canary)}", markup=False)
        if set(canary) != {"backend-2"}:
            raise MeshplanError("expected /v2 to reach backend-2 (version v2) only")
        answer = client.get(f"http://{to_external.address}:{to_external.port}/get").json()
        console.print(f"  web -> {to_external.external} (through the egress): answered by {answer['service']} "
                      f"at {answer['instance']}", markup=False)
    admin = next(dp for dp in desired.dataplanes if dp.name == "admin")
    with httpx.Client(trust_env=False, timeout=5) as client:
        for outbound in admin.outbounds:
            answer = client.get(f"http://{outbound.address}:{outbound.port}/")
            target = outbound.service or outbound.external
            console.print(f"  admin -> {target}: HTTP {answer.status_code} {answer.text.strip()!r} (MeshTrafficPermission"
                          f"{' on the egress' if outbound.external else ''})", markup=False)
            if answer.status_code != 403:
                raise MeshplanError(f"expected admin to be denied {target}")
    inbound = next(dp for dp in desired.dataplanes if dp.name == "backend-1").inbounds[0]
    try:
        httpx.get(f"http://{inbound.address}:{inbound.port}/", timeout=2, trust_env=False)
    except httpx.HTTPError as e:
        console.print(f"  plain text straight to backend-1's inbound: refused ({type(e).__name__})", markup=False)
    else:
        raise MeshplanError("a plain-text request to a sidecar's inbound was answered: mTLS is not enforced")


def _story(console: Console, desired_dir: Path, state_dir: Path) -> int:
    _step(console, "1. validate the desired directory")
    desired = load_and_parse(desired_dir)
    pki.ensure(desired, state_dir)
    proxies = render_all(desired)
    for proxy in proxies:
        console.print(f"  {proxy.name:<10} [{proxy.type}] {len(proxy.clusters)} clusters, {len(proxy.listeners)} listeners",
                      markup=False)

    _step(console, "2. a local mesh of real Envoys and meshplan serve, the Envoys started with nothing delivered")
    info = sandbox.up(desired, [dataclasses.replace(p, clusters=(), listeners=()) for p in proxies], state_dir)
    console.print(f"  {len(proxies)} Envoys, each from its own bootstrap --xds host directory, connected to meshplan "
                  f"serve at {sandbox.server_address(state_dir)}; their apps ready in {info.seconds:.2f}s", markup=False)

    _step(console, "3. plan and apply")
    _apply(console, desired_dir, state_dir)

    _step(console, "4. traffic")
    _traffic(console, desired)

    _step(console, "5. point the external service at a port where nothing listens; plan, apply, and put it back")
    external = desired_dir / "external.yaml"
    web = next(dp for dp in desired.dataplanes if dp.name == "web")
    to_external = next(o for o in web.outbounds if o.external is not None)
    url = f"http://{to_external.address}:{to_external.port}/get"
    external.write_text(external.read_text().replace("port: 18080", "port: 18081"))
    _apply(console, desired_dir, state_dir)
    console.print(f"  web -> httpbin now: HTTP {httpx.get(url, timeout=5, trust_env=False).status_code} (the egress "
                  "cannot reach the new endpoint)", markup=False)
    external.write_text(external.read_text().replace("port: 18081", "port: 18080"))
    _apply(console, desired_dir, state_dir)
    console.print(f"  web -> httpbin again: HTTP {httpx.get(url, timeout=5, trust_env=False).status_code}", markup=False)
    if compute_plan(desired_dir, state_dir).has_changes:
        raise MeshplanError("a plan right after apply should be empty")

    _step(console, "6. someone changes backend-1 behind meshplan's back; drift notices")
    backend = next(p for p in proxies if p.name == "backend-1")
    # Another tool writes the server's store directly: the server delivers it, meshplan's state knows nothing of it.
    store = DirectoryStore.under(state_dir)
    store.write_snapshot(backend.name, snapshot.build(state_dir, backend.name, "out-of-band", (), backend.listeners))
    _wait_for_ack(store, backend.name, "out-of-band")
    checked = desired_proxies(desired_dir)
    report = drift.classify(checked, state.read(state_dir), fetch_live(checked), *drift.server_view(store, checked))
    for d in report:
        console.print(f"  {d.status.value:<12} {d.name} [{d.type}]{': ' + d.detail if d.detail else ''}", markup=False)
    code = drift.exit_code(report)
    console.print(f"  meshplan drift would exit {code} (3: drifted)", markup=False)
    if code != drift.EXIT_CODES[drift.Status.DRIFTED]:
        raise MeshplanError("expected drift to report backend-1 as drifted")
    return 0
