"""A small mesh for the tests of one policy kind: written as YAML, rendered, validated and run on real Envoys.

`web` (HTTP) calls each listed service through an outbound of its own, and each external service through the egress.
Every service runs one instance (`<service>-1`) with the sandbox's demo app behind it. Addresses come from an
`Addresses` source: the session's `loopback` fixture for traffic, `FixedAddresses` for golden renders.
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
from meshplan.model import ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki

# The header of a policy file in the validation tables: its body (the `default` block) starts on line 11.
POLICY_HEAD = """\
type: {kind}
mesh: default
name: p
spec:
  targetRef:
    kind: Mesh
  {section}:
    - targetRef:
        kind: Mesh
      default:
"""
BODY_LINE = 11
MARK = "#<"  # ends the line a violation must point at


class Addresses(Protocol):
    def ip(self) -> str: ...

    def port(self, ip: str) -> int: ...


class FixedAddresses:
    """Stable addresses for golden renders (render is pure: nothing binds them)."""

    def __init__(self) -> None:
        self._host = 0
        self._ports: dict[str, int] = {}

    def ip(self) -> str:
        self._host += 1
        return f"127.0.9.{self._host}"

    def port(self, ip: str) -> int:
        self._ports[ip] = self._ports.get(ip, 10000) + 1
        return self._ports[ip]


@dataclass
class Proxy:
    name: str
    ip: str
    admin_port: int

    @property
    def admin_url(self) -> str:
        return f"http://{self.ip}:{self.admin_port}"


@dataclass
class PolicyMesh:
    root: Path
    proxies: dict[str, Proxy]
    outbounds: dict[str, str] = field(default_factory=dict)  # service or external name -> URL of web's outbound

    def write_policies(self, text: str) -> None:
        (self.root / "policies.yaml").write_text(textwrap.dedent(text).lstrip("\n"))

    def render(self) -> list[ProxyConfig]:
        return render_all(load_and_parse(self.root))


def build_mesh(root: Path, addresses: Addresses, services: tuple[str, ...] = ("backend",),
               tcp_services: tuple[str, ...] = (), grpc_services: tuple[str, ...] = (),
               externals: tuple[str, ...] = ()) -> PolicyMesh:
    """Write the mesh's YAML under `root` (without policies)."""
    root.mkdir(parents=True, exist_ok=True)
    docs = ["type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n"]
    proxies: dict[str, Proxy] = {}

    def dataplane(name: str, service: str, protocol: str, outbounds: str = "") -> Proxy:
        ip = addresses.ip()
        proxy = Proxy(name, ip, addresses.port(ip))
        inbound, app = addresses.port(ip), addresses.port(ip)
        docs.append(
            f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n"
            f"  admin:\n    port: {proxy.admin_port}\n  inbound:\n    - port: {inbound}\n"
            f"      serviceAddress: {ip}\n      servicePort: {app}\n      tags:\n"
            f"        kuma.io/service: {service}\n        kuma.io/protocol: {protocol}\n{outbounds}"
        )
        proxies[name] = proxy
        return proxy

    for service in services:
        dataplane(f"{service}-1", service, "http")
    for service in tcp_services:
        dataplane(f"{service}-1", service, "tcp")
    for service in grpc_services:
        dataplane(f"{service}-1", service, "grpc")
    web_ip = addresses.ip()
    outbound_lines, outbounds = [], {}
    for service in services + tcp_services + grpc_services:
        port = addresses.port(web_ip)
        outbound_lines.append(f"    - address: {web_ip}\n      port: {port}\n      tags:\n        kuma.io/service: {service}\n")
        outbounds[service] = f"http://{web_ip}:{port}"
    for name in externals:
        port = addresses.port(web_ip)
        outbound_lines.append(f"    - address: {web_ip}\n      port: {port}\n      backendRef:\n"
                              f"        kind: MeshExternalService\n        name: {name}\n")
        outbounds[name] = f"http://{web_ip}:{port}"
    web = Proxy("web", web_ip, addresses.port(web_ip))
    inbound, app = addresses.port(web_ip), addresses.port(web_ip)
    docs.append(
        f"type: Dataplane\nmesh: default\nname: web\nnetworking:\n  address: {web_ip}\n"
        f"  admin:\n    port: {web.admin_port}\n  inbound:\n    - port: {inbound}\n"
        f"      serviceAddress: {web_ip}\n      servicePort: {app}\n      tags:\n"
        f"        kuma.io/service: web\n        kuma.io/protocol: http\n"
        + ("  outbound:\n" + "".join(outbound_lines) if outbound_lines else "")
    )
    proxies["web"] = web
    if externals:
        ip = addresses.ip()
        egress = Proxy("egress", ip, addresses.port(ip))
        docs.append(f"type: ZoneEgress\nname: egress\nnetworking:\n  address: {ip}\n  port: {addresses.port(ip)}\n"
                    f"  admin:\n    port: {egress.admin_port}\n")
        proxies["egress"] = egress
        for name in externals:
            ext_ip = addresses.ip()
            docs.append(f"type: MeshExternalService\nmesh: default\nname: {name}\nspec:\n  match:\n    type: HostnameGenerator\n"
                        f"    port: 80\n    protocol: http\n  endpoints:\n    - address: {ext_ip}\n"
                        f"      port: {addresses.port(ext_ip)}\n")
    (root / "mesh.yaml").write_text("---\n".join(docs))
    return PolicyMesh(root, proxies, outbounds)


# --- validation tables ----------------------------------------------------------------------------------------


def policy_file(kind: str, body: str, section: str = "to") -> str:
    """A one-item policy whose `default` is `body` (YAML, any indentation)."""
    lines = textwrap.dedent(body).strip("\n").splitlines()
    return POLICY_HEAD.format(kind=kind, section=section) + "".join(f"        {line}\n" for line in lines)


def marked_line(body: str) -> int:
    """The file line of the body line that ends with MARK."""
    lines = textwrap.dedent(body).strip("\n").splitlines()
    found = [i for i, line in enumerate(lines) if line.rstrip().endswith(MARK)]
    assert len(found) == 1, f"mark exactly one line with {MARK!r}"
    return BODY_LINE + found[0]


def violations(root: Path, files: dict[str, str]) -> list[str]:
    """`file:line: path: message` for every violation of the mesh plus these files; [] when it is valid."""
    for name, text in files.items():
        (root / name).write_text(text)
    try:
        load_and_parse(root)
    except LoadError as e:
        return [f"{Path(v.source.file).name}:{v.source.line}: {v.path}: {v.message}" for v in e.violations]
    return []


# --- real traffic ---------------------------------------------------------------------------------------------


@contextmanager
def running(mesh: PolicyMesh, state: Path) -> Iterator[list[ProxyConfig]]:
    """A sandbox of the mesh; stopped afterwards however the tests ended, and nothing it started left running."""
    desired = load_and_parse(mesh.root)
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
            leaked = [pid for pid in recorded if _running(pid)]
            for pid in leaked:
                os.kill(pid, signal.SIGKILL)
            assert not leaked, f"processes left running after the tests: {leaked}"


def _running(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def stat(client: httpx.Client, proxy: Proxy, name: str) -> int:
    """One counter or gauge from a proxy's admin /stats (0 when Envoy has not created it yet)."""
    name = name.replace(":", "_")  # Envoy writes the colons of resource names (`mes:default:httpbin`) as `_`
    answer = client.get(f"{proxy.admin_url}/stats", params={"format": "json", "filter": f"^{_escape(name)}$"})
    answer.raise_for_status()
    values = [s["value"] for s in answer.json()["stats"] if s.get("name") == name]
    return int(values[0]) if values else 0


def wait_for_stat(client: httpx.Client, proxy: Proxy, name: str, at_least: int, timeout: float = 3.0) -> int:
    """Envoy flushes some stats shortly after the request: poll, boundedly, until the counter reaches `at_least`."""
    deadline = time.monotonic() + timeout
    value = stat(client, proxy, name)
    for _ in range(int(timeout / 0.05)):
        if value >= at_least or time.monotonic() > deadline:
            break
        time.sleep(0.05)
        value = stat(client, proxy, name)
    return value


def _escape(name: str) -> str:
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in name)
