"""A small desired mesh for the inbound ("from") policy tests: client services, servers, an egress, external
services, written as YAML (universal form) on the addresses an allocator hands out, and a sandbox of it that is
always brought down.

Goldens use `FixedAddresses` (stable names and ports); traffic tests use the session's `loopback` fixture, so that
two runs never collide.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
from conftest import _processes_under, pid_running

from meshplan.errors import LoadError
from meshplan.load.resources import format_path
from meshplan.model import Desired, ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki


class Addresses(Protocol):
    def ip(self) -> str: ...

    def port(self, ip: str) -> int: ...


class FixedAddresses:
    """127.0.9.x and ports counting up from 20000: the same names every time, for goldens."""

    def __init__(self) -> None:
        self._host = 0
        self._port = 20000

    def ip(self) -> str:
        self._host += 1
        return f"127.0.9.{self._host}"

    def port(self, ip: str) -> int:
        self._port += 1
        return self._port


@dataclass(frozen=True)
class Service:
    """A dataplane with one inbound of `service`, and outbounds to `calls` (services, or `mes:<name>`)."""

    name: str
    protocol: str = "http"
    tags: dict[str, str] = field(default_factory=dict)
    calls: tuple[str, ...] = ()


@dataclass
class MeshFiles:
    root: Path
    outbound: dict[tuple[str, str], str] = field(default_factory=dict)  # (client, target) -> http://ip:port
    admin: dict[str, str] = field(default_factory=dict)  # proxy name -> admin URL

    def url(self, client: str, target: str, path: str = "/") -> str:
        return self.outbound[(client, target)] + path


def write_mesh(
    root: Path,
    addresses: Addresses,
    services: list[Service],
    *,
    externals: dict[str, str] | None = None,  # name -> protocol
    policies: str = "",
    forbid_external: bool = False,
) -> MeshFiles:
    root.mkdir(parents=True, exist_ok=True)
    files = MeshFiles(root)
    forbid = "true" if forbid_external else "false"
    (root / "mesh.yaml").write_text(textwrap.dedent(f"""\
        type: Mesh
        name: default
        mtls:
          enabledBackend: ca-1
          backends:
            - name: ca-1
              type: builtin
        routing:
          zoneEgress: true
          defaultForbidMeshExternalServiceAccess: {forbid}
        """))
    docs = []
    for service in services:
        ip = addresses.ip()
        admin, inbound, app = addresses.port(ip), addresses.port(ip), addresses.port(ip)
        files.admin[service.name] = f"http://{ip}:{admin}"
        tags = {"kuma.io/service": service.name, "kuma.io/protocol": service.protocol, **service.tags}
        tag_lines = "".join(f"\n            {k}: {v}" for k, v in tags.items())
        outbounds = ""
        for target in service.calls:
            port = addresses.port(ip)
            files.outbound[(service.name, target)] = f"http://{ip}:{port}"
            if target.startswith("mes:"):
                ref = f"backendRef:\n          kind: MeshExternalService\n          name: {target[4:]}"
            else:
                ref = f"tags:\n          kuma.io/service: {target}"
            outbounds += f"\n    - address: {ip}\n      port: {port}\n      {ref}"
        docs.append(
            f"type: Dataplane\nmesh: default\nname: {service.name}\nnetworking:\n  address: {ip}\n"
            f"  admin:\n    port: {admin}\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n"
            f"      tags:{tag_lines}\n" + (f"  outbound:{outbounds}\n" if outbounds else "")
        )
    (root / "dataplanes.yaml").write_text("---\n".join(docs))
    if externals:
        ip = addresses.ip()
        port, admin = addresses.port(ip), addresses.port(ip)
        files.admin["egress"] = f"http://{ip}:{admin}"
        docs = [f"type: ZoneEgress\nname: egress\nnetworking:\n  address: {ip}\n  port: {port}\n  admin:\n    port: {admin}\n"]
        for name, protocol in externals.items():
            ext_ip = addresses.ip()
            docs.append(
                f"type: MeshExternalService\nmesh: default\nname: {name}\nspec:\n  match:\n    type: HostnameGenerator\n"
                f"    port: 80\n    protocol: {protocol}\n  endpoints:\n    - address: {ext_ip}\n"
                f"      port: {addresses.port(ext_ip)}\n"
            )
        (root / "external.yaml").write_text("---\n".join(docs))
    if policies:
        (root / "policies.yaml").write_text(textwrap.dedent(policies))
    return files


@contextmanager
def running_sandbox(desired: Desired, state: Path) -> Iterator[list[ProxyConfig]]:
    """The mesh's Envoys and apps on loopback; afterwards nothing started under `state` may still run."""
    state.mkdir(parents=True, exist_ok=True)
    pki.ensure(desired, state)
    proxies = render_all(desired)
    try:
        sandbox.up(desired, proxies, state)
        yield proxies
    finally:
        recorded = [p.pid for p in sandbox.status(state)] if (state / sandbox.SANDBOX_FILE).exists() else []
        try:
            sandbox.down(state)
        finally:
            leaked = sorted({pid for pid in recorded if pid_running(pid)} | set(_processes_under(state)))
            for pid in leaked:
                os.kill(pid, signal.SIGKILL)
            assert not leaked, f"processes left running after the tests: {leaked}"


def stats(client: httpx.Client, admin: str, pattern: str) -> dict[str, int]:
    """Counters of an Envoy whose names match a regex (`/stats?filter=`)."""
    answer = client.get(f"{admin}/stats", params={"format": "json", "filter": pattern})
    answer.raise_for_status()
    return {s["name"]: int(s["value"]) for s in answer.json()["stats"] if "name" in s and "value" in s}


def load(files: MeshFiles) -> Desired:
    return load_and_parse(files.root)


def violations(root: Path) -> list[str]:
    """Every violation of a desired directory, as `file:line: path: message` (none when it is valid)."""
    try:
        load_and_parse(root)
    except LoadError as e:
        # Paths relative to the desired directory, as a user running `meshplan validate .` there sees them.
        return [str(v).removeprefix(f"{root}/") for v in e.violations]
    return []


def inbound_golden(proxies: list[ProxyConfig], names: list[str], root: Path) -> str:
    """The inbound side of some proxies (their inbound listeners and the origins recorded in them), as JSON, with
    the desired directory `root` left out of the origins' file names."""
    out: dict[str, object] = {}
    for proxy in proxies:
        if proxy.name not in names:
            continue
        listeners = [listener for listener in proxy.listeners if listener.get("traffic_direction") == "INBOUND"]
        wanted = {listener["name"] for listener in listeners}
        origins = {
            name: {format_path(steps): [o.replace(f"{root}/", "") for o in who] for steps, who in paths.items()}
            for name, paths in proxy.origins.get("listener", {}).items()
            if name in wanted
        }
        out[proxy.name] = {"listeners": listeners, "origins": origins}
    return json.dumps(out, indent=2) + "\n"
