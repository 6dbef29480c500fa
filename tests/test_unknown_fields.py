"""No field is accepted and then ignored: at every mapping of every resource the examples and the tests write, an
unknown key is a violation naming it, and each field Kuma has but meshplan does not implement is refused by name.

The only mappings whose keys are free are listed in FREE_FORM, each with its reason.
"""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.errors import Violation
from meshplan.load.resources import PathKey, format_path, load_text
from meshplan.load.yaml_documents import Budget
from meshplan.validate import resources as validate_module
from tests.fixture_corpus import resources
from tests.test_validate import BASE, write

KEY = "zzUnknownField"

# Mappings whose keys are data, not fields: (the last step of the path, why).
FREE_FORM = {
    "tags": "tags are the workload's own labels (kuma.io/service and any other): every key is a tag",
    "labels": "Kubernetes labels may hold anything; meshplan reads kuma.io/mesh among them",
    "annotations": "Kubernetes annotations may hold anything and mean nothing to meshplan",
    "value": "a MeshProxyPatch JSON patch's value is the data it writes into an Envoy resource, which is checked "
             "as that resource once patched",
}

# Mappings no example or test writes, so that each is walked too.
EXTRA = [
    yaml.safe_load(textwrap.dedent("""
        type: MeshExternalService
        name: secure
        spec:
          match: {type: HostnameGenerator, port: 443, protocol: http}
          endpoints: [{address: httpbin.org, port: 443, priority: 1}]
          tls:
            enabled: true
            allowRenegotiation: false
            version: {min: TLS12, max: TLS13}
            verification:
              mode: Secured
              serverName: httpbin.org
              subjectAltNames: [{type: Exact, value: httpbin.org}]
              caCert: {file: /etc/ssl/certs/ca-certificates.crt}
        """)),
    yaml.safe_load("type: Mesh\nname: other\nmtls: {enabledBackend: ca, backends: [{name: ca, type: builtin}]}\n"
                   "routing: {zoneEgress: true, defaultForbidMeshExternalServiceAccess: true}\n"),
    yaml.safe_load("type: MeshTrace\nname: trace\nspec: {targetRef: {kind: Mesh}, default: {backends: [{zipkin: {url: 'http://z:9411/api/v2/spans'}}]}}\n"),
    yaml.safe_load("type: MeshTrace\nname: tags\nspec: {default: {backends: [], sampling: {overall: 1},\n"
                   "  tags: [{name: a, header: {name: h}}]}}\n"),
    yaml.safe_load("type: MeshMetric\nname: metrics\nspec: {default: {sidecar: {profiles: {appendProfiles: [{name: All}]}},\n"
                   "  backends: [{prometheus: {tls: {mode: Disabled}}}]}}\n"),
]

# Resources that are valid in part of the corpus only, away from their mesh (tests.policy_tables's HEAD lacks a body).
# The unknown-field check runs on every other one, and there must be many.
MIN_RESOURCES = 150


def _mappings(value: Any, path: PathKey = ()) -> Iterator[PathKey]:
    if isinstance(value, dict):
        yield path
        for key, item in value.items():
            yield from _mappings(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _mappings(item, path + (i,))


def _free_form(document: dict[str, Any], path: PathKey) -> bool:
    # A MeshAccessLog OpenTelemetry body's kvlist `value` is an OTLP AnyValue, whose keys are fields.
    return bool(path) and path[-1] in FREE_FORM and "body" not in path


def _violations(document: dict[str, Any]) -> list[Violation]:
    raws, violations = load_text(yaml.safe_dump(document, sort_keys=False), "resource.yaml", Budget())
    return violations + validate_module.parse(raws)[1]


def _at(document: dict[str, Any], path: PathKey) -> Any:
    for step in path:
        document = document[step]
    return document


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, dict[str, Any]]]:
    """Every resource of the corpus that is valid on its own (references to other resources are not checked)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validate_module, "_check_references", lambda *args: None)
        every = resources() + [("test_unknown_fields.EXTRA", document) for document in EXTRA]
        valid = [(where, document) for where, document in every if not _violations(document)]
    assert len(valid) >= MIN_RESOURCES and all(("test_unknown_fields.EXTRA", d) in valid for d in EXTRA)
    return valid


def refused(directory: Path) -> str:
    """What `meshplan validate` says on stderr of a directory it refuses (exit 1)."""
    result = CliRunner().invoke(app, ["validate", str(directory)])
    assert result.exit_code == 1, result.output
    return result.stderr


def test_an_unknown_key_is_a_violation_at_every_mapping(corpus: list[tuple[str, dict[str, Any]]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate_module, "_check_references", lambda *args: None)
    accepted: list[str] = []
    positions = 0
    kinds: set[str] = set()
    for where, document in corpus:
        for path in _mappings(document):
            if _free_form(document, path):
                continue
            positions += 1
            kinds.add(str(document.get("type") or document.get("kind")))
            mutated = copy.deepcopy(document)
            _at(mutated, path)[KEY] = "x"
            target = format_path(path + (KEY,))
            found = [v for v in _violations(mutated) if v.path == target]
            if not any("unknown field" in v.message for v in found):
                accepted.append(f"{where}: {target}")
    assert accepted == []
    assert positions > 1000 and len(kinds) >= 15, (positions, kinds)


def test_free_form_mappings_accept_any_key(corpus: list[tuple[str, dict[str, Any]]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate_module, "_check_references", lambda *args: None)
    seen: set[str] = set()
    for _, document in corpus:
        for path in _mappings(document):
            if _free_form(document, path):
                seen.add(str(path[-1]))
                mutated = copy.deepcopy(document)
                _at(mutated, path)[KEY] = "x"
                assert _violations(mutated) == []
    assert seen >= {"tags", "labels"}


def test_the_issue_example_names_the_field(tmp_path: Path) -> None:
    admin = "address: 127.0.5.2\n          admin: {prot: 9902}"  # at the indentation of BASE's networking fields
    write(tmp_path, {"backend.yaml": BASE["backend.yaml"].replace("address: 127.0.5.2", admin)})
    stderr = refused(tmp_path)
    assert f"{tmp_path}/backend.yaml:6: networking.admin.prot: unknown field (expected one of: port)" in stderr, stderr


MESH_WITH_EVERYTHING = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
    - {name: ca-1, type: builtin}
routing:
  zoneEgress: true
skipCreatingInitialPolicies: ["*"]
"""

# (where, the text to add under it, the path of the field refused) for fields Kuma has and meshplan would ignore.
UNSUPPORTED = [
    ("mesh.yaml", "logging: {defaultBackend: file}\n", "logging"),
    ("mesh.yaml", "meshServices: {mode: Exclusive}\n", "meshServices"),
    ("mesh.yaml", "networking: {outbound: {passthrough: false}}\n", "networking"),
    ("mesh.yaml", "routing: {localityAwareLoadBalancing: true}\n", "routing.localityAwareLoadBalancing"),
    ("mesh.yaml", "mtls: {skipValidation: true, enabledBackend: ca-1, backends: [{name: ca-1, type: builtin, "
                  "dpCert: {rotation: {expiration: 1d}}}]}\n", "mtls.skipValidation"),
    ("backend.yaml", "  advertisedAddress: 10.0.0.1\n", "networking.advertisedAddress"),
    ("backend.yaml", "  gateway: {type: BUILTIN, tags: {kuma.io/service: gw}}\n", "networking.gateway"),
    ("backend.yaml", "  transparentProxying: {redirectPortInbound: 15006}\n", "networking.transparentProxying"),
    ("egress.yaml", "  advertisedPort: 10003\n", "networking.advertisedPort"),
]


@pytest.mark.parametrize("file, text, path", [pytest.param(f, t, p, id=p) for f, t, p in UNSUPPORTED])
def test_kuma_fields_meshplan_would_ignore_are_refused(tmp_path: Path, file: str, text: str, path: str) -> None:
    if file == "mesh.yaml":  # the text replaces a top-level field of a Mesh that has them all
        document = yaml.safe_load(MESH_WITH_EVERYTHING) | yaml.safe_load(text)
        source = yaml.safe_dump(document, sort_keys=False)
    else:  # the text is added to the last mapping of the file, at its indentation
        source = textwrap.dedent(BASE[file]).lstrip("\n") + text
    write(tmp_path, {file: source})
    stderr = refused(tmp_path)
    assert f": {path}: not supported by meshplan (it would be ignored): remove it" in stderr, stderr


@pytest.mark.parametrize("extra, path, message", [
    # a port of the service, read (tests/test_sections.py); one the service lacks is refused, never dropped
    ("sectionName: http", "spec.to[0].targetRef.sectionName", "names no port of MeshService 'backend'"),
    ("labels: {app: backend}", "spec.to[0].targetRef.labels", "set either `labels` or `name`, not both"),
    # a namespace is read (tests/test_namespaces.py); one that cannot be a namespace is refused, never dropped
    ("namespace: Other", "spec.to[0].targetRef.namespace", "'Other' is not a Kubernetes namespace name"),
])
def test_target_ref_fields_that_would_widen_a_policy_are_refused(tmp_path: Path, extra: str, path: str,
                                                                  message: str) -> None:
    write(tmp_path, {"p.yaml": "type: MeshTimeout\nname: t\nspec:\n  to:\n    - targetRef:\n        kind: MeshService\n"
                               f"        name: backend\n        {extra}\n      default: {{idleTimeout: 5s}}\n"})
    stderr = refused(tmp_path)
    assert f"p.yaml:8: {path}: {message}" in stderr, stderr


@pytest.mark.parametrize("document, path", [
    ("type: MeshTimeout\nname: t\nspec: {}\nlabels: {a: b}\n", "labels"),
    ("apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata: {name: t}\nspec: {}\nstatus: {}\n", "status"),
    ("apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata: {name: t, generateName: t-}\nspec: {}\n",
     "metadata.generateName"),
])
def test_unknown_keys_beside_the_spec_are_violations(tmp_path: Path, document: str, path: str) -> None:
    write(tmp_path, {"p.yaml": document})
    stderr = refused(tmp_path)
    assert f": {path}: unknown field" in stderr, stderr


@pytest.mark.parametrize("extra, section, path", [
    ("labels: {team: dev}", "from", "spec.targetRef.labels"),
    ("namespace: Other", "from", "spec.targetRef.namespace"),  # read where valid (tests/test_namespaces.py)
    ("sectionName: main", "to", "spec.targetRef.sectionName"),
])
def test_a_named_dataplane_target_ref_never_drops_a_narrowing_field(tmp_path: Path, extra: str, section: str,
                                                                     path: str) -> None:
    """Beside `name`, a field that narrows (or moves) what the policy selects is never dropped: dropping `labels` or
    `sectionName` would apply a Deny to every inbound of the dataplane. (sectionName in a `to`-only policy has no
    inbound to pick; Kuma refuses it too.)"""
    kind, action = ("MeshTrafficPermission", "{action: Deny}") if section == "from" else ("MeshTimeout", "{idleTimeout: 5s}")
    write(tmp_path, {"p.yaml": f"type: {kind}\nname: t\nspec:\n  targetRef:\n    kind: Dataplane\n    name: web\n"
                               f"    {extra}\n  {section}:\n    - targetRef: {{kind: Mesh}}\n      default: {action}\n"})
    stderr = refused(tmp_path)
    assert f"p.yaml:7: {path}: " in stderr, stderr
