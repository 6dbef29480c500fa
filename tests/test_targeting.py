"""Kuma's current targeting (2.9+): a top-level `targetRef: {kind: Dataplane}` by name, by labels, with `sectionName`,
or with neither (every dataplane); what each selects, in what order, what is refused at file:line, and that
`explain` and the origins name the selector. Kuma's verdicts (pkg/plugins/policies/core/matchers/dataplane.go,
api/common/v1alpha1/targetref.go, pkg/core/resources/apis/mesh/validators.go at v2.14.3) on our own inputs."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import Loopback

from meshplan.errors import Source
from meshplan.match.explain import explain_proxy, render_text
from meshplan.match.matcher import (
    Destination,
    merge_from,
    merge_to,
    why_not,
    why_not_from,
)
from meshplan.model import SERVICE_TAG, Dataplane, Inbound, TargetRef
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import (
    Addresses,
    MeshFiles,
    Service,
    assert_answered_slowly,
    assert_timed_out,
    running_mesh,
    table_cases,
    violations,
    write_mesh,
)
from tests.test_match import BACKEND, MESH, policy


def inbound(service: str, port: int, name: str = "") -> Inbound:
    return Inbound("10.0.0.1", port, "127.0.0.1", port + 10000, {SERVICE_TAG: service}, name)


def dp(name: str, labels: dict[str, str], *inbounds: Inbound) -> Dataplane:
    return Dataplane(name, "default", "10.0.0.1", 9901, inbounds, (), Source("dp.yaml", 1), labels)


# web-1 has a named inbound (main) and an unnamed one (port 9090); web-2 is labelled differently.
WEB1 = dp("web-1", {"app": "web", "env": "prod"}, inbound("web", 8080, "main"), inbound("web-metrics", 9090))
WEB2 = dp("web-2", {"app": "web", "env": "dev"}, inbound("web", 8080, "main"))
API = dp("api-1", {}, inbound("api", 7070))
ALL = (WEB1, WEB2, API)


def dataplane_ref(name: str | None = None, labels: dict[str, str] | None = None, section: str | None = None) -> TargetRef:
    return TargetRef("Dataplane", name, {}, frozenset(), labels, section)


SELECTION = [
    # case, targetRef, {dataplane: selected inbound ports}
    ("every dataplane (no name, no labels)", dataplane_ref(), {"web-1": [8080, 9090], "web-2": [8080], "api-1": [7070]}),
    ("by name", dataplane_ref("web-1"), {"web-1": [8080, 9090]}),
    ("by labels, all must match", dataplane_ref(labels={"app": "web", "env": "prod"}), {"web-1": [8080, 9090]}),
    ("by one label", dataplane_ref(labels={"app": "web"}), {"web-1": [8080, 9090], "web-2": [8080]}),
    ("by a label no dataplane has", dataplane_ref(labels={"app": "nope"}), {}),
    ("empty labels: every dataplane", dataplane_ref(labels={}), {"web-1": [8080, 9090], "web-2": [8080], "api-1": [7070]}),
    ("sectionName by inbound name", dataplane_ref("web-1", section="main"), {"web-1": [8080]}),
    ("sectionName by port of an unnamed inbound", dataplane_ref("web-1", section="9090"), {"web-1": [9090]}),
    # Kuma: a named inbound answers to its name only, not to its port.
    ("sectionName is not the port of a named inbound", dataplane_ref("web-1", section="8080"), {}),
    ("labels and sectionName", dataplane_ref(labels={"app": "web"}, section="main"), {"web-1": [8080], "web-2": [8080]}),
    ("sectionName on every dataplane", dataplane_ref(section="7070"), {"api-1": [7070]}),
]


@pytest.mark.parametrize("target, expected", table_cases(SELECTION))
def test_which_dataplanes_and_inbounds_a_dataplane_target_ref_selects(target: TargetRef, expected: dict[str, list[int]]) -> None:
    p = policy("p", from_=[(MESH, {"x": 1})], target=target, kind="MeshTrafficPermission")
    found: dict[str, list[int]] = {}
    for proxy in ALL:
        ports = [i.port for i in proxy.inbounds if why_not_from(p, proxy, i) is None]
        assert (why_not(p, proxy) is None) == bool(ports), proxy.name
        if ports:
            found[proxy.name] = ports
    assert found == expected


def test_a_miss_says_why() -> None:
    by_labels = policy("p", from_=[(MESH, {})], target=dataplane_ref(labels={"env": "prod"}))
    assert why_not(by_labels, WEB2) == ("targetRef selects dataplanes labelled {env=prod}; dataplane 'web-2' lacks "
                                        "env=prod (its labels: {app=web, env=dev})")
    by_section = policy("p", from_=[(MESH, {})], target=dataplane_ref("web-1", section="8080"))
    reason = why_not(by_section, WEB1)
    assert reason is not None and "sectionName '8080' names no inbound" in reason and "'main', '9090'" in reason
    unnamed = WEB1.inbounds[1]
    reason = why_not_from(policy("q", from_=[(MESH, {})], target=dataplane_ref("web-1", section="main")), WEB1, unnamed)
    assert reason is not None and "does not select inbound :9090" in reason


def test_more_specific_dataplane_selectors_win_as_in_kuma() -> None:
    """Kuma's CompareDataplaneKind: labels before name, without sectionName before with it; later wins. Policy names
    are chosen so that the name order (descending, the tie-break) would give the opposite answer."""
    mesh = policy("z-mesh", from_=[(MESH, {"x": "mesh"})])
    labels = policy("y-labels", from_=[(MESH, {"x": "labels"})], target=dataplane_ref(labels={"app": "web"}))
    name = policy("b-name", from_=[(MESH, {"x": "name"})], target=dataplane_ref("web-1"))
    section = policy("a-section", from_=[(MESH, {"x": "section"})], target=dataplane_ref("web-1", section="main"))
    main, metrics = WEB1.inbounds

    def order(policies: list, where: Inbound) -> list[str]:  # type: ignore[type-arg]
        (rule,) = merge_from(policies, WEB1, where)
        return [c.policy.name for c in rule.merged.contributions]

    assert order([section, name, labels, mesh], main) == ["z-mesh", "y-labels", "b-name", "a-section"]
    assert order([section, name, labels, mesh], metrics) == ["z-mesh", "y-labels", "b-name"]
    (rule,) = merge_from([section, name, labels, mesh], WEB1, main)
    assert rule.merged.conf == {"x": "section"}
    # `to` items of a policy selecting the dataplane by labels apply to its outbounds (Kuma's DataplanePolicies).
    to_labels = policy("t", to=[(MESH, {"x": 1})], target=dataplane_ref(labels={"env": "prod"}))
    assert merge_to([to_labels], WEB1, BACKEND).conf == {"x": 1}
    assert merge_to([to_labels], WEB2, BACKEND).empty


# --- loading and validation -------------------------------------------------------------------------------------

DATAPLANES = """\
type: Dataplane
mesh: default
name: web-1
labels:
  app: web
  env: prod
networking:
  address: 127.0.9.1
  admin: {port: 20001}
  inbound:
    - name: main
      port: 20002
      servicePort: 20003
      tags: {kuma.io/service: web, kuma.io/protocol: http}
    - port: 20004
      servicePort: 20005
      tags: {kuma.io/service: web-admin, kuma.io/protocol: http}
---
apiVersion: kuma.io/v1alpha1
kind: Dataplane
mesh: default
metadata:
  name: web-2
  labels:
    app: web
    env: dev
spec:
  networking:
    address: 127.0.9.2
    admin: {port: 20011}
    inbound:
      - name: main
        port: 20012
        servicePort: 20013
        tags: {kuma.io/service: web, kuma.io/protocol: http}
"""


def write(root: Path, policies: str) -> Path:
    (root / "dataplanes.yaml").write_text(DATAPLANES)
    (root / "policies.yaml").write_text(textwrap.dedent(policies))
    return root


def test_labels_load_from_both_forms_and_select(tmp_path: Path) -> None:
    write(tmp_path, """\
        type: MeshTrafficPermission
        mesh: default
        name: deny-prod-main
        spec:
          targetRef:
            kind: Dataplane
            labels: {env: prod}
            sectionName: main
          from:
            - targetRef: {kind: Mesh}
              default: {action: Deny}
        """)
    desired = load_and_parse(tmp_path)
    by_name = {d.name: d for d in desired.dataplanes}
    assert by_name["web-1"].labels == {"app": "web", "env": "prod"}
    assert by_name["web-2"].labels == {"app": "web", "env": "dev", }
    assert [i.section_name for i in by_name["web-1"].inbounds] == ["main", "20004"]
    (p,) = [p for p in desired.policies if not p.kuma_default]
    assert [i.port for i in by_name["web-1"].inbounds if why_not_from(p, by_name["web-1"], i) is None] == [20002]
    assert why_not(p, by_name["web-2"]) is not None
    # explain names the selector beside the policy, on the inbound it lands on and nowhere else
    text = render_text(explain_proxy(desired, "web-1"))
    assert ("MeshTrafficPermission/deny-prod-main from[0] (" + f"{tmp_path}/policies.yaml:10) "
            "[targetRef Dataplane labels {env=prod} sectionName 'main']") in text, text
    assert ("action: \"Deny\"  # MeshTrafficPermission/deny-prod-main (" + f"{tmp_path}/policies.yaml:11) "
            "[targetRef Dataplane labels {env=prod} sectionName 'main']") in text, text
    assert "deny-prod-main" not in render_text(explain_proxy(desired, "web-2"))


MTP = """\
    type: MeshTrafficPermission
    mesh: default
    name: p
    spec:
      targetRef:
    {ref}
      from:
        - targetRef: {{kind: Mesh}}
          default: {{action: Deny}}
    """
TIMEOUT_TO_ONLY = """\
    type: MeshTimeout
    mesh: default
    name: t
    spec:
      targetRef:
    {ref}
      to:
        - targetRef: {{kind: Mesh}}
          default: {{idleTimeout: 5s}}
    """

REFUSED = [
    # case, policy template, the targetRef's fields (at 4 spaces), expected file:line: path: message start
    ("labels and name together", MTP, "    kind: Dataplane\n    name: web-1\n    labels: {app: web}",
     "policies.yaml:8: spec.targetRef.labels: set either `labels` or `name`, not both"),
    ("sectionName in a policy with no from", TIMEOUT_TO_ONLY, "    kind: Dataplane\n    name: web-1\n    sectionName: main",
     "policies.yaml:8: spec.targetRef.sectionName: can only be used in a policy with `from` items"),
    ("sectionName with kind Mesh", MTP, "    kind: Mesh\n    sectionName: main",
     "policies.yaml:7: spec.targetRef.sectionName: not allowed here"),
    ("labels with kind MeshSubset", MTP, "    kind: MeshSubset\n    tags: {a: b}\n    labels: {app: web}",
     "policies.yaml:8: spec.targetRef.labels: not allowed with kind MeshSubset"),
    ("namespace without a name", MTP, "    kind: Dataplane\n    namespace: prod",
     "policies.yaml:7: spec.targetRef.namespace: selects no dataplane in Kuma without a `name`"),
    ("label values are strings", MTP, "    kind: Dataplane\n    labels: {replicas: 3}",
     "policies.yaml:7: spec.targetRef.labels.replicas: tag values must be strings"),
    ("empty sectionName", MTP, "    kind: Dataplane\n    sectionName: ''",
     "policies.yaml:7: spec.targetRef.sectionName: must not be empty"),
    # Kuma's docs (meshretry.md, gRPC example) write `tags` beside kind Dataplane: ignored, it selected every dataplane.
    ("tags with kind Dataplane", MTP, "    kind: Dataplane\n    tags: {app: web}",
     "policies.yaml:7: spec.targetRef.tags: must not be set with kind Dataplane (as Kuma: tags select only with "
     "MeshSubset and MeshServiceSubset); a Dataplane targetRef selects by `labels`"),
    # Kuma's docs (meshfaultinjection.md) write `name: default` beside kind Mesh in a `from` item; Kuma refuses it.
    ("name with kind Mesh", MTP, "    kind: Mesh\n    name: default",
     "policies.yaml:7: spec.targetRef.name: must not be set with kind Mesh (as Kuma"),
    ("tags with kind Mesh", MTP, "    kind: Mesh\n    tags: {app: web}",
     "policies.yaml:7: spec.targetRef.tags: must not be set with kind Mesh"),
]


@pytest.mark.parametrize("template, ref, expected", table_cases(REFUSED))
def test_target_refs_that_would_select_something_else_are_refused(tmp_path: Path, template: str, ref: str,
                                                                   expected: str) -> None:
    write(tmp_path, textwrap.dedent(template).format(ref=ref))
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_item_target_refs_refuse_what_meshplan_cannot_select(tmp_path: Path) -> None:
    write(tmp_path, """\
        type: MeshTimeout
        mesh: default
        name: t
        spec:
          to:
            - targetRef: {kind: MeshService, labels: {kuma.io/display-name: web, team: a}}
              default: {idleTimeout: 5s}
            - targetRef: {kind: MeshService, labels: {}}
              default: {idleTimeout: 5s}
        """)
    assert violations(tmp_path) == [
        "policies.yaml:6: spec.to[0].targetRef.labels: not supported by meshplan (it would be ignored): team: meshplan's "
        "services are kuma.io/service tags, not labelled MeshService resources; only kuma.io/display-name or "
        "k8s.kuma.io/service-name (the service's name) and k8s.kuma.io/namespace (its namespace) can be matched",
        "policies.yaml:8: spec.to[1].targetRef.labels: must name the service: kuma.io/display-name: <name> (or use `name`)",
    ]


def test_a_mesh_service_by_its_display_name_label_is_that_service(tmp_path: Path) -> None:
    """Kuma's docs pick a MeshService in `to` by `labels: {kuma.io/display-name: <name>}`: the same destination as by
    `name`, and the same render."""
    by_label = """\
        type: MeshTimeout
        mesh: default
        name: t
        spec:
          to:
            - targetRef:
                kind: MeshService
                labels: {kuma.io/display-name: web-admin}
              default: {idleTimeout: 5s}
        """
    outbound = "    outbound:\n      - port: 20014\n        tags: {kuma.io/service: web-admin}\n"
    for sub, policies in (("a", by_label), ("b", by_label.replace("labels: {kuma.io/display-name: web-admin}",
                                                                   "name: web-admin"))):
        (tmp_path / sub).mkdir()
        write(tmp_path / sub, policies)
        (tmp_path / sub / "dataplanes.yaml").write_text(DATAPLANES + outbound)
    desired = load_and_parse(tmp_path / "a")
    (labelled,) = [p for p in desired.policies if not p.kuma_default]
    assert labelled.to[0].target_ref == TargetRef("MeshService", "web-admin")
    web2 = next(d for d in desired.dataplanes if d.name == "web-2")
    assert merge_to([labelled], web2, Destination("default", "web-admin")).conf == {"idleTimeout": "5s"}
    assert render_all(desired) == render_all(load_and_parse(tmp_path / "b"))


def test_two_inbounds_answering_to_one_section_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "dp.yaml").write_text(DATAPLANES.split("---")[0].replace("    - port: 20004", "    - name: main\n      port: 20004"))
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(
        "dp.yaml:15: networking.inbound[1].name: inbound[0] already answers to sectionName 'main'"), found


def test_universal_dataplane_labels_must_be_strings(tmp_path: Path) -> None:
    (tmp_path / "dp.yaml").write_text(DATAPLANES.split("---")[0].replace("env: prod", "env: 3"))
    assert violations(tmp_path) == ["dp.yaml:6: labels.env: tag values must be strings, got an integer"]


# --- on real Envoys ---------------------------------------------------------------------------------------------

ENVOY_POLICIES = """\
type: MeshTrafficPermission
mesh: default
name: deny-backend-api
spec:
  targetRef:
    kind: Dataplane
    name: backend-1
    sectionName: api
  from:
    - targetRef: {kind: Mesh}
      default: {action: Deny}
---
type: MeshTimeout
mesh: default
name: prod-300ms
spec:
  targetRef:
    kind: Dataplane
    labels: {env: prod}
  to:
    - targetRef: {kind: Mesh}
      default:
        http: {requestTimeout: 300ms}
"""


def two_inbounds_and_labels(root: Path, addresses: Addresses) -> MeshFiles:
    """backend-1 with two inbounds (`api`, named, of backend; unnamed, of backend-admin), and web-prod (labelled
    env: prod) and web-dev (env: dev) calling both."""
    services = [Service("backend", instance="backend-1"), Service("backend-admin", instance="backend-admin-1"),
                Service("web", calls=("backend", "backend-admin"), instance="web-prod"),
                Service("web", calls=("backend", "backend-admin"), instance="web-dev")]
    files = write_mesh(root, addresses, services, policies=ENVOY_POLICIES)
    docs = {d["name"]: d for d in yaml.safe_load_all((root / "dataplanes.yaml").read_text())}
    second = docs.pop("backend-admin-1")
    moved = {**second["networking"]["inbound"][0], "address": second["networking"]["address"]}
    docs["backend-1"]["networking"]["inbound"][0]["name"] = "api"
    docs["backend-1"]["networking"]["inbound"].append(moved)
    docs["web-prod"]["labels"] = {"env": "prod"}
    docs["web-dev"]["labels"] = {"env": "dev"}
    (root / "dataplanes.yaml").write_text(yaml.safe_dump_all(list(docs.values()), sort_keys=False))
    return files


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, loopback: Loopback) -> Iterator[MeshFiles]:
    yield from running_mesh(tmp_path_factory.mktemp("targeting"), lambda d: two_inbounds_and_labels(d, loopback))


@pytest.mark.envoy
def test_section_name_denies_exactly_one_inbound(running: MeshFiles, http: httpx.Client) -> None:
    for client in ("web-prod", "web-dev"):
        denied = http.get(running.url(client, "backend", "/status/200"))
        assert (denied.status_code, denied.text) == (403, "RBAC: access denied"), client
        # the other inbound of the same dataplane, same app process type, is not touched by the policy
        allowed = http.get(running.url(client, "backend-admin", "/status/200"))
        assert allowed.status_code == 200 and allowed.json()["service"] == "backend-admin", client


@pytest.mark.envoy
def test_labels_select_the_labelled_proxy_only(running: MeshFiles, http: httpx.Client) -> None:
    assert_timed_out(http, running, "web-prod", "backend-admin")
    assert_answered_slowly(http, running, "web-dev", "backend-admin")
    # and in what the Envoys run: the route's timeout is on web-prod's outbound only
    routes = {name: json.dumps(http.get(f"{running.admin[name]}/config_dump").json()) for name in ("web-prod", "web-dev")}
    assert '"timeout": "0.300s"' in routes["web-prod"] and '"timeout": "0.300s"' not in routes["web-dev"]
