"""What the tests share to build, check and run desired meshes: stable addresses for renders (`FixedAddresses`), a
desired directory's violations as `meshplan validate` reports them (`violations`), a sandbox that is always brought
down with nothing left running (`running_sandbox`, `bring_down`), and Envoy's admin stats (`stat`, `stats`,
`wait_for_stat`); desired meshes written as YAML (`write_mesh`: services that call each other, an egress, external
services, policies).

Addresses come from an `Addresses` source: the session's `loopback` fixture (tests/conftest.py) for real traffic,
`FixedAddresses` for renders that must read the same every time.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from meshplan.errors import LoadError
from meshplan.model import Desired, ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki


class Addresses(Protocol):
    def ip(self) -> str: ...

    def port(self, ip: str) -> int: ...


class FixedAddresses:
    """Stable addresses for renders (render is pure: nothing binds them): `<network>1`, `<network>2`, ... and ports
    counting up from `first_port` (per address with `per_address=True`, otherwise across all of them)."""

    def __init__(self, network: str = "127.0.9.", first_port: int = 10001, per_address: bool = False) -> None:
        self._network = network
        self._host = 0
        self._first_port = first_port
        self._per_address = per_address
        self._next: dict[str, int] = {}

    def ip(self) -> str:
        self._host += 1
        return f"{self._network}{self._host}"

    def port(self, ip: str) -> int:
        key = ip if self._per_address else ""
        port = self._next.get(key, self._first_port)
        self._next[key] = port + 1
        return port


# --- desired meshes, written as YAML ---------------------------------------------------------------------------


# The mesh `default`, with mTLS from a builtin CA.
MESH = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n"


@dataclass(frozen=True)
class Service:
    """A dataplane (`instance`, by default named after the service) with one inbound of `name`, and an outbound to
    each of `calls` (services, or `mes:<name>` for an external service, through the egress)."""

    name: str
    protocol: str = "http"
    tags: dict[str, str] = field(default_factory=dict)
    calls: tuple[str, ...] = ()
    instance: str | None = None


@dataclass
class MeshFiles:
    """A desired directory written by `write_mesh`, and where its proxies and their outbounds listen."""

    root: Path
    outbound: dict[tuple[str, str], str] = field(default_factory=dict)  # (client, target) -> http://ip:port
    admin: dict[str, str] = field(default_factory=dict)  # proxy name -> admin URL
    address: dict[str, str] = field(default_factory=dict)  # proxy name -> its address
    inbound: dict[str, str] = field(default_factory=dict)  # dataplane name -> ip:port of its inbound
    endpoints: dict[str, list[str]] = field(default_factory=dict)  # external service -> ip:port of each endpoint

    def url(self, client: str, target: str, path: str = "/") -> str:
        return self.outbound[(client, target)] + path

    def write(self, files: dict[str, str]) -> Path:
        """Write (or overwrite) these files into the directory, as they are; returns the directory."""
        for name, text in files.items():
            (self.root / name).write_text(text)
        return self.root

    def write_policies(self, text: str) -> None:
        (self.root / "policies.yaml").write_text(textwrap.dedent(text).lstrip("\n"))

    def load(self) -> Desired:
        return load_and_parse(self.root)

    def render(self) -> list[ProxyConfig]:
        return render_all(self.load())


def web_calling(http: tuple[str, ...] = ("backend",), tcp: tuple[str, ...] = (), grpc: tuple[str, ...] = (),
                externals: tuple[str, ...] = ()) -> list[Service]:
    """One instance (`<service>-1`) of each service, and `web` (HTTP) calling each of them and each external service."""
    called = [Service(name, protocol, instance=f"{name}-1") for protocol, names in
              (("http", http), ("tcp", tcp), ("grpc", grpc)) for name in names]  # fmt: skip
    return [*called, Service("web", calls=tuple(s.name for s in called) + tuple(f"mes:{e}" for e in externals))]


def write_mesh(
    root: Path,
    addresses: Addresses,
    services: list[Service],
    *,
    externals: dict[str, str] | None = None,  # name -> protocol
    policies: str = "",
    forbid_external: bool = False,
    external_endpoints: int = 1,
) -> MeshFiles:
    """A mesh with mTLS (mesh.yaml), the services' dataplanes (dataplanes.yaml), an egress with the external services
    (external.yaml; each with `external_endpoints` endpoints on an address of its own) and, if given, policies
    (policies.yaml) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    files = MeshFiles(root)
    forbid = "true" if forbid_external else "false"
    routing = f"routing:\n  zoneEgress: true\n  defaultForbidMeshExternalServiceAccess: {forbid}\n"
    (root / "mesh.yaml").write_text(MESH + routing)
    docs = []
    for service in services:
        name = service.instance or service.name
        ip = addresses.ip()
        admin, inbound, app = addresses.port(ip), addresses.port(ip), addresses.port(ip)
        files.admin[name], files.address[name], files.inbound[name] = f"http://{ip}:{admin}", ip, f"{ip}:{inbound}"
        tags = {"kuma.io/service": service.name, "kuma.io/protocol": service.protocol, **service.tags}
        tag_lines = "".join(f"\n            {k}: {v}" for k, v in tags.items())
        outbounds = ""
        for target in service.calls:
            port = addresses.port(ip)
            files.outbound[(name, target)] = f"http://{ip}:{port}"
            if target.startswith("mes:"):
                ref = f"backendRef:\n          kind: MeshExternalService\n          name: {target[4:]}"
            else:
                ref = f"tags:\n          kuma.io/service: {target}"
            outbounds += f"\n    - address: {ip}\n      port: {port}\n      {ref}"
        docs.append(
            f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n"
            f"  admin:\n    port: {admin}\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n"
            f"      tags:{tag_lines}\n" + (f"  outbound:{outbounds}\n" if outbounds else "")
        )
    (root / "dataplanes.yaml").write_text("---\n".join(docs))
    if externals:
        ip = addresses.ip()
        port, admin = addresses.port(ip), addresses.port(ip)
        files.admin["egress"], files.address["egress"] = f"http://{ip}:{admin}", ip
        docs = [f"type: ZoneEgress\nname: egress\nnetworking:\n  address: {ip}\n  port: {port}\n  admin:\n    port: {admin}\n"]
        for name, protocol in externals.items():
            ext_ip = addresses.ip()
            files.endpoints[name] = [f"{ext_ip}:{addresses.port(ext_ip)}" for _ in range(external_endpoints)]
            endpoints = "".join(f"    - address: {ext_ip}\n      port: {e.rpartition(':')[2]}\n" for e in files.endpoints[name])
            docs.append(
                f"type: MeshExternalService\nmesh: default\nname: {name}\nspec:\n  match:\n    type: HostnameGenerator\n"
                f"    port: 80\n    protocol: {protocol}\n  endpoints:\n{endpoints}"
            )
        (root / "external.yaml").write_text("---\n".join(docs))
    if policies:
        (root / "policies.yaml").write_text(textwrap.dedent(policies))
    return files


# --- validation -------------------------------------------------------------------------------------------------


def violations(root: Path) -> list[str]:
    """What `meshplan validate` reports for the desired directory `root` (one `file:line: path: message` per
    violation, file names relative to `root`); [] when it is valid. Nothing is checked twice or added."""
    try:
        load_and_parse(root)
    except LoadError as e:
        return [str(v).removeprefix(f"{root}/") for v in e.violations]
    return []


# --- a sandbox that is always brought down ----------------------------------------------------------------------


def pid_running(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for this (parent) process to reap it."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _processes_under(directory: Path) -> list[int]:
    """PIDs whose working directory or command line lies in `directory`: what a sandbox there could have started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        mine = (cwd + "/").startswith(f"{directory}/") or str(directory) in cmdline
        if mine and pid_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def bring_down(state: Path) -> None:
    """Bring the sandbox under `state` down; then nothing it recorded or started under `state` may still run
    (whatever does is killed, and the caller fails)."""
    recorded = [p.pid for p in sandbox.status(state)] if (state / sandbox.SANDBOX_FILE).exists() else []
    try:
        sandbox.down(state)
    finally:
        leaked = sorted({pid for pid in recorded if pid_running(pid)} | set(_processes_under(state)))
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert not leaked, f"processes left running after the test: {leaked}"


@contextmanager
def running_sandbox(desired: Desired, state: Path) -> Iterator[list[ProxyConfig]]:
    """The desired mesh on real Envoys (and demo apps) on loopback, with certificates under `state`; brought down
    afterwards however the block ended (`bring_down`)."""
    state.mkdir(parents=True, exist_ok=True)
    pki.ensure(desired, state)
    proxies = render_all(desired)
    try:
        sandbox.up(desired, proxies, state)
        yield proxies
    finally:
        bring_down(state)


# --- Envoy's admin stats ----------------------------------------------------------------------------------------


def stats(client: httpx.Client, admin_url: str, pattern: str) -> dict[str, int]:
    """Every counter and gauge of an Envoy whose name matches the regex `pattern` (`/stats?filter=`)."""
    answer = client.get(f"{admin_url}/stats", params={"format": "json", "filter": pattern})
    answer.raise_for_status()
    return {s["name"]: int(s["value"]) for s in answer.json()["stats"] if "name" in s and "value" in s}


def stat(client: httpx.Client, admin_url: str, name: str) -> int:
    """One counter or gauge of an Envoy (0 when Envoy has not created it yet). Envoy writes the colons of resource
    names (`mes:default:httpbin`) as `_`; either spelling may be asked for."""
    name = name.replace(":", "_")
    escaped = "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in name)
    return stats(client, admin_url, f"^{escaped}$").get(name, 0)


def wait_for_stat(client: httpx.Client, admin_url: str, name: str, at_least: int, timeout: float = 3.0) -> int:
    """Envoy counts some things shortly after answering (mirrors, overflows): poll, boundedly, until the counter
    reaches `at_least`; returns the last value read."""
    deadline = time.monotonic() + timeout
    value = stat(client, admin_url, name)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        value = stat(client, admin_url, name)
    return value


def split_violation(reported: str) -> tuple[str, int, str, str]:
    """One line of `violations()` as (file, line, path, message)."""
    where, path, message = reported.split(": ", 2)
    file, _, line = where.rpartition(":")
    return file, int(line), path, message
