"""What validate accepts works later: every name fits the certificates and TLS server names it becomes (a proxy's
name is its certificate's common name, at most 64 characters), and no name or header name may end in a newline."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.envoy import names
from meshplan.validate.infra_rules import MAX_EXTERNAL_NAME, MAX_SNI
from meshplan.validate.resources import MAX_MESH_NAME, MAX_PROXY_NAME
from tests.test_validate import BASE, write


def validate(directory: Path, *options: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", *options, str(directory)])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


def renamed(file: str, old: str, new: str) -> dict[str, str | None]:
    assert old in BASE[file]
    return {file: BASE[file].replace(old, new)}


LONGEST_MESH = "m" * MAX_MESH_NAME
LONGEST_PROXY = "p" * MAX_PROXY_NAME
LONGEST_SERVICE = "s" * (MAX_SNI - len(names.service_sni(LONGEST_MESH, "")))
LONGEST_EXTERNAL = "e" * MAX_EXTERNAL_NAME  # Kuma's limit; its server name, <name>.<mesh>.mes, then fits in 255


def longest_names(root: Path) -> None:
    """BASE with every name as long as it may be: the mesh, a proxy, a service and an external service."""
    files = {name: text.replace("mesh: default", f"mesh: {LONGEST_MESH}") for name, text in BASE.items()}
    for file, old, new in [
        ("mesh.yaml", "name: default", f"name: {LONGEST_MESH}"),
        ("web.yaml", "name: web", f"name: {LONGEST_PROXY}"),
        ("web.yaml", "kuma.io/service: backend", f"kuma.io/service: {LONGEST_SERVICE}"),
        ("backend.yaml", "kuma.io/service: backend", f"kuma.io/service: {LONGEST_SERVICE}"),
        ("external.yaml", "name: httpbin", f"name: {LONGEST_EXTERNAL}"),
    ]:
        files[file] = files[file].replace(old, new)
    write(root, dict(files))


def test_the_longest_names_validate_pass_envoy_and_make_certificates(tmp_path: Path) -> None:
    longest_names(tmp_path)
    code, stderr = validate(tmp_path, "--envoy")
    assert code == 0, stderr
    assert f"{LONGEST_PROXY} [sidecar]: Envoy accepts the configuration" in stderr


@pytest.mark.parametrize("file, old, new, expected", [
    ("web.yaml", "name: web", f"name: {LONGEST_PROXY}x",
     f"web.yaml:3: name: a proxy name may have at most {MAX_PROXY_NAME} characters"),
    ("egress.yaml", "name: egress", f"name: {'e' * 253}",
     f"egress.yaml:2: name: a proxy name may have at most {MAX_PROXY_NAME} characters"),
    ("mesh.yaml", "name: default", f"name: {LONGEST_MESH}x",
     f"mesh.yaml:2: name: a mesh name may have at most {MAX_MESH_NAME} characters"),
    ("backend.yaml", "kuma.io/service: backend", f"kuma.io/service: {'s' * 250}",
     "backend.yaml:10: networking.inbound[0].tags.kuma.io/service: too long: the TLS server name of this service"),
    ("external.yaml", "name: httpbin", f"name: {LONGEST_EXTERNAL}x",
     f"external.yaml:3: name: must not be longer than {MAX_EXTERNAL_NAME} characters (Kuma's limit)"),
], ids=["proxy", "egress", "mesh", "service", "external service"])
def test_names_too_long_for_a_certificate_or_a_server_name(tmp_path: Path, file: str, old: str, new: str,
                                                           expected: str) -> None:
    write(tmp_path, renamed(file, old, new))
    code, stderr = validate(tmp_path)
    assert code == 1
    assert f"{tmp_path}/{expected}" in stderr, stderr


def test_a_too_long_proxy_name_in_kubernetes_form_points_at_metadata_name(tmp_path: Path) -> None:
    write(tmp_path, {"egress.yaml": None, "external.yaml": None, "k.yaml": textwrap.dedent(f"""\
        apiVersion: kuma.io/v1alpha1
        kind: ZoneEgress
        metadata:
          name: {"z" * 65}
        spec:
          networking: {{address: 127.0.5.10, port: 10002}}
        """)})
    code, stderr = validate(tmp_path)
    assert code == 1 and f"{tmp_path}/k.yaml:4: metadata.name: a proxy name may have at most 64" in stderr, stderr


@pytest.mark.parametrize("file, old, new, expected", [
    ("web.yaml", "name: web", 'name: "web\\n"', "web.yaml:3: name: name 'web\\n' could escape a directory"),
    ("mesh.yaml", "name: default", 'name: "default\\n"', "mesh.yaml:2: name: name 'default\\n' could escape"),
    ("backend.yaml", "kuma.io/service: backend", 'kuma.io/service: "backend\\n"',
     "backend.yaml:10: networking.inbound[0].tags.kuma.io/service: tag value 'backend\\n' may hold only"),
], ids=["proxy", "mesh", "tag value"])
def test_a_name_ending_in_a_newline_is_refused(tmp_path: Path, file: str, old: str, new: str, expected: str) -> None:
    write(tmp_path, renamed(file, old, new))
    code, stderr = validate(tmp_path)
    assert code == 1
    assert f"{tmp_path}/{expected}" in stderr, stderr


@pytest.mark.parametrize("policy, path", [
    ("MeshHealthCheck", "spec.to[0].default.http.requestHeadersToAdd.set[0].name"),
    ("MeshRetry", "spec.to[0].default.http.retriableRequestHeaders[0].name"),
])
def test_a_header_name_ending_in_a_newline_is_refused(tmp_path: Path, policy: str, path: str) -> None:
    default = {
        "MeshHealthCheck": {"interval": "5s", "timeout": "1s", "unhealthyThreshold": 1, "healthyThreshold": 1,
                            "http": {"requestHeadersToAdd": {"set": [{"name": "x-a\n", "value": "b"}]}}},
        "MeshRetry": {"http": {"retriableRequestHeaders": [{"name": "x-a\n", "value": "b"}]}},
    }[policy]
    document = {"type": policy, "name": "p", "spec": {"targetRef": {"kind": "Mesh"}, "to": [
        {"targetRef": {"kind": "MeshService", "name": "backend"}, "default": default}]}}
    write(tmp_path, {"p.json.yaml": json.dumps(document)})
    code, stderr = validate(tmp_path)
    assert code == 1 and f": {path}: " in stderr, stderr
