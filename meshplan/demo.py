"""`meshplan demo`: the whole story on the bundled example, on real Envoys, then everything torn down."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import httpx
from rich.console import Console

from meshplan import pki, sandbox
from meshplan.diff import Action
from meshplan.errors import MeshplanError
from meshplan.present.human import render_plan
from meshplan.render import render_all
from meshplan.validate import load_and_parse
from meshplan.workflow import compute_plan

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "demo"
REQUESTS = 6


def run_demo(console: Console, example: Path = EXAMPLE, state_dir: Path | None = None) -> int:
    if not example.is_dir():
        raise MeshplanError(f"the example directory {example} is missing (run from a checkout, or pass --example)")
    with tempfile.TemporaryDirectory(prefix="meshplan-demo-") as tmp:
        work = Path(tmp)
        desired_dir = work / "desired"
        shutil.copytree(example, desired_dir)
        state = state_dir or work / "state"
        try:
            return _story(console, desired_dir, state)
        finally:
            stopped = sandbox.down(state)
            console.rule("teardown")
            console.print(f"Stopped {len(stopped)} processes; nothing left running.")


def _story(console: Console, desired_dir: Path, state: Path) -> int:
    console.rule("1. validate and render")
    desired = load_and_parse(desired_dir)
    pki.ensure(desired, state)
    proxies = render_all(desired, state)
    for proxy in proxies:
        console.print(f"  {proxy.name:<10} [{proxy.type}] {len(proxy.clusters)} clusters, {len(proxy.listeners)} listeners",
                      markup=False)

    console.rule("2. a local mesh of real Envoys (sandbox)")
    info = sandbox.up(desired, proxies, state)
    console.print(f"  {len(proxies)} Envoys and their apps ready in {info.seconds:.2f}s", markup=False)

    console.rule("3. plan: the running Envoys match the desired directory")
    plan = compute_plan(desired_dir, state)
    render_plan(console, plan)
    if plan.has_changes or not plan.complete:
        raise MeshplanError("the sandbox does not run what was rendered")

    console.rule("4. traffic")
    web = next(dp for dp in desired.dataplanes if dp.name == "web")
    to_backend = next(o for o in web.outbounds if o.service == "backend")
    to_external = next(o for o in web.outbounds if o.external is not None)
    with httpx.Client(trust_env=False, timeout=5) as client:
        seen = Counter(client.get(f"http://{to_backend.address}:{to_backend.port}/hello").json()["instance"] for _ in range(REQUESTS))
        console.print(f"  web -> backend (mTLS through two sidecars): {dict(seen)}", markup=False)
        if len(seen) < 2:
            raise MeshplanError("expected both backend instances to answer")
        answer = client.get(f"http://{to_external.address}:{to_external.port}/get").json()
        console.print(f"  web -> {to_external.external} (through the egress): answered by {answer['service']} "
                      f"at {answer['instance']}", markup=False)
    backend = next(dp for dp in desired.dataplanes if dp.name == "backend-1")
    inbound = backend.inbounds[0]
    try:
        httpx.get(f"http://{inbound.address}:{inbound.port}/", timeout=2, trust_env=False)
        raise MeshplanError("a plain-text request to a sidecar's inbound was answered: mTLS is not enforced")
    except httpx.HTTPError as e:
        console.print(f"  plain text straight to backend-1's inbound: refused ({type(e).__name__})", markup=False)

    console.rule("5. change an external endpoint in the desired directory, and plan again")
    external = desired_dir / "external.yaml"
    text = external.read_text()
    external.write_text(text.replace("port: 18080", "port: 18081"))
    plan = compute_plan(desired_dir, state)
    render_plan(console, plan)
    external.write_text(text)
    if plan.count(Action.UPDATE) != 1:
        raise MeshplanError("expected the endpoint change to show as one updated cluster")
    return 0
