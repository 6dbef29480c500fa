"""What the route-policy tests share: desired directories from YAML text, their violations, a sandbox that is always
brought down, and Envoy stats."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from conftest import _processes_under, pid_running

from meshplan.errors import LoadError, Violation
from meshplan.load.resources import load_dir
from meshplan.model import Desired, ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.validate.check import FieldCheck
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki
from tests.policy_render import envoy_validates

MESH = """
    type: Mesh
    name: default
    mtls:
      enabledBackend: ca-1
      backends:
        - name: ca-1
          type: builtin
    """


def dataplane(name: str, address: str, service: str, *, version: str = "v1", admin: int = 9901, port: int = 8080,
              app: int = 18080, protocol: str = "http", outbounds: str = "") -> str:
    text = f"""
        type: Dataplane
        mesh: default
        name: {name}
        networking:
          address: {address}
          admin:
            port: {admin}
          inbound:
            - port: {port}
              serviceAddress: {address}
              servicePort: {app}
              tags:
                kuma.io/service: {service}
                kuma.io/protocol: {protocol}
                version: {version}
        """
    text = textwrap.dedent(text).lstrip("\n")
    if outbounds:
        text += "  outbound:\n" + textwrap.indent(textwrap.dedent(outbounds).lstrip("\n"), "    ")
    return text


def write_desired(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def violations(root: Path, module: ModuleType) -> list[str]:
    """Every violation of a desired directory, as `file:line: path: message`.

    A kind's references to other resources (`module.check_references`) are asked for here too when validate.py does
    not call them itself yet, so the answer is the same either way.
    """
    try:
        desired = load_and_parse(root)
    except LoadError as e:
        return [str(v) for v in e.violations]
    out: list[Violation] = []
    raws, _ = load_dir(root)
    for raw in raws:
        if raw.kind == module.KIND:
            policy = next(p for p in desired.policies if p.kind == raw.kind and p.name == raw.name)
            module.check_references(policy, desired, FieldCheck(raw, out))
    return [str(v) for v in out]


def envoy_problems(desired: Desired, state: Path) -> dict[str, str]:
    """`envoy --mode validate` on every proxy: only those Envoy refuses, with its message."""
    return {name: message for name, message in envoy_validates(desired, state).items() if message is not None}


@contextmanager
def running_sandbox(desired: Desired, state: Path) -> Iterator[dict[str, ProxyConfig]]:
    """The desired mesh on real Envoys; brought down afterwards however the tests ended, and nothing may survive."""
    state.mkdir(parents=True, exist_ok=True)
    pki.ensure(desired, state)
    proxies = render_all(desired)
    try:
        sandbox.up(desired, proxies, state)
        yield {p.name: p for p in proxies}
    finally:
        recorded = [p.pid for p in sandbox.status(state)] if (state / sandbox.SANDBOX_FILE).exists() else []
        try:
            sandbox.down(state)
        finally:
            leaked = sorted({pid for pid in recorded if pid_running(pid)} | set(_processes_under(state)))
            for pid in leaked:
                os.kill(pid, signal.SIGKILL)
            assert not leaked, f"processes left running after the tests: {leaked}"


def stat(client: httpx.Client, proxy: ProxyConfig, name: str) -> int:
    """One counter from an Envoy's admin `/stats` (0 when Envoy has not created it yet)."""
    answer = client.get(f"{proxy.admin_url}/stats", params={"filter": f"^{name.replace('.', '[.]')}$"})
    answer.raise_for_status()
    for line in answer.text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def wait_for_stat(client: httpx.Client, proxy: ProxyConfig, name: str, at_least: int, timeout: float = 3.0) -> int:
    """Poll a counter until it reaches `at_least` (for what Envoy counts after answering, such as mirrors)."""
    deadline = time.monotonic() + timeout
    value = stat(client, proxy, name)
    for _ in range(int(timeout / 0.05)):
        if value >= at_least or time.monotonic() > deadline:
            break
        time.sleep(0.05)
        value = stat(client, proxy, name)
    return value


def live_differences(proxies: dict[str, ProxyConfig]) -> dict[str, list[str]]:
    """What running Envoys report (`/config_dump`) that differs from the render: per proxy, the changed resources."""
    from meshplan.compare.diff import diff_resources
    from meshplan.observe.live import fetch_all, new_client

    async def fetch() -> dict[str, Any]:
        async with new_client() as client:
            return await fetch_all(client, [(p.name, p.admin_url) for p in proxies.values()])

    results = asyncio.run(fetch())
    out: dict[str, list[str]] = {}
    for name, proxy in proxies.items():
        live = results[name].resources
        assert live is not None, str(results[name])
        changes = diff_resources(proxy.clusters, live.clusters, "cluster")
        changes += diff_resources(proxy.listeners, live.listeners, "listener")
        if changes:
            out[name] = [f"{c.kind} {c.name} {c.action.value} {[str(f) for f in c.fields]}" for c in changes]
    return out
