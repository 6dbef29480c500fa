"""A small desired mesh for the inbound ("from") policy tests: client services, servers, an egress, external
services, written as YAML (universal form) on the addresses an allocator hands out.

Renders use `FixedAddresses(first_port=20001)` (tests/builders.py: stable names and ports); traffic tests use the
session's `loopback` fixture, so that two runs never collide.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from meshplan.model import Desired
from meshplan.validate.resources import load_and_parse
from tests.builders import Addresses


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


def load(files: MeshFiles) -> Desired:
    return load_and_parse(files.root)
