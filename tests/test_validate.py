"""Bad input: every problem reported as file:line: path: message, exit 1, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.errors import LoadError
from meshplan.validate.resources import load_and_parse

BASE = {
    "mesh.yaml": """
        type: Mesh
        name: default
        mtls:
          enabledBackend: ca-1
          backends:
            - name: ca-1
              type: builtin
        """,
    "web.yaml": """
        type: Dataplane
        mesh: default
        name: web
        networking:
          address: 127.0.5.1
          inbound:
            - port: 8080
              servicePort: 18080
              tags:
                kuma.io/service: web
                kuma.io/protocol: http
          outbound:
            - port: 10001
              tags:
                kuma.io/service: backend
        """,
    "backend.yaml": """
        type: Dataplane
        mesh: default
        name: backend
        networking:
          address: 127.0.5.2
          inbound:
            - port: 8080
              servicePort: 18080
              tags:
                kuma.io/service: backend
        """,
    "egress.yaml": """
        type: ZoneEgress
        name: egress
        networking:
          address: 127.0.5.10
          port: 10002
        """,
    "external.yaml": """
        type: MeshExternalService
        mesh: default
        name: httpbin
        spec:
          match:
            port: 80
            protocol: http
          endpoints:
            - address: 127.0.6.1
              port: 18080
        """,
}


def write(root: Path, files: dict[str, str | None]) -> None:
    for name, text in {**BASE, **files}.items():
        if text is not None:
            (root / name).write_text(textwrap.dedent(text).lstrip("\n"))


POLICY_HEAD = """
    type: {kind}
    mesh: default
    name: p1
    spec:
"""

# (id, files replacing or adding to BASE, expected lines: "file:line: path: message fragment")
CASES: list[tuple[str, dict[str, str | None], list[str]]] = [
    ("unknown kind", {"p.yaml": "type: MeshTimeOut\nname: t\nspec: {}\n"}, ["p.yaml:1: type: unknown kind 'MeshTimeOut'"]),
    ("duplicate name", {"p.yaml": "type: MeshTimeout\nname: t\nspec: {}\n---\ntype: MeshTimeout\nname: t\nspec: {}\n"},
     ["p.yaml:5: duplicate MeshTimeout 't' in mesh 'default': first defined at "]),
    ("no service tag", {"backend.yaml": BASE["backend.yaml"].replace("kuma.io/service: backend", "app: backend")},
     ["backend.yaml:9: networking.inbound[0].tags: an inbound needs a `kuma.io/service` tag"]),
    ("port twice", {"web.yaml": BASE["web.yaml"].replace("port: 10001", "port: 8080\n              address: 127.0.5.1")},
     ["web.yaml:13: networking.outbound[0].port: port 8080 on 127.0.5.1 is used twice on this proxy: already by inbound[0]"]),
    ("app port twice", {"web.yaml": BASE["web.yaml"].replace("port: 10001", "port: 18080")},
     ["web.yaml:13: networking.outbound[0].port: port 18080 on 127.0.0.1 is used twice"]),
    ("outbound to missing service", {"web.yaml": BASE["web.yaml"].replace("kuma.io/service: backend", "kuma.io/service: nope")},
     ["web.yaml:13: networking.outbound[0]: no Dataplane in mesh 'default' has an inbound for service 'nope'"]),
    ("outbound to missing external", {"web.yaml": BASE["web.yaml"] + """
            - port: 10002
              backendRef:
                kind: MeshExternalService
                name: nope
        """}, ["web.yaml:20: networking.outbound[1].backendRef.name: no MeshExternalService 'nope'"]),
    ("name escapes", {"p.yaml": "type: MeshTimeout\nname: ../../etc\nspec: {}\n"},
     ["p.yaml:2: name: name '../../etc' could escape a directory"]),
    ("proxy name escapes", {"backend.yaml": BASE["backend.yaml"].replace("name: backend", "name: a/b")},
     ["backend.yaml:3: name: name 'a/b' could escape a directory"]),
    ("external without proxyType", {"p.yaml": POLICY_HEAD.format(kind="MeshTimeout") + """
          targetRef:
            kind: Mesh
          to:
            - targetRef:
                kind: MeshExternalService
                name: httpbin
              default:
                connectionTimeout: 2s
        """}, ["p.yaml:9: spec.to[0].targetRef: a policy that references a MeshExternalService must set proxyType"]),
    ("external without mtls", {"mesh.yaml": "type: Mesh\nname: default\n"},
     ["external.yaml:4: spec: mesh 'default' has no mTLS: external services go through the ZoneEgress, which needs mesh mTLS"]),
    ("external without egress", {"egress.yaml": None},
     ["external.yaml:4: spec: external services go through a ZoneEgress, and there is none"]),
    ("retry on egress", {"p.yaml": POLICY_HEAD.format(kind="MeshRetry") + """
          targetRef:
            kind: Mesh
            proxyType: ["Egress"]
          to:
            - targetRef:
                kind: MeshExternalService
                name: httpbin
              default:
                http:
                  numRetries: 3
        """}, ["p.yaml:10: spec.to[0].targetRef: MeshRetry to a MeshExternalService is not on the egress; "
               "the placement table says MeshRetry for a MeshExternalService is implemented on: Sidecar (to)"]),
    ("circuit breaker on sidecar", {"p.yaml": POLICY_HEAD.format(kind="MeshCircuitBreaker") + """
          targetRef:
            kind: Mesh
            proxyType: ["sidecar"]
          to:
            - targetRef:
                kind: MeshExternalService
                name: httpbin
              default:
                connectionPool: {}
        """}, ['p.yaml:10: spec.to[0].targetRef: MeshCircuitBreaker to a MeshExternalService is not on the sidecar; '
               'the placement table says MeshCircuitBreaker for a MeshExternalService is implemented on: Egress (to + proxyType: ["egress"])']),
    ("permission to external via to", {"p.yaml": POLICY_HEAD.format(kind="MeshTrafficPermission") + """
          targetRef:
            kind: Mesh
            proxyType: ["egress"]
          to:
            - targetRef:
                kind: MeshExternalService
                name: httpbin
              default:
                action: Allow
        """}, ["p.yaml:9: spec.to: MeshTrafficPermission does not support `to`: use `from`"]),
    ("timeout on external inbound", {"p.yaml": POLICY_HEAD.format(kind="MeshRetry") + """
          targetRef:
            kind: MeshExternalService
            name: httpbin
            proxyType: ["egress"]
        """}, ['p.yaml:6: spec.targetRef: targetRef kind MeshExternalService selects the egress\'s inbound: '
               'the placement table says MeshRetry for a MeshExternalService is implemented on: Sidecar (to)']),
    ("trace for external", {"p.yaml": POLICY_HEAD.format(kind="MeshTrace") + """
          targetRef:
            kind: MeshExternalService
            name: httpbin
            proxyType: ["egress"]
        """}, ["p.yaml:6: spec.targetRef: targetRef kind MeshExternalService selects the egress's inbound: "
               "the placement table says MeshTrace for a MeshExternalService is implemented on: Out of scope (single item)"]),
    ("circuit breaker from", {"p.yaml": POLICY_HEAD.format(kind="MeshCircuitBreaker") + """
          targetRef:
            kind: Mesh
          from:
            - targetRef:
                kind: Mesh
              default: {}
        """}, ["p.yaml:8: spec.from: MeshCircuitBreaker does not support `from`: use `to` (the seeds make it outbound-only)"]),
    ("retry from", {"p.yaml": POLICY_HEAD.format(kind="MeshRetry") + """
          from:
            - targetRef:
                kind: Mesh
              default: {}
        """}, ["p.yaml:6: spec.from: MeshRetry does not support `from`"]),
    ("malformed yaml", {"p.yaml": "type: MeshTimeout\nname: [t\nspec: {}\n"}, ["p.yaml:3: malformed YAML"]),
    ("tab yaml", {"p.yaml": "type: MeshTimeout\n\tname: t\n"}, ["p.yaml:2: malformed YAML"]),
    ("empty file", {"p.yaml": "# nothing here\n"}, ["p.yaml:1: empty file"]),
    ("wrong type", {"backend.yaml": BASE["backend.yaml"].replace("port: 8080", "port: eighty")},
     ["backend.yaml:7: networking.inbound[0].port: must be an integer, got a string"]),
    ("boolean port", {"backend.yaml": BASE["backend.yaml"].replace("port: 8080", "port: true")},
     ["backend.yaml:7: networking.inbound[0].port: must be an integer, got a boolean"]),
    ("port out of range", {"backend.yaml": BASE["backend.yaml"].replace("servicePort: 18080", "servicePort: 70000")},
     ["backend.yaml:8: networking.inbound[0].servicePort: must be a port between 1 and 65535, got 70000"]),
    ("missing address", {"backend.yaml": BASE["backend.yaml"].replace("address: 127.0.5.2", "admin: {port: 9901}")},
     ["backend.yaml:4: networking: `address` is required"]),
    ("bad address", {"backend.yaml": BASE["backend.yaml"].replace("127.0.5.2", "backend.local")},
     ["backend.yaml:5: networking.address: must be an IP address, got 'backend.local'"]),
    ("missing name", {"p.yaml": "type: MeshTimeout\nspec: {}\n"}, ["p.yaml:1: name: missing required field"]),
    ("document is a list", {"p.yaml": "- type: MeshTimeout\n"}, ["p.yaml:1: a resource must be a mapping, got a list"]),
    ("no type", {"p.yaml": "name: t\n"}, ["p.yaml:1: missing `type` (universal form) or `apiVersion`/`kind`"]),
    ("kubernetes api version", {"p.yaml": "apiVersion: v1\nkind: MeshTimeout\nmetadata:\n  name: t\nspec: {}\n"},
     ["p.yaml:1: apiVersion: unsupported API version 'v1'"]),
    ("kubernetes no metadata name", {"p.yaml": "apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata: {}\n"},
     ["p.yaml:3: metadata.name: missing required field"]),
    ("unknown targetRef kind", {"p.yaml": POLICY_HEAD.format(kind="MeshTimeout") + """
          targetRef:
            kind: Service
        """}, ["p.yaml:7: spec.targetRef.kind: unknown targetRef kind 'Service'"]),
    ("unknown proxy type", {"p.yaml": POLICY_HEAD.format(kind="MeshTimeout") + """
          targetRef:
            kind: Mesh
            proxyType: [Ingress]
        """}, ["p.yaml:8: spec.targetRef.proxyType[0]: unknown proxy type 'Ingress'"]),
    ("subset without tags", {"p.yaml": POLICY_HEAD.format(kind="MeshTimeout") + """
          targetRef:
            kind: MeshSubset
        """}, ["p.yaml:6: spec.targetRef: `tags` is required"]),
    ("duplicate key", {"p.yaml": "type: MeshTimeout\nname: t\nname: u\nspec: {}\n"}, ["p.yaml:3: name: duplicate key"]),
    ("undefined mesh", {"p.yaml": "type: MeshTimeout\nmesh: other\nname: t\n"
                                         "spec: {to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 1m}}]}\n"},
     ["p.yaml:2: mesh: mesh 'other' is not defined: add a Mesh resource named 'other'"]),
    ("missing CA backend", {"mesh.yaml": BASE["mesh.yaml"].replace("enabledBackend: ca-1", "enabledBackend: ca-2")},
     ["mesh.yaml:4: mtls.enabledBackend: no backend named 'ca-2' in mtls.backends"]),
    ("proxy name reused", {"egress.yaml": BASE["egress.yaml"].replace("name: egress", "name: web")},
     ["web.yaml:1: proxy name 'web' is already used by ZoneEgress web"]),
    ("unknown protocol", {"backend.yaml": BASE["backend.yaml"].replace("kuma.io/service: backend", "kuma.io/service: backend\n                kuma.io/protocol: udp")},
     ["backend.yaml:11: networking.inbound[0].tags.kuma.io/protocol: unknown protocol 'udp'"]),
    ("tag value not URI-safe", {"backend.yaml": BASE["backend.yaml"].replace("kuma.io/service: backend", "kuma.io/service: backend\n                team: a b")},
     ["backend.yaml:11: networking.inbound[0].tags.team: tag value 'a b' may hold only letters, digits"]),
    ("unknown top-level field", {"backend.yaml": BASE["backend.yaml"] + "selector: {}\n"},
     ["backend.yaml:11: selector: unknown field (expected one of: networking, labels)"]),
    ("unknown field", {"egress.yaml": "type: ZoneEgress\nname: egress\nnetworking:\n  address: 127.0.5.10\n  port: 10002\n  prot: 1\n"},
     ["egress.yaml:6: networking.prot: unknown field"]),
    ("missing default", {"p.yaml": POLICY_HEAD.format(kind="MeshTimeout") + """
          to:
            - targetRef:
                kind: Mesh
        """}, ["p.yaml:7: spec.to[0]: `default` is required"]),
]


@pytest.mark.parametrize("files, expected", [pytest.param(f, e, id=i) for i, f, e in CASES])
def test_bad_input_is_reported_with_file_line_and_path(tmp_path: Path, files: dict[str, str | None], expected: list[str]) -> None:
    write(tmp_path, files)
    state = tmp_path / "state"
    result = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for line in expected:
        assert f"{tmp_path}/{line}" in result.stderr or line in result.stderr, result.stderr
    assert not state.exists()


def test_at_least_25_distinct_bad_inputs() -> None:
    assert len(CASES) >= 25


def test_base_is_valid(tmp_path: Path) -> None:
    write(tmp_path, {})
    desired = load_and_parse(tmp_path)
    assert [dp.name for dp in desired.dataplanes] == ["backend", "web"]


def test_every_violation_in_one_run(tmp_path: Path) -> None:
    write(tmp_path, {
        "backend.yaml": BASE["backend.yaml"].replace("port: 8080", "port: 0"),
        "p.yaml": "type: MeshTimeOut\nname: t\n---\ntype: MeshRetry\nname: ../x\n",
        "egress.yaml": BASE["egress.yaml"].replace("10002", "'x'"),
    })
    with pytest.raises(LoadError) as caught:
        load_and_parse(tmp_path)
    messages = [str(v) for v in caught.value.violations]
    assert len(messages) >= 4, messages
    assert {Path(v.source.file).name for v in caught.value.violations} >= {"backend.yaml", "p.yaml", "egress.yaml"}


def test_no_traceback_from_the_installed_command(tmp_path: Path) -> None:
    write(tmp_path, {"p.yaml": "type: MeshTimeout\nname: [\n"})
    proc = subprocess.run([sys.executable, "-m", "meshplan.cli", "validate", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "p.yaml:" in proc.stderr and "malformed YAML" in proc.stderr
    assert proc.stdout == ""


def test_missing_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "no such directory" in result.stderr
