"""What the route-policy tests share: desired directories from YAML text (written with tests/builders.py), what
Envoy says of their render, and what running Envoys report."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

from meshplan.model import Desired, ProxyConfig
from tests import builders
from tests.policy_render import envoy_validates


def dataplane(name: str, address: str, service: str, *, version: str = "v1", **rest: Any) -> str:
    """tests/builders.py's dataplane, tagged with a `version` (v1 unless said) for the routes to select."""
    return builders.dataplane(name, address, service, tags={"version": version}, **rest)


def route(kind: str, name: str, to: str, rules: str, *, source: str = "web") -> str:
    """A MeshHTTPRoute or MeshTCPRoute `name` from the MeshService `source` to the MeshService `to`; `rules` is the
    YAML list of its rules (any indentation)."""
    head = (f"type: {kind}\nmesh: default\nname: {name}\nspec:\n  targetRef: {{kind: MeshService, name: {source}}}\n"
            f"  to:\n    - targetRef: {{kind: MeshService, name: {to}}}\n      rules:\n")
    return head + textwrap.indent(textwrap.dedent(rules).strip("\n") + "\n", " " * 8)


def write_desired(root: Path, files: dict[str, str]) -> Path:
    return builders.MeshFiles(root).write(files, dedent=True)


def envoy_problems(desired: Desired, state: Path) -> dict[str, str]:
    """`envoy --mode validate` on every proxy: only those Envoy refuses, with its message."""
    return {name: message for name, message in envoy_validates(desired, state).items() if message is not None}


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
