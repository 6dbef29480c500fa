"""MeshTrafficPermission: validation, RBAC rendering (sidecar HTTP and TCP inbounds, the egress per external
service), `envoy --mode validate`, and real requests through a sandbox: who is allowed, who gets 403."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Loopback

from meshplan.match.matcher import Destination
from meshplan.model import ProxyConfig
from meshplan.policies import clients, traffic_permission
from meshplan.render.proxies import build_proxy, render_all
from meshplan.xds import pki
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    Service,
    assert_violations_start_with,
    running_mesh,
    stats,
    stats_by_suffix,
    table_cases,
    the_listener,
    violations,
    write_mesh,
)
from tests.policy_render import envoy_validates

CALLS = ("backend", "reports", "ledger", "mes:httpbin", "mes:closed")
SERVICES = [
    Service("web", tags={"team": "dev"}, calls=CALLS),
    Service("admin", tags={"team": "ops"}, calls=CALLS),
    Service("backend", tags={"version": "v1"}),
    Service("reports"),
    Service("ledger", protocol="tcp"),
]
EXTERNALS = {"httpbin": "http", "closed": "http"}

# Only web may call anything (mesh-baseline); on reports the more specific policy turns that round: web is denied
# and the `team: ops` clients (admin) are allowed; on the egress web may reach httpbin, and `closed` has no
# permission in a mesh that forbids external services by default. On backend web is allowed in shadow-deny mode.
POLICIES = """\
    type: MeshTrafficPermission
    name: mesh-baseline
    mesh: default
    spec:
      targetRef:
        kind: Mesh
      from:
        - targetRef:
            kind: Mesh
          default:
            action: Deny
        - targetRef:
            kind: MeshService
            name: web
          default:
            action: Allow
    ---
    type: MeshTrafficPermission
    name: reports
    mesh: default
    spec:
      targetRef:
        kind: MeshService
        name: reports
      from:
        - targetRef:
            kind: MeshService
            name: web
          default:
            action: Deny
        - targetRef:
            kind: MeshSubset
            tags:
              team: ops
          default:
            action: Allow
    ---
    type: MeshTrafficPermission
    name: backend-shadow
    mesh: default
    spec:
      targetRef:
        kind: MeshService
        name: backend
      from:
        - targetRef:
            kind: MeshService
            name: web
          default:
            action: AllowWithShadowDeny
    ---
    type: MeshTrafficPermission
    name: httpbin
    mesh: default
    spec:
      targetRef:
        kind: MeshExternalService
        name: httpbin
        proxyType: ["Egress"]
      from:
        - targetRef:
            kind: MeshService
            name: web
          default:
            action: Allow
        - targetRef:
            kind: Mesh
          default:
            action: Deny
    """


def demo_mesh(root: Path, addresses: Addresses, policies: str = POLICIES, forbid: bool = True) -> MeshFiles:
    return write_mesh(root, addresses, SERVICES, externals=EXTERNALS, policies=policies, forbid_external=forbid)


def policy(body: str, kind: str = "MeshTrafficPermission", name: str = "p") -> str:
    return f"type: {kind}\nmesh: default\nname: {name}\nspec:\n" + body


def listener(proxy: ProxyConfig, direction: str = "INBOUND") -> dict[str, Any]:
    return the_listener(proxy, direction)


def http_filters(proxy: ProxyConfig, chain: int = 0) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = listener(proxy)["filter_chains"][chain]["filters"][-1]["typed_config"]["http_filters"]
    return filters


def rbac(proxy: ProxyConfig, chain: int = 0) -> dict[str, Any] | None:
    found = [f["typed_config"] for f in http_filters(proxy, chain) if f["name"] == "envoy.filters.http.rbac"]
    return found[0] if found else None


# --- validation -------------------------------------------------------------------------------------------------

FROM_MESH = "  targetRef:\n    kind: Mesh\n  from:\n    - targetRef:\n        kind: Mesh\n"

GOOD = {
    "each action": "  targetRef:\n    kind: MeshService\n    name: backend\n  from:\n"
    + "".join(f"    - targetRef:\n        kind: {kind}\n{extra}      default:\n        action: {action}\n"
              for kind, extra, action in [
                  ("Mesh", "", "Deny"),
                  ("MeshService", "        name: web\n", "Allow"),
                  ("MeshSubset", "        tags:\n          team: ops\n", "AllowWithShadowDeny"),
                  ("MeshServiceSubset", "        name: web\n        tags:\n          team: dev\n", "Allow"),
              ]),
    "egress per external service": "  targetRef:\n    kind: MeshExternalService\n    name: httpbin\n"
    "    proxyType: [Egress]\n  from:\n    - targetRef:\n        kind: MeshService\n        name: web\n"
    "      default:\n        action: Allow\n",
}

BAD: list[tuple[str, str, list[str]]] = [
    ("action missing", FROM_MESH + "      default: {}\n",
     ["policies.yaml:10: spec.from[0].default: `action` is required"]),
    ("action spelled wrong", FROM_MESH + "      default:\n        action: allow\n",
     ["policies.yaml:11: spec.from[0].default.action: must be one of Allow, Deny, AllowWithShadowDeny, got 'allow'"]),
    ("action not a string", FROM_MESH + "      default:\n        action: true\n",
     ["policies.yaml:11: spec.from[0].default.action: must be a string, got a boolean"]),
    ("unknown field", FROM_MESH + "      default:\n        action: Deny\n        log: true\n",
     ["policies.yaml:12: spec.from[0].default.log: unknown field (expected one of: action)"]),
    ("every violation at once", FROM_MESH + "      default:\n        action: Maybe\n"
     "    - targetRef:\n        kind: MeshService\n        name: web\n      default:\n        verdict: Allow\n",
     ["policies.yaml:11: spec.from[0].default.action: must be one of Allow, Deny, AllowWithShadowDeny, got 'Maybe'",
      "policies.yaml:15: spec.from[1].default: `action` is required",
      "policies.yaml:16: spec.from[1].default.verdict: unknown field (expected one of: action)"]),
    ("to is not allowed", "  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n"
     "      default:\n        action: Allow\n",
     ["policies.yaml:7: spec.to: MeshTrafficPermission does not support `to`: use `from`"]),
    ("external service without proxyType", "  targetRef:\n    kind: MeshExternalService\n    name: httpbin\n"
     "  from:\n    - targetRef:\n        kind: Mesh\n      default:\n        action: Allow\n",
     ["policies.yaml:5: spec.targetRef: a policy that references a MeshExternalService must set proxyType; "
      'the placement table says MeshTrafficPermission for a MeshExternalService is implemented on: '
      'Egress (kind: MeshExternalService, from, proxyType: ["egress"])']),
]


@pytest.mark.parametrize("body", GOOD.values(), ids=GOOD.keys())
def test_good_specs_pass(tmp_path: Path, body: str) -> None:
    demo_mesh(tmp_path, FixedAddresses(first_port=20001), policies=policy(body))
    assert violations(tmp_path) == []


@pytest.mark.parametrize(("body", "expected"), table_cases(BAD))
def test_bad_specs_report_each_violation_with_file_line_and_path(tmp_path: Path, body: str, expected: list[str]) -> None:
    demo_mesh(tmp_path, FixedAddresses(first_port=20001), policies=policy(body))
    assert_violations_start_with(violations(tmp_path), expected)


# --- render -----------------------------------------------------------------------------------------------------


def test_every_proxy_passes_envoy_validate(tmp_path: Path) -> None:
    desired = demo_mesh(tmp_path / "desired", FixedAddresses(first_port=20001)).load()
    assert envoy_validates(desired, tmp_path / "state") == dict.fromkeys(
        ["admin", "backend", "ledger", "reports", "web", "egress"]
    )


def test_no_permission_means_no_rbac(tmp_path: Path) -> None:
    proxies = render_all(demo_mesh(tmp_path, FixedAddresses(first_port=20001), policies="", forbid=False).load())
    assert "rbac" not in json.dumps([p.listeners for p in proxies])


def test_first_match_per_client_with_and_not(tmp_path: Path) -> None:
    proxies = demo_mesh(tmp_path, FixedAddresses(first_port=20001)).proxies()
    reports = rbac(proxies["reports"])
    assert reports is not None
    web = {"authenticated": {"principal_name": {"exact": "spiffe://default/web"}}}
    ops = {"authenticated": {"principal_name": {"exact": "kuma://team/ops"}}}  # certificates carry their tags
    # Deny by default for Mesh (mesh-baseline), but not for the team=ops clients the more specific rule allows; a
    # client that were both web and team=ops would be denied (reports' MeshService item outranks its MeshSubset one).
    assert reports["rules"] == {
        "action": "DENY",
        "policies": {
            "Deny MeshServiceSubset:web:team=ops": {"permissions": [{"any": True}], "principals": [{"and_ids": {"ids": [web, ops]}}]},
            "Deny MeshService:web": {"permissions": [{"any": True}], "principals": [web]},
            "Deny Mesh": {"permissions": [{"any": True}], "principals": [{"not_id": ops}]},
        },
    }
    assert "shadow_rules" not in reports
    backend = rbac(proxies["backend"])
    assert backend is not None
    assert backend["rules"]["policies"] == {"Deny Mesh": {"permissions": [{"any": True}], "principals": [{"not_id": web}]}}
    assert backend["shadow_rules"]["policies"] == {
        "AllowWithShadowDeny MeshService:web": {"permissions": [{"any": True}], "principals": [web]},
        # In the shadow rules web is denied too, so no allowing rule takes anyone out of the Mesh rule.
        "Deny Mesh": {"permissions": [{"any": True}], "principals": [{"any": True}]},
    }
    origins = proxies["backend"].origins["listener"][listener(proxies["backend"])["name"]]
    wanted = ("shadow_rules", "policies", "AllowWithShadowDeny MeshService:web")
    shadow = [who for steps, who in origins.items() if steps[-3:] == wanted]
    assert len(shadow) == 1 and shadow[0][0].startswith("MeshTrafficPermission/backend-shadow (")


def test_tcp_inbound_gets_network_rbac_before_tcp_proxy(tmp_path: Path) -> None:
    proxies = demo_mesh(tmp_path, FixedAddresses(first_port=20001)).proxies()
    filters = listener(proxies["ledger"])["filter_chains"][0]["filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    assert filters[0]["typed_config"]["stat_prefix"].endswith(".")


@pytest.mark.parametrize(("first", "second", "web_denied"), [("a-allow", "b-deny", False), ("b-allow", "a-deny", True)])
def test_same_specificity_the_smallest_name_wins(tmp_path: Path, first: str, second: str, web_denied: bool) -> None:
    def one(name: str, action: str) -> str:
        return policy("  targetRef:\n    kind: MeshService\n    name: backend\n  from:\n    - targetRef:\n"
                      f"        kind: MeshService\n        name: web\n      default:\n        action: {action}\n", name=name)

    demo_mesh(tmp_path, FixedAddresses(first_port=20001), policies=one(first, "Allow") + "---\n" + one(second, "Deny"), forbid=False)
    proxies = MeshFiles(tmp_path).proxies()
    backend = rbac(proxies["backend"])
    assert backend is not None
    assert ("Deny MeshService:web" in backend["rules"]["policies"]) is web_denied


def test_mesh_without_mtls_has_no_identity_to_check(tmp_path: Path) -> None:
    services = [Service("web", calls=("backend",)), Service("backend")]
    deny = policy(FROM_MESH + "      default:\n        action: Deny\n")
    files = write_mesh(tmp_path, FixedAddresses(first_port=20001), services, policies=deny)
    (tmp_path / "mesh.yaml").write_text("type: Mesh\nname: default\n")
    assert "rbac" not in json.dumps([p.listeners for p in render_all(files.load())])


def test_default_forbid_denies_external_service_without_permission(tmp_path: Path) -> None:
    proxies = demo_mesh(tmp_path, FixedAddresses(first_port=20001)).proxies()
    chains = {c["name"]: c for c in proxies["egress"].listeners[0]["filter_chains"]}
    closed = [f for f in chains["mes:default:closed"]["filters"][0]["typed_config"]["http_filters"] if "rbac" in f["name"]]
    assert closed[0]["typed_config"]["rules"] == {"action": "ALLOW", "policies": {}}
    origins = proxies["egress"].origins["listener"][proxies["egress"].listeners[0]["name"]]
    forbid = f"Mesh/default routing.defaultForbidMeshExternalServiceAccess ({tmp_path / 'mesh.yaml'}:1)"
    assert any(forbid in who for who in origins.values())


def test_without_forbid_an_external_service_without_permission_is_open(tmp_path: Path) -> None:
    proxies = demo_mesh(tmp_path, FixedAddresses(first_port=20001), forbid=False).proxies()
    chains = {c["name"]: c for c in proxies["egress"].listeners[0]["filter_chains"]}
    assert "rbac" not in json.dumps(chains["mes:default:closed"])
    httpbin = [f for f in chains["mes:default:httpbin"]["filters"][0]["typed_config"]["http_filters"] if "rbac" in f["name"]]
    assert httpbin[0]["typed_config"]["rules"]["action"] == "DENY"  # the permission's own Mesh: Deny


def test_default_forbid_applies_with_no_permission_in_the_mesh_at_all(tmp_path: Path) -> None:
    # The module denies on its own (render.apply_policies skips a kind with no policies: see the report).
    desired = demo_mesh(tmp_path, FixedAddresses(first_port=20001), policies="").load()
    build = build_proxy(desired, desired.egresses[0])
    traffic_permission.apply(build)
    for chain in build.listeners[next(iter(build.listeners))]["filter_chains"]:
        manager = chain["filters"][0]["typed_config"]
        assert manager["http_filters"][0]["typed_config"]["rules"] == {"action": "ALLOW", "policies": {}}


def test_default_forbid_renders_with_no_permission_in_the_mesh_at_all(tmp_path: Path) -> None:
    proxies = demo_mesh(tmp_path, FixedAddresses(first_port=20001), policies="").proxies()
    assert "envoy.filters.http.rbac" in json.dumps(proxies["egress"].listeners)


def test_tags_resolve_to_the_certificates_of_the_dataplanes_that_carry_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    desired = demo_mesh(tmp_path, FixedAddresses(first_port=20001)).load()
    real = pki.identities

    def spiffe_only(d: Any) -> dict[tuple[str, str], list[str]]:
        # Certificates as they are today: SPIFFE IDs only (issue 6 item 1 would add `kuma://` tag SANs).
        return {key: [s for s in sans if s.startswith("spiffe://")] for key, sans in real(d).items()}

    monkeypatch.setattr(pki, "identities", spiffe_only)
    san = clients.has_san
    assert clients.selected(desired, "default", {"team": "ops"}) == san("spiffe://default/admin")
    assert clients.selected(desired, "default", {"kuma.io/service": "web", "team": "dev"}) == san("spiffe://default/web")
    assert clients.selected(desired, "default", {"team": "nobody"}) == clients.NONE
    assert clients.selected(desired, "default", {}) == clients.ANY


def test_tags_match_kuma_sans_once_certificates_carry_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    desired = demo_mesh(tmp_path, FixedAddresses(first_port=20001)).load()
    real = pki.identities

    def with_tag_sans(d: Any) -> dict[tuple[str, str], list[str]]:
        return {key: [*sans, "kuma://team/ops"] for key, sans in real(d).items()}

    monkeypatch.setattr(pki, "identities", with_tag_sans)
    assert clients.selected(desired, "default", {"kuma.io/service": "web", "team": "ops"}) == clients.all_of(
        [clients.has_san("spiffe://default/web"), clients.has_san("kuma://team/ops")]
    )


def test_egress_inbound_is_per_external_service(tmp_path: Path) -> None:
    desired = demo_mesh(tmp_path, FixedAddresses(first_port=20001)).load()
    # The permissions of this test: the one for httpbin (the build matches what the desired mesh holds).
    desired.policies[:] = [p for p in desired.policies if p.kind != "MeshTrafficPermission" or p.name == "httpbin"]
    build = build_proxy(desired, desired.egresses[0])
    traffic_permission.apply(build)
    by_target = {p.target.name: p.chain for p in build.inbounds if isinstance(p.target, Destination)}
    manager = by_target["httpbin"]["filters"][0]["typed_config"]
    # The mesh forbids external services by default, so the RBAC lists whom it allows.
    assert manager["http_filters"][0]["typed_config"]["rules"] == {
        "action": "ALLOW",
        "policies": {
            "Allow MeshService:web": {
                "permissions": [{"any": True}],
                "principals": [{"authenticated": {"principal_name": {"exact": "spiffe://default/web"}}}],
            }
        },
    }


# --- real traffic -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, loopback: Loopback) -> Iterator[MeshFiles]:
    yield from running_mesh(tmp_path_factory.mktemp("traffic_permission"), lambda desired: demo_mesh(desired, loopback))


def rbac_stats(http: httpx.Client, running: MeshFiles, proxy: str) -> dict[str, int]:
    return stats_by_suffix(http, running.admin[proxy], r"rbac\.(allowed|denied|shadow_denied)$")


@pytest.mark.envoy
def test_web_is_allowed_and_admin_denied_on_backend(running: MeshFiles, http: httpx.Client) -> None:
    before = rbac_stats(http, running, "backend")
    answer = http.get(running.url("web", "backend", "/status/200"))
    assert answer.status_code == 200
    assert (answer.json()["service"], answer.json()["path"]) == ("backend", "/status/200")
    denied = http.get(running.url("admin", "backend", "/status/200"))
    assert (denied.status_code, denied.text) == (403, "RBAC: access denied")
    after = rbac_stats(http, running, "backend")
    assert (after["allowed"] - before["allowed"], after["denied"] - before["denied"]) == (1, 1)
    # web is allowed with AllowWithShadowDeny: the shadow rules count it (and admin) as denied.
    assert after["shadow_denied"] - before["shadow_denied"] == 2


@pytest.mark.envoy
def test_deny_wins_by_ordering_and_a_subset_matches_on_a_tag(running: MeshFiles, http: httpx.Client) -> None:
    # mesh-baseline (top-level Mesh) allows web; the reports policy (top-level MeshService) is more specific.
    denied = http.get(running.url("web", "reports", "/"))
    assert (denied.status_code, denied.text) == (403, "RBAC: access denied")
    # admin carries team: ops, which the MeshSubset rule allows although mesh-baseline denies every other client.
    allowed = http.get(running.url("admin", "reports", "/"))
    assert allowed.status_code == 200 and allowed.json()["service"] == "reports"


@pytest.mark.envoy
def test_tcp_inbound_closes_a_denied_connection(running: MeshFiles, http: httpx.Client) -> None:
    before = rbac_stats(http, running, "ledger")
    assert http.get(running.url("web", "ledger", "/")).json()["service"] == "ledger"
    with httpx.Client(trust_env=False, timeout=5.0) as fresh, pytest.raises(httpx.TransportError):
        fresh.get(running.url("admin", "ledger", "/"))
    after = rbac_stats(http, running, "ledger")
    assert after["denied"] - before["denied"] == 1


@pytest.mark.envoy
def test_on_the_egress_web_may_reach_the_external_service_and_admin_may_not(running: MeshFiles, http: httpx.Client) -> None:
    answer = http.get(running.url("web", "mes:httpbin", "/anything"))
    assert answer.status_code == 200 and answer.json()["service"] == "httpbin"
    denied = http.get(running.url("admin", "mes:httpbin", "/anything"))
    assert (denied.status_code, denied.text) == (403, "RBAC: access denied")
    counters = stats(http, running.admin["egress"], r"^http\.mes_default_httpbin\.rbac\.denied$")
    assert counters["http.mes_default_httpbin.rbac.denied"] >= 1


@pytest.mark.envoy
def test_default_forbid_denies_an_external_service_with_no_permission(running: MeshFiles, http: httpx.Client) -> None:
    for client in ("web", "admin"):
        denied = http.get(running.url(client, "mes:closed", "/anything"))
        assert (denied.status_code, denied.text) == (403, "RBAC: access denied")
    counters = stats(http, running.admin["egress"], r"^http\.mes_default_closed\.rbac\.denied$")
    assert counters["http.mes_default_closed.rbac.denied"] >= 2
