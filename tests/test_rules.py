"""Kuma 2.12+'s top-level `rules` (inbound policies): a rule without `matches` is a `from` item of kind Mesh, so a
policy written with `rules` renders exactly as its `from` spelling; origins and `explain` name `rules[i]` at its
line; what Kuma's validators refuse (v2.14.3 `pkg/plugins/policies/<kind>/api/v1alpha1/validator.go`) is refused at
the same field path. Our own inputs throughout."""

from __future__ import annotations

import re
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import Loopback

from meshplan.match.explain import explain_proxy, render_text
from meshplan.match.unused import warnings
from meshplan.model import ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    Service,
    running_mesh,
    table_cases,
    the_listener,
    violations,
    write_mesh,
)
from tests.golden import TESTDATA
from tests.policy_render import envoy_validates

RULES_CASE = TESTDATA / "rules.input"


def as_from(text: str) -> str:
    """The same policies with every top-level rule (no `matches`) spelled as a `from` item of kind Mesh."""
    text = text.replace("  rules:\n", "  from:\n")
    return text.replace("    - default:\n", "    - targetRef: {kind: Mesh}\n      default:\n")


def test_a_rules_policy_renders_exactly_as_its_from_spelling(tmp_path: Path) -> None:
    shutil.copytree(RULES_CASE, tmp_path / "rules")
    shutil.copytree(RULES_CASE, tmp_path / "from")
    written = (RULES_CASE / "policies.yaml").read_text()
    (tmp_path / "from" / "policies.yaml").write_text(as_from(written))
    with_rules = {p.name: p for p in render_all(load_and_parse(tmp_path / "rules"))}
    with_from = {p.name: p for p in render_all(load_and_parse(tmp_path / "from"))}
    assert "from:" not in written and "rules:" not in as_from(written)
    for name, proxy in with_rules.items():
        other = with_from[name]
        assert proxy.listeners == other.listeners and proxy.clusters == other.clusters
        # The same fields come from the same policies; only the lines differ (one more line per `from` item).
        def unlined(origins: dict[str, object]) -> str:
            return re.sub(r"/(rules|from)/policies\.yaml:\d+", "/policies.yaml:N", repr(origins))
        assert unlined(proxy.origins) == unlined(other.origins)
    # What the rules set really is on the inbound (so the comparison above compared something).
    route = with_rules["orders-1"].listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    assert route["virtual_hosts"][0]["routes"][0]["route"]["timeout"] == "3s"


def test_origins_and_explain_name_the_rule_and_its_line(tmp_path: Path) -> None:
    desired = load_and_parse(RULES_CASE)
    text = render_text(explain_proxy(desired, "orders-1"))
    # Rules merge in the order written: rules[1]'s requestTimeout overrides rules[0]'s.
    assert "MeshTimeout/orders-inbound-timeouts rules[0] (" + str(RULES_CASE / "policies.yaml:13)") in text
    assert "MeshTimeout/orders-inbound-timeouts rules[1] (" + str(RULES_CASE / "policies.yaml:17)") in text
    assert re.search(r'http\.requestTimeout: "3s"  # MeshTimeout/orders-inbound-timeouts \(\S+policies\.yaml:19\) '
                     r"\[targetRef Dataplane labels \{app=orders\}\]; overrides MeshTimeout/orders-inbound-timeouts "
                     r"\(\S+policies\.yaml:16\)", text), text
    # sectionName keeps a rule to one inbound: the rate limit is on `api` only.
    listeners = next(p for p in render_all(desired) if p.name == "orders-1").listeners
    limited = ["local_ratelimit" in repr(listener) for listener in listeners if listener.get("traffic_direction") == "INBOUND"]
    assert limited == [True, False]


def test_rules_and_from_policies_merge_in_kumas_order(tmp_path: Path) -> None:
    """A mesh-wide `from` policy and a Dataplane-by-name `rules` policy: the more specific top-level targetRef wins,
    whichever spelling each uses."""
    shutil.copytree(RULES_CASE, tmp_path, dirs_exist_ok=True)
    (tmp_path / "policies.yaml").write_text(textwrap.dedent("""\
        type: MeshTimeout
        mesh: default
        name: mesh-wide
        spec:
          targetRef: {kind: Mesh}
          from:
            - targetRef: {kind: Mesh}
              default: {http: {requestTimeout: 9s, streamIdleTimeout: 9s}}
        ---
        type: MeshTimeout
        mesh: default
        name: orders-only
        spec:
          targetRef: {kind: Dataplane, name: orders-1}
          rules:
            - default: {http: {requestTimeout: 4s}}
        """))
    text = render_text(explain_proxy(load_and_parse(tmp_path), "orders-1"))
    assert 'http.requestTimeout: "4s"  # MeshTimeout/orders-only' in text
    assert 'http.streamIdleTimeout: "9s"  # MeshTimeout/mesh-wide' in text


def policy(kind: str, spec: str) -> str:
    return f"type: {kind}\nmesh: default\nname: p\nspec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


TOP = "targetRef: {kind: Dataplane, name: orders-1}\n"
TIMEOUT = "- default: {idleTimeout: 5s}\n"

# case, kind, spec (under `spec:`), the violations (`file:line: path: message` starts)
REFUSED = [
    ("rules with from (MeshTimeout)", "MeshTimeout",
     TOP + "rules:\n" + TIMEOUT + "from:\n- targetRef: {kind: Mesh}\n  default: {idleTimeout: 5s}\n",
     ["policies.yaml:4: spec: fields 'to' and 'from' must be empty when 'rules' is defined"]),
    ("rules with to (MeshAccessLog)", "MeshAccessLog",
     TOP + "rules:\n- default: {backends: [{type: File, file: {path: /dev/null}}]}\n"
     "to:\n- targetRef: {kind: Mesh}\n  default: {backends: [{type: File, file: {path: /dev/null}}]}\n",
     ["policies.yaml:4: spec: fields 'to' and 'from' must be empty when 'rules' is defined"]),
    ("rules with from (MeshFaultInjection)", "MeshFaultInjection",
     TOP + "rules:\n- default: {http: [{abort: {httpStatus: 500, percentage: 1}}]}\n"
     "from:\n- targetRef: {kind: Mesh}\n  default: {http: [{abort: {httpStatus: 500, percentage: 1}}]}\n",
     ["policies.yaml:4: spec: field 'from' must be empty when 'rules' is defined"]),
    ("a rule without default", "MeshTimeout", TOP + "rules:\n- {}\n",
     ["policies.yaml:7: spec.rules[0]: `default` is required",
      "policies.yaml:7: spec.rules[0].default: at least one timeout should be configured"]),
    ("an unknown field of a rule", "MeshTimeout", TOP + "rules:\n- default: {idleTimeout: 5s}\n  targetRef: {kind: Mesh}\n",
     ["policies.yaml:8: spec.rules[0].targetRef: unknown field"]),
    ("the rule's default is checked as the kind's", "MeshTimeout", TOP + "rules:\n- default: {idleTimeout: soon}\n",
     ["policies.yaml:7: spec.rules[0].default.idleTimeout:"]),
    ("a match with neither spiffeID nor sni", "MeshTimeout",
     TOP + "rules:\n- matches: [{}]\n  default: {http: {requestTimeout: 1s}}\n",
     ["policies.yaml:7: spec.rules[0].matches: not implemented by meshplan",
      "policies.yaml:7: spec.rules[0].matches[0]: must specify at least one of 'spiffeID' or 'sni'"]),
    ("a spiffeID without type", "MeshFaultInjection",
     TOP + "rules:\n- matches: [{spiffeID: {value: 'spiffe://default/web'}}]\n"
     "  default: {http: [{abort: {httpStatus: 500, percentage: 1}}]}\n",
     ["policies.yaml:7: spec.rules[0].matches: not implemented by meshplan",
      "policies.yaml:7: spec.rules[0].matches[0].spiffeID.type: must be set"]),
    ("a spiffeID of an unknown type", "MeshAccessLog",
     TOP + "rules:\n- matches: [{spiffeID: {type: Regex, value: 'spiffe://.*'}}]\n"
     "  default: {backends: [{type: File, file: {path: /dev/null}}]}\n",
     ["policies.yaml:7: spec.rules[0].matches: not implemented by meshplan",
      "policies.yaml:7: spec.rules[0].matches[0].spiffeID.type: unrecognized type 'Regex', supported values are: "
      "Exact, Prefix"]),
    ("matches by SPIFFE ID are refused, not ignored", "MeshTimeout",
     TOP + "rules:\n- matches: [{spiffeID: {type: Exact, value: 'spiffe://default/web'}}]\n"
     "  default: {http: {requestTimeout: 1s}}\n",
     ["policies.yaml:7: spec.rules[0].matches: not implemented by meshplan (it would be ignored): a rule with "
      "`matches` applies only to clients whose certificate SPIFFE ID"]),
    ("MeshTrafficPermission rules with from", "MeshTrafficPermission",
     TOP + "rules:\n- default: {deny: [{spiffeID: {type: Exact, value: 'spiffe://default/web'}}]}\n"
     "from:\n- targetRef: {kind: Mesh}\n  default: {action: Allow}\n",
     ["policies.yaml:4: spec: field 'from' must be empty when 'rules' is defined"]),
    ("a MeshTrafficPermission rule with no list", "MeshTrafficPermission", TOP + "rules:\n- default: {deny: []}\n",
     ["policies.yaml:7: spec.rules[0]: at least one of 'allow', 'allowWithShadowDeny', 'deny' has to be defined"]),
    ("MeshTrafficPermission rules have no matches", "MeshTrafficPermission",
     TOP + "rules:\n- matches: []\n  default: {allow: [{spiffeID: {type: Prefix, value: 'spiffe://default'}}]}\n",
     ["policies.yaml:7: spec.rules[0].matches: unknown field"]),
    ("a SPIFFE ID that is not one", "MeshTrafficPermission",
     TOP + "rules:\n- default: {deny: [{spiffeID: {type: Exact, value: 'web'}}]}\n",
     ["policies.yaml:7: spec.rules[0].default.deny[0].spiffeID: must be a valid Spiffe ID, got 'web'"]),
    ("a SPIFFE ID of a trust domain meshplan's certificates never carry", "MeshTrafficPermission",
     TOP + "rules:\n- default: {deny: [{spiffeID: {type: Prefix, value: 'spiffe://default.zone-1.mesh.local/ns/x'}}]}\n",
     ["policies.yaml:7: spec.rules[0].default.deny[0].spiffeID.value: matches no client: meshplan's certificates carry "
      "spiffe://default/<service>"]),
    ("SNI matches as Kuma checks them", "MeshTrafficPermission",
     TOP + "rules:\n- default:\n    allow: [{sni: {type: Prefix, value: Web.default.mesh}}]\n"
     "    deny: [{sni: {value: ''}}, {sni: {type: Exact, value: 'a_b.mesh', port: 1}}, {sni: [x]}, {}]\n",
     ["policies.yaml:8: spec.rules[0].default.allow[0].sni.type: unrecognized type 'Prefix', supported values are: "
      "Exact",
      "policies.yaml:8: spec.rules[0].default.allow[0].sni.value: 'Web.default.mesh' is not a lowercase RFC 1123 "
      "subdomain",
      "policies.yaml:9: spec.rules[0].default.deny[0].sni.type: must be set",
      "policies.yaml:9: spec.rules[0].default.deny[0].sni.value: must be set",
      "policies.yaml:9: spec.rules[0].default.deny[1].sni.port: unknown field",
      "policies.yaml:9: spec.rules[0].default.deny[1].sni.value: 'a_b.mesh' is not a lowercase RFC 1123 subdomain",
      "policies.yaml:9: spec.rules[0].default.deny[2].sni: must be a mapping",
      "policies.yaml:9: spec.rules[0].default.deny[3]: must specify at least one of 'spiffeID' or 'sni'"]),
    ("a spiffeID type MeshTrafficPermission does not know", "MeshTrafficPermission",
     TOP + "rules:\n- default: {allow: [{spiffeID: {type: Regex, value: 'spiffe://default/web'}}]}\n",
     ["policies.yaml:7: spec.rules[0].default.allow[0].spiffeID.type: unrecognized type 'Regex'"]),
    ("MeshCircuitBreaker rules (outbound-only by the seeds)", "MeshCircuitBreaker",
     TOP + "rules:\n- default: {connectionLimits: {maxConnections: 2}}\n",
     ["policies.yaml:6: spec.rules: MeshCircuitBreaker does not support `rules`"]),
    ("MeshRateLimit rules on a targetRef that includes gateways", "MeshRateLimit",
     "targetRef: {kind: Mesh}\nrules:\n- default: {local: {http: {requestRate: {num: 1, interval: 1s}}}}\n",
     ["policies.yaml:6: spec.rules: must not be defined: the top-level targetRef (kind Mesh or MeshSubset without "
      "proxyTypes excluding Gateway) includes gateways"]),
    ("sectionName needs an inbound policy; rules are one", "MeshTimeout",
     "targetRef: {kind: Dataplane, name: orders-1, sectionName: nope-not-checked-here}\n"
     "to:\n- targetRef: {kind: Mesh}\n  default: {idleTimeout: 5s}\n",
     ["policies.yaml:5: spec.targetRef.sectionName: can only be used in a policy with `from` items"]),
]


@pytest.mark.parametrize(("kind", "spec", "expected"), table_cases(REFUSED))
def test_rules_are_checked_as_kuma_checks_them(tmp_path: Path, kind: str, spec: str, expected: list[str]) -> None:
    shutil.copytree(RULES_CASE, tmp_path, dirs_exist_ok=True)
    (tmp_path / "policies.yaml").write_text(policy(kind, spec))
    found = violations(tmp_path)
    assert len(found) == len(expected), found
    for line, want in zip(found, expected, strict=True):
        assert line.startswith(want), found


ACCEPTED = [
    ("MeshTrafficPermission rules as Kuma's docs write them", "MeshTrafficPermission",
     "targetRef: {kind: Dataplane, labels: {app: orders}, sectionName: api}\nrules:\n- default:\n"
     "    deny: [{spiffeID: {type: Exact, value: 'spiffe://default/stock'}}]\n"
     "    allow: [{spiffeID: {type: Prefix, value: 'spiffe://default'}}]\n"),
    ("MeshTrafficPermission SNI matches, alone and with a SPIFFE ID (AND)", "MeshTrafficPermission",
     TOP + "rules:\n- default:\n    deny: [{sni: {type: Exact, value: orders.default.mesh}}]\n"
     "    allow: [{spiffeID: {type: Exact, value: 'spiffe://default/web'}, sni: {type: Exact, value: a.b}}]\n"),
    ("MeshRateLimit rules on sidecars of the whole mesh", "MeshRateLimit",
     "targetRef: {kind: Mesh, proxyTypes: [Sidecar]}\nrules:\n- default: {local: {http: {requestRate: {num: 1, interval: 1s}}}}\n"),
    ("rules with sectionName", "MeshTimeout", "targetRef: {kind: Dataplane, name: orders-1, sectionName: api}\nrules:\n" + TIMEOUT),
    ("MeshTimeout rules with to", "MeshTimeout", TOP + "rules:\n" + TIMEOUT),
    ("no targetRef: the whole mesh", "MeshAccessLog", "rules:\n- default: {backends: [{type: File, file: {path: /dev/null}}]}\n"),
]


@pytest.mark.parametrize(("kind", "spec"), table_cases(ACCEPTED))
def test_rules_kuma_accepts_load(tmp_path: Path, kind: str, spec: str) -> None:
    shutil.copytree(RULES_CASE, tmp_path, dirs_exist_ok=True)
    (tmp_path / "policies.yaml").write_text(policy(kind, spec))
    assert violations(tmp_path) == []
    assert len(load_and_parse(tmp_path).policies[0].from_) == 1


# --- the last fields targeting left unread -------------------------------------------------------------------------


def kubernetes_policy(namespace: str | None) -> str:
    meta = f"  namespace: {namespace}\n" if namespace is not None else ""
    return (f"apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata:\n  name: t\n{meta}"
            "  labels: {kuma.io/mesh: default}\nspec:\n  targetRef: {kind: Dataplane, name: orders-1}\n"
            "  rules:\n    - default: {idleTimeout: 5s}\n")


@pytest.mark.parametrize(("namespace", "expected"), [
    pytest.param(None, [], id="no namespace: the whole mesh"),
    pytest.param("kuma-system", [], id="the system namespace: the whole mesh, as Kuma"),
    # a workload-owner policy of shop's dataplanes, not the whole mesh (tests/test_namespaces.py)
    pytest.param("shop", [], id="another namespace: Kuma's namespace-scoped policy"),
    pytest.param("Shop", ["policies.yaml:5: metadata.namespace: 'Shop' is not a Kubernetes namespace name"],
                 id="not a namespace name"),
    pytest.param("[a]", ["policies.yaml:5: metadata.namespace: must be a string"], id="not a string"),
])
def test_a_policy_namespace_is_read_or_refused(tmp_path: Path, namespace: str | None,
                                                                 expected: list[str]) -> None:
    shutil.copytree(RULES_CASE, tmp_path, dirs_exist_ok=True)
    (tmp_path / "policies.yaml").write_text(kubernetes_policy(namespace))
    found = violations(tmp_path)
    assert len(found) == len(expected), found
    for line, want in zip(found, expected, strict=True):
        assert line.startswith(want), found


@pytest.mark.parametrize("key", ["proxyTypes", "proxyType"])
def test_proxy_types_beside_kind_dataplane_are_refused_as_kuma(tmp_path: Path, key: str) -> None:
    shutil.copytree(RULES_CASE, tmp_path, dirs_exist_ok=True)
    (tmp_path / "policies.yaml").write_text(policy(
        "MeshTimeout", f"targetRef:\n  kind: Dataplane\n  name: orders-1\n  {key}: [Sidecar]\nrules:\n" + TIMEOUT))
    assert violations(tmp_path) == [
        f"policies.yaml:8: spec.targetRef.{key}: must not be set with kind Dataplane (as Kuma: a Dataplane targetRef "
        "selects dataplanes, never the egress or a gateway); remove it"]


# --- MeshTrafficPermission `rules`: SPIFFE ID lists, as Kuma's RBAC for inbound rules --------------------------

MTP_RULES = """\
type: MeshTrafficPermission
mesh: default
name: backend-callers
spec:
  targetRef:
    kind: Dataplane
    labels: {app: backend}
  rules:
    - default:
        deny:
          - spiffeID: {type: Exact, value: "spiffe://default/web"}
        allow:
          - spiffeID: {type: Prefix, value: "spiffe://default"}
"""


def rules_mesh(root: Path, addresses: Addresses) -> MeshFiles:
    """backend-1 (labelled app: backend) called by web and by admin; MTP_RULES denies web and allows the rest."""
    services = [Service("backend", instance="backend-1"), Service("web", calls=("backend",)),
                Service("admin", calls=("backend",))]
    files = write_mesh(root, addresses, services, policies=MTP_RULES)
    docs = list(yaml.safe_load_all((root / "dataplanes.yaml").read_text()))
    for doc in docs:
        if doc["name"] == "backend-1":
            doc["labels"] = {"app": "backend"}
    (root / "dataplanes.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return files


def test_permission_rules_render_kumas_rbac(tmp_path: Path) -> None:
    """Deny first, then allow, nobody else: one ALLOW policy whose principal is the allowed minus the denied."""
    files = rules_mesh(tmp_path, FixedAddresses())
    backend = files.proxies()["backend-1"]
    rbac = next(f for f in the_listener(backend)["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
                if f["name"] == "envoy.filters.http.rbac")["typed_config"]
    assert rbac["rules"] == {"action": "ALLOW", "policies": {"rules": {"permissions": [{"any": True}], "principals": [
        {"and_ids": {"ids": [
            {"or_ids": {"ids": [{"authenticated": {"principal_name": {"prefix": "spiffe://default"}}}]}},
            {"not_id": {"or_ids": {"ids": [{"authenticated": {"principal_name": {"exact": "spiffe://default/web"}}}]}}},
        ]}}]}}}
    assert "shadow_rules" not in rbac
    origins = [who for paths in backend.origins["listener"].values() for who in paths.values()]
    written = sorted(w.split("policies.yaml:")[1][:3] for who in origins for w in who
                     if w.startswith("MeshTrafficPermission/backend-callers ("))
    assert written == ["10)", "12)"], origins  # the deny and allow lists, each at its line
    # The plan's meaning per client: web denied, admin allowed.
    facts = {(f["client"], f["destination"]): f["value"] for f in backend.behaviour if f["aspect"] == "permission"}
    assert facts == {("admin", "backend"): {"action": "Allow"}, ("backend", "backend"): {"action": "Allow"},
                     ("web", "backend"): {"action": "Deny"}}


@pytest.fixture(scope="module")
def running_rules(tmp_path_factory: pytest.TempPathFactory, loopback: Loopback) -> Iterator[MeshFiles]:
    yield from running_mesh(tmp_path_factory.mktemp("rules"), lambda d: rules_mesh(d, loopback))


@pytest.mark.envoy
def test_permission_rules_deny_and_allow_real_traffic(running_rules: MeshFiles, http: httpx.Client) -> None:
    denied = http.get(running_rules.url("web", "backend", "/status/200"))
    assert (denied.status_code, denied.text) == (403, "RBAC: access denied")
    allowed = http.get(running_rules.url("admin", "backend", "/status/200"))
    assert allowed.status_code == 200 and allowed.json()["service"] == "backend"


def test_a_from_permission_beside_rules_is_warned_about_not_ignored(tmp_path: Path) -> None:
    files = rules_mesh(tmp_path, FixedAddresses())
    files.write({"more.yaml": "type: MeshTrafficPermission\nmesh: default\nname: old-style\nspec:\n  targetRef: {kind: Mesh}\n"
                 "  from:\n    - targetRef: {kind: MeshService, name: web}\n      default: {action: Allow}\n"})
    found = warnings(files.load())
    assert [w.removeprefix(f"{tmp_path}/") for w in found] == [
        "more.yaml:6: MeshTrafficPermission/old-style: takes no part on dataplane 'backend-1' inbound :"
        + files.inbound["backend-1"].rpartition(":")[2] + ": MeshTrafficPermission/backend-callers selects it with "
        "top-level `rules`, and then, as in Kuma, only `rules` decide who may connect"]
    # and indeed: web stays denied
    facts = {(f["client"], f["destination"]): f["value"] for f in files.proxies()["backend-1"].behaviour
             if f["aspect"] == "permission"}
    assert facts[("web", "backend")] == {"action": "Deny"}


# --- MeshTrafficPermission `rules` matching by `sni`, alone and with a SPIFFE ID ------------------------------------

# A sidecar calling a service sends that service's name as its TLS server name: `<service>.<mesh>.mesh`
# (names.service_sni), so backend's clients send backend.default.mesh and stock's send stock.default.mesh.
MTP_SNI = """\
type: MeshTrafficPermission
mesh: default
name: backend-by-sni
spec:
  targetRef: {kind: Dataplane, name: backend-1}
  rules:
    - default:
        deny:
          - spiffeID: {type: Exact, value: "spiffe://default/web"}
            sni: {type: Exact, value: backend.default.mesh}
        allow:
          - sni: {type: Exact, value: backend.default.mesh}
---
type: MeshTrafficPermission
mesh: default
name: stock-by-sni
spec:
  targetRef: {kind: Dataplane, name: stock}
  rules:
    - default:
        allow:
          - sni: {type: Exact, value: backend.default.mesh}
          - spiffeID: {type: Exact, value: "spiffe://default/web"}
            sni: {type: Exact, value: stock.default.mesh}
"""


def sni_mesh(root: Path, addresses: Addresses) -> MeshFiles:
    """web and admin each call backend (backend-1) and stock; MTP_SNI: web → backend denied (a deny whose SPIFFE ID
    and SNI both match), admin → backend allowed (by SNI alone); web → stock allowed (both parts match), admin →
    stock denied (stock's clients send stock.default.mesh, not the backend.default.mesh its sni-only allow names)."""
    services = [Service("backend", instance="backend-1"), Service("stock"),
                Service("web", calls=("backend", "stock")), Service("admin", calls=("backend", "stock"))]
    return write_mesh(root, addresses, services, policies=MTP_SNI)


def _rbac(proxy: ProxyConfig) -> dict[str, Any]:
    chain = the_listener(proxy)["filter_chains"][0]
    return dict(next(f for f in chain["filters"][0]["typed_config"]["http_filters"]
                     if f["name"] == "envoy.filters.http.rbac")["typed_config"])


def test_permission_sni_rules_render_one_policy_per_server_name(tmp_path: Path) -> None:
    """An `sni` is an RBAC permission (`requested_server_name`), a SPIFFE ID a principal: the rules are split by
    server name; the inbound gets the TLS inspector, without which Envoy sees no server name."""
    proxies = sni_mesh(tmp_path, FixedAddresses()).proxies()
    web = {"authenticated": {"principal_name": {"exact": "spiffe://default/web"}}}
    backend_sni = {"requested_server_name": {"exact": "backend.default.mesh"}}
    stock_sni = {"requested_server_name": {"exact": "stock.default.mesh"}}
    assert _rbac(proxies["backend-1"])["rules"] == {"action": "ALLOW", "policies": {
        "rules sni backend.default.mesh": {"permissions": [backend_sni], "principals": [
            {"and_ids": {"ids": [{"any": True}, {"not_id": {"or_ids": {"ids": [web]}}}]}}]}}}
    assert _rbac(proxies["stock"])["rules"] == {"action": "ALLOW", "policies": {
        "rules sni backend.default.mesh": {"permissions": [backend_sni], "principals": [{"any": True}]},
        "rules sni stock.default.mesh": {"permissions": [stock_sni], "principals": [{"or_ids": {"ids": [web]}}]}}}
    for name in ("backend-1", "stock"):
        inspector_type = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
        assert the_listener(proxies[name])["listener_filters"] == [{
            "name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": inspector_type}}]
        inspector = proxies[name].origins["listener"][the_listener(proxies[name])["name"]]
        assert any("listener_filters" in str(path) and any("-by-sni (" in who for who in whos)
                   for path, whos in inspector.items()), inspector
    for name in ("web", "admin"):  # no rule, no inspector
        assert "listener_filters" not in the_listener(proxies[name])
    # The plan's meaning per client, with the server name each client sends.
    facts = {(f["client"], f["destination"]): f["value"]["action"] for p in proxies.values() for f in p.behaviour
             if f["aspect"] == "permission" and f["client"] in ("web", "admin")}
    assert facts == {("web", "backend"): "Deny", ("admin", "backend"): "Allow",
                     ("web", "stock"): "Allow", ("admin", "stock"): "Deny"}


def test_a_permission_sni_for_every_other_server_name(tmp_path: Path) -> None:
    """Matches without `sni` beside ones with it: they hold for every server name, the named ones and the rest."""
    files = sni_mesh(tmp_path, FixedAddresses())
    files.write({"policies.yaml": MTP_SNI.split("---")[0].replace(
        "          - sni: {type: Exact, value: backend.default.mesh}",
        "          - spiffeID: {type: Prefix, value: \"spiffe://default\"}")})
    rbac = _rbac(files.proxies()["backend-1"])
    web = {"authenticated": {"principal_name": {"exact": "spiffe://default/web"}}}
    everyone = {"or_ids": {"ids": [{"authenticated": {"principal_name": {"prefix": "spiffe://default"}}}]}}
    assert rbac["rules"]["policies"] == {
        "rules sni backend.default.mesh": {
            "permissions": [{"requested_server_name": {"exact": "backend.default.mesh"}}],
            "principals": [{"and_ids": {"ids": [everyone, {"not_id": {"or_ids": {"ids": [web]}}}]}}]},
        "rules other sni": {
            "permissions": [{"not_rule": {"requested_server_name": {"exact": "backend.default.mesh"}}}],
            "principals": [everyone]}}


@pytest.fixture(scope="module")
def running_sni(tmp_path_factory: pytest.TempPathFactory, loopback: Loopback) -> Iterator[MeshFiles]:
    yield from running_mesh(tmp_path_factory.mktemp("sni"), lambda d: sni_mesh(d, loopback))


@pytest.mark.envoy
@pytest.mark.parametrize(("client", "target", "status"), [
    ("web", "backend", 403), ("admin", "backend", 200), ("web", "stock", 200), ("admin", "stock", 403)])
def test_permission_sni_rules_decide_real_traffic(running_sni: MeshFiles, http: httpx.Client, client: str,
                                                  target: str, status: int) -> None:
    response = http.get(running_sni.url(client, target, "/status/200"))
    if status == 403:
        assert (response.status_code, response.text) == (403, "RBAC: access denied")
    else:
        assert response.status_code == 200 and response.json()["service"] == target


def test_an_sni_no_meshplan_sidecar_sends_there_is_warned_about(tmp_path: Path) -> None:
    """Valid, as in Kuma, but it matches none of meshplan's clients: stock's callers send stock.default.mesh."""
    files = sni_mesh(tmp_path, FixedAddresses())
    assert [w.removeprefix(f"{tmp_path}/") for w in warnings(files.load())] == [
        "policies.yaml:22: MeshTrafficPermission/stock-by-sni: `sni` 'backend.default.mesh' is no server name "
        "meshplan's sidecars send to the inbounds it selects (they send stock.default.mesh), so that match matches no "
        "meshplan client"]
    files.write({"policies.yaml": MTP_SNI.split("---")[0].replace("value: backend.default.mesh}\n        allow",
                                                                  "value: backnd.default.mesh}\n        allow")})
    assert [w.removeprefix(f"{tmp_path}/") for w in warnings(files.load())] == [
        "policies.yaml:10: MeshTrafficPermission/backend-by-sni: `sni` 'backnd.default.mesh' is no server name "
        "meshplan's sidecars send to the inbounds it selects (they send backend.default.mesh), so that match matches "
        "no meshplan client (did you mean 'backend.default.mesh'?)"]


@pytest.mark.envoy
def test_sni_rules_on_a_tcp_inbound_are_a_network_rbac_envoy_accepts(tmp_path: Path) -> None:
    """A TCP inbound: the same policies in Envoy's network RBAC (before tcp_proxy), with the TLS inspector; two
    server names named make the `rules other sni` permission a `not_rule` of an `or_rules`; Envoy accepts it all."""
    services = [Service("backend", protocol="tcp", instance="backend-1"), Service("web", calls=("backend",))]
    files = write_mesh(tmp_path / "desired", FixedAddresses(), services, policies=MTP_SNI.split("---")[0].replace(
        "          - sni: {type: Exact, value: backend.default.mesh}",
        "          - sni: {type: Exact, value: other.default.mesh}\n"
        "          - spiffeID: {type: Prefix, value: \"spiffe://default\"}"))
    listener = the_listener(files.proxies()["backend-1"])
    assert [f["name"] for f in listener["listener_filters"]] == ["envoy.filters.listener.tls_inspector"]
    filters = listener["filter_chains"][0]["filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    policies = filters[0]["typed_config"]["rules"]["policies"]
    assert sorted(policies) == ["rules other sni", "rules sni backend.default.mesh", "rules sni other.default.mesh"]
    assert policies["rules other sni"]["permissions"] == [{"not_rule": {"or_rules": {"rules": [
        {"requested_server_name": {"exact": "backend.default.mesh"}},
        {"requested_server_name": {"exact": "other.default.mesh"}}]}}}]
    assert envoy_validates(files.load(), tmp_path / "state") == {"backend-1": None, "web": None}
