"""MeshProxyPatch: its validation table (Kuma's rules, meshplan's origins), where each modification lands and who it
is attributed to, the egress rejection, the behaviour aspect, and a patch on real Envoys (config dump and traffic)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshplan.errors import LoadError
from meshplan.match.behaviour import changes, facts
from meshplan.match.explain import explain_policy, explain_proxy, render_text
from meshplan.match.result import match_proxy
from meshplan.model import ProxyConfig
from meshplan.policies.registry import KINDS
from meshplan.validate.resources import load_and_parse
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    assert_violation_reported,
    running_mesh,
    table_cases,
    violations,
    web_calling,
    write_mesh,
)
from tests.policy_render import envoy_validates
from tests.policy_tables import MARK

HEAD = """\
type: MeshProxyPatch
mesh: default
name: p
spec:
  targetRef:
    kind: Mesh
  default:
    appendModifications:
"""
FIRST = 9  # the file line of the body's first line


def patch_file(body: str, head: str = HEAD) -> str:
    lines = textwrap.dedent(body).strip("\n").splitlines()
    return head + "".join(f"      {line}\n" for line in lines)


def marked(body: str) -> int:
    lines = textwrap.dedent(body).strip("\n").splitlines()
    found = [i for i, line in enumerate(lines) if line.rstrip().endswith(MARK)]
    assert len(found) == 1
    return FIRST + found[0]


FILTER = """|
      name: envoy.filters.http.header_mutation
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
        mutations: {response_mutations: [{append: {header: {key: x-a, value: b}}}]}"""

GOOD = [
    ("cluster patch by value", "- cluster:\n    operation: Patch\n    match: {name: backend}\n"
                               "    value: 'connect_timeout: 3s'"),
    ("cluster patch camelCase value", "- cluster:\n    operation: Patch\n    value: 'connectTimeout: 3s'"),
    ("cluster json patch", "- cluster:\n    operation: Patch\n    match: {origin: outbound}\n    jsonPatches:\n"
                           "      - {op: replace, path: /connectTimeout, value: 3s}\n"
                           "      - {op: copy, from: /name, path: /alt_stat_name}"),
    ("cluster add", "- cluster:\n    operation: Add\n    value: |\n      name: x\n      connect_timeout: 1s"),
    ("cluster remove", "- cluster:\n    operation: Remove\n    match: {name: db}"),
    ("listener patch", "- listener:\n    operation: Patch\n    match: {origin: inbound}\n"
                       "    value: 'per_connection_buffer_limit_bytes: 1024'"),
    ("listener remove", "- listener:\n    operation: Remove\n    match: {name: 'outbound:127.0.9.3:10001'}"),
    ("http filter add first", f"- httpFilter:\n    operation: AddFirst\n    value: {FILTER}"),
    ("http filter add after", f"- httpFilter:\n    operation: AddAfter\n    match: {{name: envoy.filters.http.rbac}}\n"
                              f"    value: {FILTER}"),
    ("http filter remove", "- httpFilter:\n    operation: Remove\n    match: {name: envoy.filters.http.rbac}"),
    ("network filter patch", "- networkFilter:\n    operation: Patch\n    match:\n"
                             "      name: envoy.filters.network.tcp_proxy\n      listenerName: 'outbound:127.0.9.3:10002'\n"
                             "    jsonPatches: [{op: add, path: /typed_config/idle_timeout, value: 9s}]"),
    ("virtual host add", "- virtualHost:\n    operation: Add\n    match: {routeConfigurationName: 'outbound:backend'}\n"
                         "    value: |\n      name: extra\n      domains: [extra.local]"),
]

# (case, body with the offending line marked, or the line itself, the path, a fragment of the message)
BAD: list[tuple[str, str, int | None, str, str]] = [
    ("two modifications", f"- cluster: {{operation: Remove}} {MARK}\n  listener: {{operation: Remove}}", None,
     "spec.default.appendModifications[0]", "exactly one modification can be defined at a time"),
    ("none", f"- {{}} {MARK}", None, "spec.default.appendModifications[0]", "0 are defined"),
    ("unknown modification", f"- route: {{operation: Remove}} {MARK}", None,
     "spec.default.appendModifications[0].route", "unknown field"),
    ("cluster AddFirst", f"- cluster:\n    operation: AddFirst {MARK}\n    value: 'name: x'", None,
     "spec.default.appendModifications[0].cluster.operation", "must be one of Add, Patch, Remove"),
    ("no operation", f"- cluster: {MARK}\n    match: {{name: x}}", None,
     "spec.default.appendModifications[0].cluster", "`operation` is required"),
    ("add without value", f"- cluster: {MARK}\n    operation: Add", None,
     "spec.default.appendModifications[0].cluster", "`value` is required for Add"),
    ("add with match", f"- cluster:\n    operation: Add\n    match: {{name: x}} {MARK}\n    value: 'name: x'", None,
     "spec.default.appendModifications[0].cluster.match", "must not be defined"),
    ("remove with value", f"- listener:\n    operation: Remove\n    value: 'name: x' {MARK}", None,
     "spec.default.appendModifications[0].listener.value", "must not be defined for a Remove"),
    ("patch with both", f"- cluster: {MARK}\n    operation: Patch\n    value: 'name: x'\n"
                        "    jsonPatches: [{op: remove, path: /name}]", None,
     "spec.default.appendModifications[0].cluster", "set `value` or `jsonPatches`, not both"),
    ("patch with neither", f"- cluster: {MARK}\n    operation: Patch", None,
     "spec.default.appendModifications[0].cluster", "exactly one of `value` and `jsonPatches`"),
    ("not a cluster", f"- cluster:\n    operation: Patch\n    value: 'connect_timeouts: 1s' {MARK}", None,
     "spec.default.appendModifications[0].cluster.value", "native Envoy resource is not valid"),
    ("wrong field type", f"- listener:\n    operation: Add\n    value: 'name: [1]' {MARK}", None,
     "spec.default.appendModifications[0].listener.value", "native Envoy resource is not valid"),
    ("unknown Any type", f"- httpFilter:\n    operation: AddFirst\n    value: |- {MARK}\n"
                         "      name: f\n      typed_config: {'@type': type.googleapis.com/no.Such}", None,
     "spec.default.appendModifications[0].httpFilter.value", "unknown resource type"),
    ("added cluster without a name", f"- cluster:\n    operation: Add\n    value: 'connect_timeout: 1s' {MARK}", None,
     "spec.default.appendModifications[0].cluster.value", "an added cluster needs a `name`"),
    ("value not YAML", f"- cluster:\n    operation: Patch\n    value: '{{a' {MARK}", None,
     "spec.default.appendModifications[0].cluster.value", "not YAML"),
    ("add before without name", f"- httpFilter: {MARK}\n    operation: AddBefore\n    value: {FILTER}", None,
     "spec.default.appendModifications[0].httpFilter", "`match.name` must be defined"),
    ("filter patch without name", f"- networkFilter: {MARK}\n    operation: Patch\n    value: 'name: x'", None,
     "spec.default.appendModifications[0].networkFilter", "`match.name` is required"),
    ("origin of nothing here", f"- cluster:\n    operation: Remove\n    match: {{origin: prometheus}} {MARK}", None,
     "spec.default.appendModifications[0].cluster.match.origin", "no Prometheus endpoint"),
    ("unknown origin", f"- listener:\n    operation: Remove\n    match: {{origin: mesh-trace}} {MARK}", None,
     "spec.default.appendModifications[0].listener.match.origin", "has no meaning here"),
    ("listener tags not a mapping", f"- listener:\n    operation: Remove\n    match: {{tags: [a]}} {MARK}", None,
     "spec.default.appendModifications[0].listener.match.tags", "must be a mapping"),
    ("listener tag value not a string", f"- httpFilter:\n    operation: Remove\n    match:\n"
                                        f"      listenerTags: {{port: 8080}} {MARK}",
     None, "spec.default.appendModifications[0].httpFilter.match.listenerTags.port", "tag values must be strings"),
    ("cluster match field of listeners", f"- cluster:\n    operation: Remove\n    match: {{listenerName: x}} {MARK}",
     None, "spec.default.appendModifications[0].cluster.match.listenerName", "unknown field"),
    ("bad json patch op", f"- cluster:\n    operation: Patch\n    jsonPatches:\n      - {{op: merge, path: /a}} {MARK}",
     None, "spec.default.appendModifications[0].cluster.jsonPatches[0].op", "must be one of add, remove"),
    ("json patch add without value", f"- cluster:\n    operation: Patch\n    jsonPatches:\n      - {{op: add, path: /a}} {MARK}",
     None, "spec.default.appendModifications[0].cluster.jsonPatches[0]", "`value` is required for add"),
    ("json patch move without from", f"- cluster:\n    operation: Patch\n    jsonPatches:\n      - {{op: move, path: /a}} {MARK}",
     None, "spec.default.appendModifications[0].cluster.jsonPatches[0]", "`from` is required for move"),
    ("json patch path not a pointer", f"- cluster:\n    operation: Patch\n    jsonPatches:\n"
                                      f"      - op: remove\n        path: name {MARK}",
     None, "spec.default.appendModifications[0].cluster.jsonPatches[0].path", "must be a JSON pointer"),
]


@pytest.fixture(scope="module")
def base_mesh(tmp_path_factory: pytest.TempPathFactory) -> MeshFiles:
    return write_mesh(tmp_path_factory.mktemp("patch-validate"), FixedAddresses(per_address=True),
                      web_calling(tcp=("db",)), externals={"httpbin": "http"})


@pytest.mark.parametrize("body", table_cases((case, body) for case, body in GOOD))
def test_good_specs_pass(base_mesh: MeshFiles, body: str) -> None:
    assert violations(base_mesh.write({"p.yaml": patch_file(body)})) == []


@pytest.mark.parametrize("body, line, path, message", table_cases(BAD))
def test_bad_specs_report_file_line_and_path(base_mesh: MeshFiles, body: str, line: int | None, path: str,
                                            message: str) -> None:
    found = violations(base_mesh.write({"p.yaml": patch_file(body)}))
    assert_violation_reported(found, "p.yaml", line or marked(body), path, message)


def test_empty_and_missing_default(base_mesh: MeshFiles) -> None:
    empty = violations(base_mesh.write({"p.yaml": HEAD.replace("    appendModifications:\n", "    appendModifications: []\n")}))
    assert empty == ["p.yaml:8: spec.default.appendModifications: must not be empty"]
    missing = violations(base_mesh.write({"p.yaml": HEAD.replace("  default:\n    appendModifications:\n", "")}))
    assert len(missing) == 1 and "spec.default: must not be empty: set `appendModifications`" in missing[0], missing


def test_every_violation_at_once(base_mesh: MeshFiles) -> None:
    body = "- cluster: {operation: Add}\n- listener: {operation: Frob}\n- httpFilter: {operation: Remove, value: x}"
    found = violations(base_mesh.write({"p.yaml": patch_file(body)}))
    assert [v.split(": ")[1] for v in found] == [
        "spec.default.appendModifications[0].cluster",
        "spec.default.appendModifications[1].listener.operation",
        "spec.default.appendModifications[2].httpFilter.value",
    ], found


def test_rejected_on_the_egress_with_the_placement_words(base_mesh: MeshFiles) -> None:
    head = HEAD.replace("    kind: Mesh\n", "    kind: Mesh\n    proxyTypes: [Egress]\n")
    found = violations(base_mesh.write({"p.yaml": patch_file("- cluster: {operation: Remove}", head)}))
    assert found == ["p.yaml:7: spec.targetRef.proxyTypes: MeshProxyPatch is not implemented on the egress; the placement table "
                     "says MeshProxyPatch for a MeshExternalService is implemented on: Out of scope (single item)"]


# --- where it lands -------------------------------------------------------------------------------------------


def render_with(base: MeshFiles, body: str, head: str = HEAD) -> dict[str, ProxyConfig]:
    base.write({"p.yaml": patch_file(body, head)})
    try:
        return base.proxies()
    finally:
        (base.root / "p.yaml").unlink()


def outbound_to(proxy: ProxyConfig, service: str) -> dict[str, Any]:
    """The outbound listener whose HTTP route configuration is the service's."""
    return next(li for li in proxy.listeners if li["name"].startswith("outbound:")
                and li["filter_chains"][0]["filters"][0]["typed_config"].get("route_config", {}).get("name")
                == f"outbound:{service}")


def _filters(listener: dict[str, Any]) -> list[str]:
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return [f["name"] for f in manager["http_filters"]]


def test_origins_select_inbound_or_outbound_resources(base_mesh: MeshFiles) -> None:
    proxies = render_with(base_mesh, "- cluster:\n    operation: Patch\n    match: {origin: inbound}\n"
                                     "    value: 'connect_timeout: 9s'")
    web = proxies["web"]
    timeouts = {c["name"]: c["connect_timeout"] for c in web.clusters}
    assert [n for n, t in timeouts.items() if t == "9s"] == [n for n in timeouts if n.startswith("local:")]
    assert proxies["egress"].clusters == base_mesh.proxies()["egress"].clusters  # never the egress


def test_filters_are_placed_and_removed_by_name(base_mesh: MeshFiles) -> None:
    body = (f"- httpFilter:\n    operation: AddBefore\n    match: {{name: envoy.filters.http.router, origin: inbound}}\n"
            f"    value: {FILTER}\n"
            "- httpFilter:\n    operation: AddFirst\n    match: {origin: inbound}\n"
            "    value: |\n      name: first\n      typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer, max_request_bytes: 10}\n"
            "- httpFilter:\n    operation: Remove\n    match: {name: first}")
    web = render_with(base_mesh, body)["web"]
    inbound = next(li for li in web.listeners if li["name"].startswith("inbound:"))
    assert _filters(inbound) == ["envoy.filters.http.header_mutation", "envoy.filters.http.router"]
    assert _filters(outbound_to(web, "backend")) == ["envoy.filters.http.router"]


def test_listener_tags_match_what_kuma_tags_each_listener_with(base_mesh: MeshFiles) -> None:
    """Kuma's `io.kuma.tags`: an inbound listener has its inbound's tags, an outbound listener its outbound's tags
    (kuma.io/service of the destination); `*` matches any value of a tag the listener has."""
    body = (f"- httpFilter:\n    operation: AddFirst\n    match: {{listenerTags: {{kuma.io/service: web}}}}\n"
            f"    value: {FILTER}\n"
            "- listener:\n    operation: Patch\n    match: {tags: {kuma.io/service: backend}}\n"
            "    value: 'per_connection_buffer_limit_bytes: 4096'\n"
            "- networkFilter:\n    operation: Patch\n    match:\n      name: envoy.filters.network.tcp_proxy\n"
            "      listenerTags: {kuma.io/service: '*'}\n"
            "    jsonPatches: [{op: add, path: /typedConfig/idleTimeout, value: 7s}]\n"
            "- listener:\n    operation: Patch\n    match: {tags: {kuma.io/service: nobody}}\n"
            "    value: 'per_connection_buffer_limit_bytes: 1'")
    proxies = render_with(base_mesh, body)
    web = proxies["web"]
    inbound = next(li for li in web.listeners if li["name"].startswith("inbound:"))
    assert _filters(inbound)[0] == "envoy.filters.http.header_mutation"  # web's inbound carries kuma.io/service: web
    assert all(_filters(li)[0] != "envoy.filters.http.header_mutation"
               for li in web.listeners if li["name"].startswith("outbound:")
               and "http_filters" in li["filter_chains"][0]["filters"][0]["typed_config"])
    buffers = {li["name"]: li.get("per_connection_buffer_limit_bytes") for li in web.listeners}
    assert [n for n, b in buffers.items() if b is not None] == [outbound_to(web, "backend")["name"]]
    assert buffers[outbound_to(web, "backend")["name"]] == 4096
    tcp = [li for li in web.listeners
           if li["filter_chains"][0]["filters"][0]["name"] == "envoy.filters.network.tcp_proxy"]
    assert tcp and all(li["filter_chains"][0]["filters"][0]["typed_config"]["idle_timeout"] == "7s" for li in tcp)
    backend = proxies["backend-1"]
    assert all(_filters(li)[0] != "envoy.filters.http.header_mutation" for li in backend.listeners
               if li["name"].startswith("inbound:"))


def test_an_added_cluster_is_of_neither_origin(base_mesh: MeshFiles) -> None:
    """Kuma gives an added resource the origin `proxy-template-modifications`: a later `origin: outbound` patch
    reaches the service clusters but not the added one, which a match by name alone does reach."""
    body = ("- cluster:\n    operation: Add\n    value: |\n      name: extra\n      connect_timeout: 1s\n"
            "- cluster:\n    operation: Patch\n    match: {origin: outbound}\n    value: 'connect_timeout: 8s'\n"
            "- cluster:\n    operation: Patch\n    match: {name: extra}\n    value: 'alt_stat_name: extra-stats'")
    web = render_with(base_mesh, body)["web"]
    clusters = {c["name"]: c for c in web.clusters}
    assert clusters["extra"]["connect_timeout"] == "1s" and clusters["extra"]["alt_stat_name"] == "extra-stats"
    assert clusters["backend"]["connect_timeout"] == "8s"


def test_merge_appends_lists_and_replaces_an_any(base_mesh: MeshFiles) -> None:
    body = ("- virtualHost:\n    operation: Patch\n    match: {routeConfigurationName: 'outbound:backend'}\n"
            "    value: |\n      domains: [extra.local]\n")
    web = render_with(base_mesh, body)["web"]
    outbound = outbound_to(web, "backend")
    hosts = outbound["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
    assert hosts[0]["domains"] == ["*", "extra.local"]
    origins = web.origins["listener"][outbound["name"]]
    assert origins[("filter_chains", 0, "filters", 0, "typed_config", "route_config", "virtual_hosts", 0, "domains")] \
        == [f"MeshProxyPatch/p ({base_mesh.root}/p.yaml:9)"]


def test_more_specific_policies_patch_last(base_mesh: MeshFiles) -> None:
    mesh_wide = patch_file("- cluster:\n    operation: Patch\n    match: {name: backend}\n    value: 'connect_timeout: 1s'")
    one = patch_file("- cluster:\n    operation: Patch\n    match: {name: backend}\n    value: 'connect_timeout: 2s'",
                     HEAD.replace("name: p\n", "name: a\n").replace("    kind: Mesh\n", "    kind: Dataplane\n    name: web\n"))
    base_mesh.write({"p.yaml": mesh_wide, "q.yaml": one})
    try:
        web = base_mesh.proxies()["web"]
    finally:
        (base_mesh.root / "p.yaml").unlink()
        (base_mesh.root / "q.yaml").unlink()
    backend = next(c for c in web.clusters if c["name"] == "backend")
    assert backend["connect_timeout"] == "2s"
    assert web.origins["cluster"]["backend"][("connect_timeout",)] == [f"MeshProxyPatch/a ({base_mesh.root}/q.yaml:10)"]


def test_a_json_patch_that_cannot_apply_is_an_error_at_its_line(base_mesh: MeshFiles) -> None:
    body = "- cluster:\n    operation: Patch\n    match: {name: backend}\n    jsonPatches:\n      - {op: remove, path: /no/such}"
    with pytest.raises(LoadError) as raised:
        render_with(base_mesh, body)
    assert str(raised.value) == (f"{base_mesh.root}/p.yaml:13: cluster.jsonPatches[0]: cannot apply to 'backend': "
                                 "no field 'no'")


def test_a_patch_that_breaks_the_resource_is_an_error(base_mesh: MeshFiles) -> None:
    body = "- cluster:\n    operation: Patch\n    match: {name: backend}\n    jsonPatches:\n      - {op: add, path: /nope, value: 1}"
    with pytest.raises(LoadError) as raised:
        render_with(base_mesh, body)
    assert f"{base_mesh.root}/p.yaml:9: the patched cluster 'backend' is no longer a valid Envoy resource" \
        in str(raised.value)



def test_a_filter_patch_merges_into_the_filters_typed_config(base_mesh: MeshFiles) -> None:
    """As Kuma's MergeAnys: a filter's `typed_config` of the same type is merged into, not replaced (the TCP proxy
    keeps its cluster and stat prefix); of another type, the patch is an error at its line."""
    body = ("- networkFilter:\n    operation: Patch\n    match: {name: envoy.filters.network.tcp_proxy}\n"
            "    value: |\n      name: envoy.filters.network.tcp_proxy\n      typedConfig:\n"
            "        '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n"
            "        idleTimeout: 11s")
    before = next(li for li in base_mesh.proxies()["web"].listeners
                  if li["filter_chains"][0]["filters"][0]["name"] == "envoy.filters.network.tcp_proxy")
    web = render_with(base_mesh, body)["web"]
    after = next(li for li in web.listeners if li["name"] == before["name"])
    config = after["filter_chains"][0]["filters"][0]["typed_config"]
    assert config == {**before["filter_chains"][0]["filters"][0]["typed_config"], "idle_timeout": "11s"}
    other = body.replace("tcp_proxy.v3.TcpProxy", "http_connection_manager.v3.HttpConnectionManager").replace(
        "idleTimeout: 11s", "statPrefix: x")
    with pytest.raises(LoadError) as raised:
        render_with(base_mesh, other)
    assert f"{base_mesh.root}/p.yaml:9: cannot patch networkFilter 'envoy.filters.network.tcp_proxy': its " \
        "typed_config is a type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" \
        in str(raised.value)

# --- real Envoys ----------------------------------------------------------------------------------------------

TRAFFIC_POLICIES = """
    type: MeshTrafficPermission
    mesh: default
    name: deny-all
    spec:
      targetRef: {kind: Mesh}
      from:
        - {targetRef: {kind: Mesh}, default: {action: Deny}}
    ---
    type: MeshProxyPatch
    mesh: default
    name: web-patches
    spec:
      targetRef:
        kind: Dataplane
        name: web
      default:
        appendModifications:
          - cluster:
              operation: Patch
              match:
                name: backend
              value: |
                connect_timeout: 2.5s
          - httpFilter:
              operation: AddBefore
              match:
                name: envoy.filters.http.router
                origin: outbound
              value: |
                name: envoy.filters.http.header_mutation
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
                  mutations:
                    response_mutations:
                      - append:
                          header: {key: x-patched, value: web}
    ---
    type: MeshProxyPatch
    mesh: default
    name: backend-open
    spec:
      targetRef:
        kind: Dataplane
        name: backend-1
      default:
        appendModifications:
          - httpFilter:
              operation: Remove
              match:
                name: envoy.filters.http.rbac
    """


def _traffic_mesh(desired: Path, loopback: Addresses) -> MeshFiles:
    mesh = write_mesh(desired, loopback, web_calling(http=("backend", "other")))
    mesh.write_policies(TRAFFIC_POLICIES)
    return mesh


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory, loopback: Addresses) -> Iterator[MeshFiles]:
    yield from running_mesh(tmp_path_factory.mktemp("patch-traffic"), lambda desired: _traffic_mesh(desired, loopback))


def dynamic(http: httpx.Client, admin: str, section: str) -> list[dict[str, Any]]:
    dump = http.get(f"{admin}/config_dump", params={"resource": section}).json()
    return [entry["cluster"] if "cluster" in entry else entry["active_state"]["listener"] for entry in dump["configs"]]


@pytest.mark.envoy
def test_patched_cluster_and_added_filter_in_config_dump(traffic: MeshFiles, http: httpx.Client) -> None:
    clusters = {c["name"]: c for c in dynamic(http, traffic.admin["web"], "dynamic_active_clusters")}
    assert clusters["backend"]["connect_timeout"] == "2.500s"
    assert clusters["other"]["connect_timeout"] != "2.500s"
    listeners = dynamic(http, traffic.admin["web"], "dynamic_listeners")
    outbound = [li for li in listeners if li["name"].startswith("outbound:")]
    assert len(outbound) == 2
    for listener in outbound:
        assert _filters(listener)[-2:] == ["envoy.filters.http.header_mutation", "envoy.filters.http.router"]
    backend = dynamic(http, traffic.admin["backend-1"], "dynamic_listeners")
    inbound = next(li for li in backend if li["name"].startswith("inbound:"))
    assert "envoy.filters.http.rbac" not in _filters(inbound)


@pytest.mark.envoy
def test_patches_act_on_real_traffic(traffic: MeshFiles, http: httpx.Client) -> None:
    # The Deny of every client holds on `other`; on backend-1 the patch removed the RBAC filter that enforces it.
    denied = http.get(traffic.url("web", "other"))
    assert denied.status_code == 403
    assert denied.headers.get("x-patched") == "web"  # web's added filter runs on every outbound answer
    allowed = http.get(traffic.url("web", "backend"))
    assert allowed.status_code == 200 and allowed.json()["service"] == "backend"
    assert allowed.headers.get("x-patched") == "web"


@pytest.mark.envoy
def test_golden_input_passes_envoy_validate(tmp_path: Path) -> None:
    desired = load_and_parse(Path(__file__).parent / "testdata" / "proxy_patch.input")
    assert envoy_validates(desired, tmp_path) == dict.fromkeys(desired.proxy_names())


# --- behaviour and explain ------------------------------------------------------------------------------------


def test_behaviour_and_explain_say_the_proxy_is_patched(base_mesh: MeshFiles) -> None:
    body = ("- cluster:\n    operation: Patch\n    match: {name: backend}\n    value: 'connect_timeout: 3s'\n"
            "- cluster:\n    operation: Remove\n    match: {name: nothing-by-this-name}")
    base_mesh.write({"p.yaml": patch_file(body)})
    try:
        desired = base_mesh.load()
        web = next(d for d in desired.dataplanes if d.name == "web")
        patched = [f for f in facts(desired, match_proxy(desired, web, KINDS), web) if f.aspect == "patch"]
        explained = render_text(explain_proxy(desired, "web"))
        on_policy = render_text(explain_policy(desired, "web", "MeshProxyPatch/p"))
        egress = render_text(explain_policy(desired, "egress", "MeshProxyPatch/p"))
    finally:
        (base_mesh.root / "p.yaml").unlink()
    assert [(f.client, f.destination) for f in patched] == [("web", "(proxy web)")]
    assert patched[0].origins == (f"MeshProxyPatch/p ({base_mesh.root}/p.yaml:1)",)
    assert [c.aspect for c in changes([], patched)] == ["patch"]
    assert "MeshProxyPatch default the proxy (last, after every other kind)" in explained
    assert "appendModifications[0]: {\"cluster\"" in explained
    assert f"# MeshProxyPatch/p ({base_mesh.root}/p.yaml:9)\n" in explained
    assert "lands on the whole proxy" in on_policy
    assert "lands nowhere on this proxy" in egress and "never the egress" in egress
