"""A small mesh for the tests of one policy kind: written as YAML, rendered, validated and run on real Envoys.

`web` (HTTP) calls each listed service through an outbound of its own, and each external service through the egress.
Every service runs one instance (`<service>-1`) with the sandbox's demo app behind it. Addresses come from an
`Addresses` source: the session's `loopback` fixture for traffic, `FixedAddresses(per_address=True)` for renders (tests/builders.py).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from meshplan.model import ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import Addresses

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

    def write(self, files: dict[str, str]) -> Path:
        """Write (or overwrite) these files into the mesh's directory; returns the directory."""
        for name, text in files.items():
            (self.root / name).write_text(text)
        return self.root

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
