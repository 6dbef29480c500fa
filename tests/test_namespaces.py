"""Kubernetes namespaces as Kuma v2.14.3 handles them: a Kubernetes Dataplane's `metadata.namespace` (its
`k8s.kuma.io/namespace` label and inbound tag), a policy's role from its namespace and spec
(pkg/core/resources/labels/compute.go ComputePolicyRole), consumer and workload-owner policies scoped to their
namespace's dataplanes, producer policies applied to every client of their service, roles ordering the merge
(pkg/plugins/policies/core/matchers/dataplane.go), and `namespace` in a targetRef; what meshplan refuses, at file:line.
Our own inputs; on real Envoys at the end."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import Loopback

from meshplan.envoy.config_dump import ManagedResources
from meshplan.match.explain import explain_policy, explain_proxy, render_text
from meshplan.match.matcher import merge_from, rule_for, why_not
from meshplan.match.unused import warnings
from meshplan.model import NAMESPACE_TAG, Desired
from meshplan.observe.live import LiveResult, Outcome
from meshplan.plan.model import make_plan, to_json
from meshplan.plan.workflow import desired_proxies
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import (
    MESH,
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


def k8s_dataplane(name: str, namespace: str | None, service: str, address: str, calls: tuple[str, ...] = ()) -> str:
    meta = f"  namespace: {namespace}\n" if namespace is not None else ""
    outbound = "".join(f"      - port: {30000 + i}\n        tags: {{kuma.io/service: {target}}}\n"
                       for i, target in enumerate(calls))
    return (f"apiVersion: kuma.io/v1alpha1\nkind: Dataplane\nmetadata:\n  name: {name}\n{meta}"
            f"  labels: {{kuma.io/mesh: default}}\nspec:\n  networking:\n    address: {address}\n    inbound:\n"
            f"      - port: 8080\n        servicePort: 18080\n        tags: {{kuma.io/service: {service}, "
            f"kuma.io/protocol: http}}\n" + ("    outbound:\n" + outbound if calls else ""))


# backend-1 serves backend in `shop`; shop-web (in shop) and blog-web (in blog) call it and catalog (in blog).
DATAPLANES = "---\n".join([
    k8s_dataplane("backend-1", "shop", "backend", "10.0.0.1"),
    k8s_dataplane("catalog-1", "blog", "catalog", "10.0.0.2"),
    k8s_dataplane("shop-web", "shop", "shop-web", "10.0.0.3", ("backend", "catalog")),
    k8s_dataplane("blog-web", "blog", "blog-web", "10.0.0.4", ("backend", "catalog")),
])


def timeout_policy(name: str, namespace: str | None, body: str) -> str:
    meta = f"  namespace: {namespace}\n" if namespace is not None else ""
    return (f"apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata:\n  name: {name}\n{meta}"
            f"  labels: {{kuma.io/mesh: default}}\nspec:\n" + textwrap.indent(textwrap.dedent(body).lstrip("\n"), "  "))


TO_MESH = """\
    targetRef: {kind: Mesh}
    to:
      - targetRef: {kind: Mesh}
        default: {http: {requestTimeout: 1s}}
    """
TO_BACKEND = """\
    to:
      - targetRef: {kind: MeshService, name: backend}
        default: {http: {requestTimeout: 2s}}
    """
FROM_MESH = """\
    from:
      - targetRef: {kind: Mesh}
        default: {idleTimeout: 3s}
    """


def write(root: Path, *policies: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mesh.yaml").write_text(MESH)
    (root / "dataplanes.yaml").write_text(DATAPLANES)
    if policies:
        (root / "policies.yaml").write_text("---\n".join(policies))
    return root


def user_policies(desired: Desired) -> dict[str, Any]:
    return {p.name: p for p in desired.policies if not p.kuma_default}


def request_timeouts(desired: Desired) -> dict[tuple[str, str], str | None]:
    """(client, destination) -> the outbound route's timeout each client's Envoy would run."""
    found: dict[tuple[str, str], str | None] = {}
    for proxy in render_all(desired):
        for listener in proxy.listeners:
            name = listener["name"]
            if not name.startswith("outbound:"):
                continue
            text = json.dumps(listener)
            route = json.loads(text)["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            found[(proxy.name, route["virtual_hosts"][0]["name"].removeprefix("outbound:"))] = (
                route["virtual_hosts"][0]["routes"][0]["route"].get("timeout"))
    return found


# --- dataplanes -----------------------------------------------------------------------------------------------


def test_a_kubernetes_dataplane_has_its_namespace_as_kuma_labels_and_tags_it(tmp_path: Path) -> None:
    desired = load_and_parse(write(tmp_path))
    dp = next(d for d in desired.dataplanes if d.name == "shop-web")
    assert dp.namespace == "shop"
    assert dp.labels[NAMESPACE_TAG] == "shop"
    assert dp.inbounds[0].tags[NAMESPACE_TAG] == "shop"
    assert desired.service_namespace("default", "catalog") == "blog"
    assert render_text(explain_proxy(desired, "shop-web")).startswith("shop-web [sidecar] mesh default namespace shop\n")


DATAPLANE_REFUSALS = [
    ("a namespace that is no Kubernetes name", k8s_dataplane("a-1", "Shop_1", "a", "10.0.0.9"),
     ["dataplanes.yaml:5: metadata.namespace: 'Shop_1' is not a Kubernetes namespace name"]),
    ("a namespace label that disagrees", k8s_dataplane("a-1", "shop", "a", "10.0.0.9").replace(
        "labels: {kuma.io/mesh: default}", f"labels: {{kuma.io/mesh: default, {NAMESPACE_TAG}: blog}}"),
     [f"dataplanes.yaml:6: metadata.labels.{NAMESPACE_TAG}: Kuma computes this label from the dataplane's namespace, "
      "and metadata.namespace is 'shop': remove it"]),
    ("a namespace tag that disagrees", k8s_dataplane("a-1", "shop", "a", "10.0.0.9").replace(
        "kuma.io/protocol: http}", f"kuma.io/protocol: http, {NAMESPACE_TAG}: blog}}"),
     [f"dataplanes.yaml:13: spec.networking.inbound[0].tags.{NAMESPACE_TAG}: Kuma sets this tag to the dataplane's "
      "namespace, and metadata.namespace is 'shop': remove it"]),
    ("the label in universal form", "type: Dataplane\nname: a-1\nlabels: {k8s.kuma.io/namespace: shop}\nnetworking:\n"
     "  address: 10.0.0.9\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: a}\n",
     [f"dataplanes.yaml:3: labels.{NAMESPACE_TAG}: Kuma computes this label from the dataplane's namespace, and this "
      "dataplane has no namespace"]),
    ("one service in two namespaces", "---\n".join([k8s_dataplane("a-1", "shop", "a", "10.0.0.9"),
                                                  k8s_dataplane("a-2", "blog", "a", "10.0.0.10")]),
     ["dataplanes.yaml:27: spec.networking.inbound[0].tags.kuma.io/service: service 'a' has dataplanes in namespace 'shop' "
      "('a-1') and here in namespace 'blog': a service's dataplanes must share one namespace"]),
]


@pytest.mark.parametrize("text, expected", table_cases(DATAPLANE_REFUSALS))
def test_dataplane_namespaces_that_cannot_be_are_refused(tmp_path: Path, text: str, expected: list[str]) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    (tmp_path / "dataplanes.yaml").write_text(text)
    found = violations(tmp_path)
    assert len(found) == len(expected), found
    for line, want in zip(found, expected, strict=True):
        assert line.startswith(want), found


# --- roles ------------------------------------------------------------------------------------------------------

ROLES = [
    ("no namespace", None, TO_MESH, "system"),
    ("the system namespace", "kuma-system", TO_BACKEND, "system"),
    ("to Mesh", "shop", TO_MESH, "consumer"),
    ("to a service by name, in the policy's namespace", "shop", TO_BACKEND, "producer"),
    ("to a service of the same namespace, written", "shop",
     TO_BACKEND.replace("name: backend}", "name: backend, namespace: shop}"), "producer"),
    ("to a service of another namespace", "shop",
     TO_BACKEND.replace("name: backend}", "name: catalog, namespace: blog}"), "consumer"),
    ("to a service by its display-name label", "shop",
     TO_BACKEND.replace("name: backend}", "labels: {kuma.io/display-name: backend}}"), "consumer"),
    ("from", "shop", FROM_MESH, "workload-owner"),
    ("rules", "shop", "rules:\n  - default: {idleTimeout: 3s}\n", "workload-owner"),
]


@pytest.mark.parametrize("namespace, body, role", table_cases(ROLES))
def test_a_policy_gets_kumas_role_from_its_namespace_and_spec(tmp_path: Path, namespace: str | None, body: str,
                                                              role: str) -> None:
    desired = load_and_parse(write(tmp_path, timeout_policy("t", namespace, body)))
    policy = user_policies(desired)["t"]
    assert policy.role == role
    assert policy.namespace == (None if namespace in (None, "kuma-system") else namespace)


REFUSED = [
    ("to and from mixed", timeout_policy("t", "shop", textwrap.dedent(TO_MESH) + textwrap.dedent(FROM_MESH)),
     ["policies.yaml:7: spec: it's not allowed to mix 'to' and 'from' arrays in the same policy"]),
    ("producer and consumer items mixed", timeout_policy("t", "shop", textwrap.dedent(TO_BACKEND) + (
        "  - targetRef: {kind: Mesh}\n    default: {http: {requestTimeout: 1s}}\n")), ["policies.yaml:7: spec: it's not allowed to mix producer and consumer items in the same policy"]),
    ("namespace with kind Mesh", timeout_policy("t", None, TO_MESH.replace("targetRef: {kind: Mesh}\n",
                                                                            "targetRef: {kind: Mesh, namespace: shop}\n", 1)),
     ["policies.yaml:7: spec.targetRef.namespace: must not be set with kind Mesh (as Kuma: it names no resource)"]),
    ("a Dataplane by namespace alone", timeout_policy("t", None, TO_MESH.replace(
        "targetRef: {kind: Mesh}\n", "targetRef: {kind: Dataplane, namespace: shop}\n", 1)),
     ["policies.yaml:7: spec.targetRef.namespace: selects no dataplane in Kuma without a `name`"]),
    ("labels with a namespace", timeout_policy("t", None, TO_MESH.replace(
        "targetRef: {kind: Mesh}\n", "targetRef: {kind: Dataplane, labels: {app: web}, namespace: shop}\n", 1)),
     ["policies.yaml:7: spec.targetRef.labels: either labels or name and namespace must be specified (as Kuma)"]),
    ("not a namespace name", timeout_policy("t", None, TO_BACKEND.replace("name: backend}", "name: backend, namespace: A}")),
     ["policies.yaml:8: spec.to[0].targetRef.namespace: 'A' is not a Kubernetes namespace name"]),
    ("a policy namespace that is no name", timeout_policy("t", "shop.x", TO_MESH),
     ["policies.yaml:5: metadata.namespace: 'shop.x' is not a Kubernetes namespace name"]),
    ("the egress from an application namespace", timeout_policy("t", "shop", TO_MESH.replace(
        "targetRef: {kind: Mesh}\n", "targetRef: {kind: Mesh, proxyTypes: [Egress]}\n", 1)),
     ["policies.yaml:8: spec.targetRef: a consumer policy in namespace 'shop' cannot configure the egress"]),
    ("a MeshExternalService resolved in an application namespace", timeout_policy("t", "shop", """\
        targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
        to:
          - targetRef: {kind: MeshExternalService, name: httpbin}
            default: {http: {requestTimeout: 1s}}
        """), ["policies.yaml:10: spec.to[0].targetRef.name: names a MeshExternalService in namespace 'shop' (the "
               "policy's namespace (it has no `namespace`)), and Kuma keeps MeshExternalServices in the system "
               "namespace only"]),
    ("a role label that is not the computed one", timeout_policy("t", "shop", TO_MESH).replace(
        "labels: {kuma.io/mesh: default}", "labels: {kuma.io/mesh: default, kuma.io/policy-role: producer}"),
     ["policies.yaml:6: metadata.labels.kuma.io/policy-role: Kuma computes this label as the policy's role, from its "
      "namespace and spec, which is 'consumer', not 'producer': remove it"]),
    ("a namespace label on a system policy", timeout_policy("t", None, TO_MESH).replace(
        "labels: {kuma.io/mesh: default}", f"labels: {{kuma.io/mesh: default, {NAMESPACE_TAG}: shop}}"),
     [f"policies.yaml:5: metadata.labels.{NAMESPACE_TAG}: Kuma computes this label as the policy's namespace, from "
      "metadata.namespace, which is unset (a system policy), not 'shop': remove it"]),
]


@pytest.mark.parametrize("policy, expected", table_cases(REFUSED))
def test_namespaces_meshplan_cannot_honour_are_refused_at_their_line(tmp_path: Path, policy: str,
                                                                     expected: list[str]) -> None:
    found = violations(write(tmp_path, policy))
    assert len(found) == len(expected), found
    for line, want in zip(found, expected, strict=True):
        assert line.startswith(want), found


def test_same_names_in_two_namespaces_are_refused_with_why(tmp_path: Path) -> None:
    found = violations(write(tmp_path, timeout_policy("t", "shop", TO_MESH), timeout_policy("t", "blog", TO_MESH)))
    assert found == [f"policies.yaml:13: duplicate MeshTimeout 't' in mesh 'default': first defined at "
                     f"{tmp_path}/policies.yaml:1 (in namespace 'shop'; meshplan's names are unique per kind and mesh, "
                     "whatever the namespace)"], found


@pytest.mark.parametrize("kind, namespace, expected", [
    ("Mesh", "kuma-system", "metadata.namespace: must not be set: a Mesh is cluster-scoped in Kuma"),
    ("ZoneEgress", "shop", "metadata.namespace: not supported by meshplan (it would be ignored): a ZoneEgress serves "
                           "every mesh from the system namespace"),
    ("MeshExternalService", "shop", "metadata.namespace: not supported by meshplan (it would be ignored): a "
                                    "MeshExternalService lives only in the system namespace in Kuma"),
])
def test_mesh_wide_resources_refuse_an_application_namespace(tmp_path: Path, kind: str, namespace: str,
                                                             expected: str) -> None:
    spec = {"Mesh": "{}", "ZoneEgress": "{networking: {address: 10.0.0.8, port: 10002}}",
            "MeshExternalService": "{match: {type: HostnameGenerator, port: 80, protocol: http}, "
                                   "endpoints: [{address: 10.0.0.7, port: 80}]}"}[kind]
    mesh = "  labels: {kuma.io/mesh: default}\n" if kind == "MeshExternalService" else ""
    (tmp_path / "r.yaml").write_text(f"apiVersion: kuma.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: r\n"
                                     f"  namespace: {namespace}\n{mesh}spec: {spec}\n")
    found = [v for v in violations(tmp_path) if "metadata.namespace" in v]
    assert found == [f"r.yaml:5: {expected}" + found[0].split(expected, 1)[1]] if found else False, violations(tmp_path)


# --- scoping and order ------------------------------------------------------------------------------------------


def test_a_consumer_policy_configures_only_its_namespaces_dataplanes(tmp_path: Path) -> None:
    desired = load_and_parse(write(tmp_path, timeout_policy("shop-calls", "shop", TO_MESH)))
    timeouts = request_timeouts(desired)
    assert timeouts[("shop-web", "backend")] == "1s" and timeouts[("shop-web", "catalog")] == "1s"
    assert timeouts[("blog-web", "backend")] is None and timeouts[("blog-web", "catalog")] is None
    blog = next(d for d in desired.dataplanes if d.name == "blog-web")
    assert why_not(user_policies(desired)["shop-calls"], blog) == (
        "a consumer policy in namespace 'shop' configures only the dataplanes of its namespace (as Kuma), and "
        "dataplane 'blog-web' is in namespace 'blog'")
    text = render_text(explain_policy(desired, "blog-web", "MeshTimeout/shop-calls"))
    assert "not on blog-web: a consumer policy in namespace 'shop'" in text, text


def test_a_producer_policy_configures_every_client_of_its_service(tmp_path: Path) -> None:
    desired = load_and_parse(write(tmp_path, timeout_policy("backend-timeouts", "shop", TO_BACKEND)))
    timeouts = request_timeouts(desired)
    assert timeouts[("shop-web", "backend")] == "2s" and timeouts[("blog-web", "backend")] == "2s"
    assert timeouts[("shop-web", "catalog")] is None and timeouts[("blog-web", "catalog")] is None
    assert warnings(desired) == []


def test_a_producer_policy_names_a_service_of_its_own_namespace(tmp_path: Path) -> None:
    """`to: catalog` in a policy in `shop` is Kuma's MeshService catalog of namespace shop; catalog is in blog, so
    the item selects nothing (and `validate` says so)."""
    desired = load_and_parse(write(tmp_path, timeout_policy("wrong", "shop", TO_BACKEND.replace("backend", "catalog"))))
    assert all(value is None for value in request_timeouts(desired).values())
    assert [w.split(": ", 1)[1] for w in warnings(desired)] == [
        "MeshTimeout/wrong: targetRef names MeshService 'catalog' in namespace 'shop', and MeshService 'catalog' is in "
        "namespace 'blog', so it selects nothing"]
    # written with its namespace, it is catalog (and a consumer policy, of shop's dataplanes)
    fixed = load_and_parse(write(tmp_path, timeout_policy("fixed", "shop", TO_BACKEND.replace(
        "name: backend}", "name: catalog, namespace: blog}"))))
    timeouts = request_timeouts(fixed)
    assert (timeouts[("shop-web", "catalog")], timeouts[("blog-web", "catalog")]) == ("2s", None)


def test_a_workload_owner_policy_configures_its_namespaces_inbounds(tmp_path: Path) -> None:
    desired = load_and_parse(write(tmp_path, timeout_policy("inbound", "blog", FROM_MESH)))
    text = {name: render_text(explain_proxy(desired, name)) for name in ("catalog-1", "backend-1")}
    assert "MeshTimeout/inbound from[0]" in text["catalog-1"] and "[namespace 'blog' workload-owner]" in text["catalog-1"]
    assert "MeshTimeout/inbound" not in text["backend-1"]


def test_a_from_item_selects_clients_by_their_namespace(tmp_path: Path) -> None:
    """Kuma tags a Kubernetes dataplane's inbounds with its namespace: a `from` MeshSubset on that tag, or a MeshService
    with `namespace`, selects the clients of that namespace."""
    deny_blog = """\
        type: MeshTrafficPermission
        name: only-shop
        spec:
          targetRef: {kind: Dataplane, name: backend-1}
          from:
            - targetRef: {kind: Mesh}
              default: {action: Deny}
            - targetRef: {kind: MeshSubset, tags: {k8s.kuma.io/namespace: shop}}
              default: {action: Allow}
            - targetRef: {kind: MeshService, name: blog-web, namespace: blog}
              default: {action: AllowWithShadowDeny}
        """
    desired = load_and_parse(write(tmp_path, textwrap.dedent(deny_blog)))
    (policy,) = user_policies(desired).values()
    backend = next(d for d in desired.dataplanes if d.name == "backend-1")
    rules = merge_from([policy], backend, backend.inbounds[0])
    actions = {client: rule_for(rules, desired.instances("default", client)[0][1].tags).merged.conf["action"]
               for client in ("shop-web", "blog-web", "catalog")}
    assert actions == {"shop-web": "Allow", "blog-web": "AllowWithShadowDeny", "catalog": "Deny"}


def test_a_dataplane_name_resolves_in_the_policys_namespace(tmp_path: Path) -> None:
    by_name = TO_MESH.replace("targetRef: {kind: Mesh}\n", "targetRef: {kind: Dataplane, name: blog-web}\n", 1)
    desired = load_and_parse(write(tmp_path, timeout_policy("here", "blog", by_name),
                                   timeout_policy("there", "shop", by_name)))
    timeouts = request_timeouts(desired)
    assert timeouts[("blog-web", "backend")] == "1s"
    assert [w.split(": ", 1)[1] for w in warnings(desired)] == [
        "MeshTimeout/there: targetRef names Dataplane 'blog-web' in namespace 'shop', and Dataplane 'blog-web' is in "
        "namespace 'blog', so it selects nothing"]
    # in a system policy, a name is mesh-wide unless the targetRef names a namespace
    written = TO_MESH.replace("targetRef: {kind: Mesh}\n", "targetRef: {kind: Dataplane, name: blog-web, namespace: "
                              "shop}\n", 1)
    system = load_and_parse(write(tmp_path / "system", timeout_policy("mesh-wide", None, by_name),
                                  timeout_policy("written", "kuma-system", written)))
    blog = next(d for d in system.dataplanes if d.name == "blog-web")
    assert why_not(user_policies(system)["mesh-wide"], blog) is None
    assert why_not(user_policies(system)["written"], blog) == (
        "targetRef selects Dataplane 'blog-web' in namespace 'shop', and 'blog-web' is in namespace 'blog'")


def test_roles_order_the_merge_as_kuma(tmp_path: Path) -> None:
    """Same top-level kind: system, then producer, then consumer, then workload-owner; the later wins. By name alone
    (descending) `a-consumer` would merge last and `z-producer`, `zz-system` before it; here the consumer wins over the
    producer and both over the system policy, whatever their names."""
    desired = load_and_parse(write(
        tmp_path,
        timeout_policy("a-consumer", "shop", TO_MESH.replace("1s", "300ms")),
        timeout_policy("z-producer", "shop", TO_BACKEND),
        timeout_policy("zz-system", "kuma-system", TO_MESH.replace("1s", "9s"))))
    timeouts = request_timeouts(desired)
    assert timeouts[("shop-web", "backend")] == "0.300s"  # consumer over producer over system
    assert timeouts[("blog-web", "backend")] == "2s"  # producer over system (the consumer is shop's)
    assert timeouts[("blog-web", "catalog")] == "9s"  # system only
    text = render_text(explain_proxy(desired, "shop-web"))
    order = [line.strip().split(" ")[0] for line in text.splitlines() if line.startswith("    MeshTimeout/")]
    assert order[:3] == ["MeshTimeout/zz-system", "MeshTimeout/z-producer", "MeshTimeout/a-consumer"], text
    assert "MeshTimeout/a-consumer to[0] (" in text and "[namespace 'shop' consumer]" in text, text


def test_the_plan_names_the_namespace_and_role_in_its_origins(tmp_path: Path) -> None:
    desired_dir = write(tmp_path, timeout_policy("shop-calls", "shop", TO_MESH))
    proxies = desired_proxies(desired_dir)
    nothing = ManagedResources((), ())  # Envoys that run nothing yet: the plan creates every resource
    plan = make_plan(proxies, {p.name: LiveResult(p.name, p.admin_url, Outcome.OK, resources=nothing) for p in proxies})
    text = json.dumps(to_json(plan))
    assert f"MeshTimeout/shop-calls ({tmp_path}/policies.yaml:11) [namespace 'shop' consumer]" in text, text[:3000]


def test_a_mesh_service_by_labels_may_name_its_namespace(tmp_path: Path) -> None:
    def by_labels(namespace: str) -> str:
        return TO_BACKEND.replace("name: backend}", "labels: {k8s.kuma.io/service-name: catalog, "
                                  f"k8s.kuma.io/namespace: {namespace}}}}}")

    right = load_and_parse(write(tmp_path / "right", timeout_policy("t", "shop", by_labels("blog"))))
    timeouts = request_timeouts(right)
    assert (timeouts[("shop-web", "catalog")], timeouts[("blog-web", "catalog")]) == ("2s", None)
    assert user_policies(right)["t"].role == "consumer"
    wrong = load_and_parse(write(tmp_path / "wrong", timeout_policy("t", "shop", by_labels("shop"))))
    assert all(value is None for value in request_timeouts(wrong).values())
    assert [w.split(": ", 1)[1] for w in warnings(wrong)] == [
        "MeshTimeout/t: targetRef names MeshService 'catalog' in namespace 'shop', and MeshService 'catalog' is in "
        "namespace 'blog', so it selects nothing"]


def idle_timeouts(desired: Desired, destination: str) -> dict[str, str | None]:
    """Each dataplane calling `destination`: the upstream idle timeout of its cluster for it."""
    found: dict[str, str | None] = {}
    for proxy in render_all(desired):
        for cluster in proxy.clusters:
            if cluster["name"] == destination:
                options = cluster.get("typed_extension_protocol_options", {})
                http = next(iter(options.values()), {}).get("common_http_protocol_options", {})
                found[proxy.name] = http.get("idle_timeout")
    return found


def test_kumas_producer_and_consumer_example(tmp_path: Path) -> None:
    """Kuma's docs (app/_src/policies/introduction.md, "producer and consumer policies"), in our own words: client1
    in ns1, client2 and the server in ns2. The producer policy of ns2 gives both clients its idle timeout; a consumer
    policy selecting the server by Kuma's `k8s.kuma.io/service-name` label overrides it for its own namespace's
    client only."""
    dataplanes = "---\n".join([k8s_dataplane("server-1", "ns2", "server", "10.0.1.1"),
                               k8s_dataplane("client1", "ns1", "client1", "10.0.1.2", ("server",)),
                               k8s_dataplane("client2", "ns2", "client2", "10.0.1.3", ("server",))])
    producer = timeout_policy("producer-policy", "ns2", """\
        to:
          - targetRef: {kind: MeshService, name: server}
            default: {idleTimeout: 20s}
        """)

    def consumer(namespace: str, timeout: str) -> str:
        return timeout_policy(f"consumer-{namespace}", namespace, f"""\
            to:
              - targetRef:
                  kind: MeshService
                  labels: {{k8s.kuma.io/service-name: server}}
                default: {{idleTimeout: {timeout}}}
            """)

    def desired(*policies: str) -> Desired:
        root = write(tmp_path / str(len(policies)), *policies)
        (root / "dataplanes.yaml").write_text(dataplanes)
        return load_and_parse(root)

    assert idle_timeouts(desired(producer), "server") == {"client1": "20s", "client2": "20s"}
    assert idle_timeouts(desired(producer, consumer("ns1", "30s")), "server") == {"client1": "30s", "client2": "20s"}
    assert idle_timeouts(desired(producer, consumer("ns1", "30s"), consumer("ns2", "40s")), "server") == {
        "client1": "30s", "client2": "40s"}
    roles = {name: p.role for name, p in user_policies(desired(producer, consumer("ns1", "30s"))).items()}
    assert roles == {"producer-policy": "producer", "consumer-ns1": "consumer"}


# --- on real Envoys ---------------------------------------------------------------------------------------------

ENVOY_POLICIES = """\
apiVersion: kuma.io/v1alpha1
kind: MeshTimeout
metadata:
  name: shop-calls-catalog
  namespace: shop
  labels: {kuma.io/mesh: default}
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: catalog, namespace: blog}
      default: {http: {requestTimeout: 300ms}}
---
apiVersion: kuma.io/v1alpha1
kind: MeshTimeout
metadata:
  name: backend-timeout
  namespace: shop
  labels: {kuma.io/mesh: default}
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default: {http: {requestTimeout: 300ms}}
"""
NAMESPACES = {"backend-1": "shop", "shop-web": "shop", "catalog-1": "blog", "blog-web": "blog"}


def two_namespaces(root: Path, addresses: Addresses) -> MeshFiles:
    """The mesh above on loopback: write_mesh's universal dataplanes rewritten in Kubernetes form, each in its
    namespace; a consumer policy of shop towards catalog, and a producer policy of shop for backend."""
    services = [Service("backend", instance="backend-1"), Service("catalog", instance="catalog-1"),
                Service("shop-web", calls=("backend", "catalog"), instance="shop-web"),
                Service("blog-web", calls=("backend", "catalog"), instance="blog-web")]
    files = write_mesh(root, addresses, services, policies=ENVOY_POLICIES)
    docs = []
    for doc in yaml.safe_load_all((root / "dataplanes.yaml").read_text()):
        docs.append({"apiVersion": "kuma.io/v1alpha1", "kind": "Dataplane",
                     "metadata": {"name": doc["name"], "namespace": NAMESPACES[doc["name"]],
                                  "labels": {"kuma.io/mesh": doc["mesh"]}},
                     "spec": {"networking": doc["networking"]}})
    (root / "dataplanes.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return files


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, loopback: Loopback) -> Iterator[MeshFiles]:
    yield from running_mesh(tmp_path_factory.mktemp("namespaces"), lambda d: two_namespaces(d, loopback))


@pytest.mark.envoy
def test_a_consumer_policy_times_out_its_namespaces_client_only(running: MeshFiles, http: httpx.Client) -> None:
    assert_timed_out(http, running, "shop-web", "catalog")
    assert_answered_slowly(http, running, "blog-web", "catalog")


@pytest.mark.envoy
def test_a_producer_policy_times_out_every_client_of_its_service(running: MeshFiles, http: httpx.Client) -> None:
    for client in ("shop-web", "blog-web"):
        assert_timed_out(http, running, client, "backend")
