"""Kuma's documentation examples (kumahq/kuma-website, app/_src/policies/*.md, the 2.9+/2.10+ tabs), rewritten in our
own words in tests/data/kuma-docs/<kind>.yaml: each keeps the example's construct (targetRef kinds, sections, fields,
value shapes) with our own names and values, and cites the page and heading it follows.

Each example is written in universal form and, as the docs' `policy_yaml` tag derives its Kubernetes tab from the same
YAML (type -> kind, name -> metadata.name, the namespace, mesh -> the `kuma.io/mesh` label), in Kubernetes form too,
into a small desired mesh whose services carry the names the example refers to. Each is loaded, validated and
rendered: either accepted (and, where it selects by `labels`, applied to exactly the proxies Kuma selects; where it
says `renders`, with those fields in the rendered configuration) or refused with the exact violations (file:line,
field path, reason) of a difference docs/policies.md lists."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import FixedAddresses, Service, split_violation, violations, write_mesh

DATA = Path(__file__).parent / "data" / "kuma-docs"
FORMS = ("universal", "kubernetes")
SYSTEM = "kuma-system"


@dataclass(frozen=True)
class Example:
    kind: str  # the data file's stem
    page: str
    heading: str
    policy: str  # universal form, as written in the data file
    services: list[dict[str, Any]]
    labels: dict[str, dict[str, str]]  # dataplane -> its resource labels
    refused: str  # why meshplan refuses it ("" when accepted)
    expected: list[list[str]]  # refused: [field path, fragment of the reason, text on the line it points at]
    selects: list[str] | None  # accepted: the proxies the policy applies to (None: not asserted)
    egress: bool  # the mesh has a zone egress (for a MeshExternalService example)
    inbound_names: dict[str, str]  # dataplane -> the name of its inbound (for a sectionName)
    inbound_ports: dict[str, int]  # dataplane -> the port of its inbound (for a backendRef's `port`)
    renders: list[list[Any]]  # accepted: [proxy, cluster | listener, name (a glob), dotted path (`*` maps), value]
    namespace: str  # the docs' `policy_yaml namespace=`: the Kubernetes form's, its dataplanes' too
    context: str = ""  # another resource of the example (universal form), e.g. the MeshHTTPRoute a policy targets


def load_examples() -> list[Example]:
    examples = []
    for path in sorted(DATA.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            examples.append(Example(path.stem, doc["page"], doc["heading"], doc["policy"], doc["services"],
                                    doc.get("labels", {}), doc.get("refused", ""), doc.get("violations", []),
                                    doc.get("selects"), doc.get("egress", False),
                                    doc.get("inbound_names", {}), doc.get("inbound_ports", {}),
                                    doc.get("renders", []), doc.get("namespace", SYSTEM), doc.get("context", "")))
    return examples


EXAMPLES = load_examples()


def kubernetes_form(universal: str, namespace: str = SYSTEM) -> str:
    """The Kubernetes tab the docs derive from the universal YAML: the resource's type becomes `kind`, its name and
    the namespace go into `metadata`, its mesh into the `kuma.io/mesh` label; `spec` is unchanged but for a `to`
    MeshService with `sectionName`, which names its namespace (the website's MeshServiceTargetRefTransformer)."""
    doc = yaml.safe_load(universal)
    for item in doc["spec"].get("to", []) if namespace != SYSTEM else []:
        ref = item.get("targetRef", {})
        if ref.get("kind") == "MeshService" and "sectionName" in ref:
            item["targetRef"] = {"kind": ref["kind"], "name": ref["name"], "namespace": namespace,
                                 **{k: v for k, v in ref.items() if k not in ("kind", "name")}}
    labels = dict(doc.get("labels", {}))
    labels["kuma.io/mesh"] = doc["mesh"]
    metadata = {"name": doc["name"], "namespace": namespace, "labels": labels}
    out = {"apiVersion": "kuma.io/v1alpha1", "kind": doc["type"], "metadata": metadata, "spec": doc["spec"]}
    return yaml.safe_dump(out, sort_keys=False)


def build(tmp_path: Path, example: Example, form: str) -> tuple[Path, str]:
    """The example's small mesh with the policy in `form`; returns the directory and the policy's text."""
    services = [Service(s["name"], s.get("protocol", "http"), dict(s.get("tags", {})), tuple(s.get("calls", ())),
                        s.get("instance")) for s in example.services]  # fmt: skip
    text = example.policy if form == "universal" else kubernetes_form(example.policy, example.namespace)
    externals = {}
    if example.egress:  # write_mesh's egress, with the example's MeshExternalService in place of its own
        externals = {c[4:]: "http" for s in services for c in s.calls if c.startswith("mes:")}
    files = write_mesh(tmp_path / "mesh", FixedAddresses(), services, externals=externals)
    if example.egress:
        egress_only = (files.root / "external.yaml").read_text().split("---\n")[0]
        (files.root / "external.yaml").write_text(egress_only)
    (files.root / "policies.yaml").write_text(text)
    if example.context:  # in the same form as the policy, in a file of its own
        context = example.context if form == "universal" else kubernetes_form(example.context)
        (files.root / "context.yaml").write_text(context)
    dataplanes = files.root / "dataplanes.yaml"
    written = dataplanes.read_text()
    for name, labels in example.labels.items():
        block = "".join(f"  {key}: {value!r}\n".replace("'", '"') for key, value in labels.items())
        assert f"name: {name}\n" in written, name
        written = written.replace(f"name: {name}\n", f"name: {name}\nlabels:\n{block}", 1)
    for name, port in example.inbound_ports.items():  # each dataplane has an address of its own
        docs = written.split("---\n")
        docs = [re.sub(r"    - port: \d+\n", f"    - port: {port}\n", d, count=1) if f"name: {name}\n" in d else d
                for d in docs]  # fmt: skip
        written = "---\n".join(docs)
    for name, inbound in example.inbound_names.items():
        docs = written.split("---\n")
        docs = [d.replace("    - port: ", f"    - name: {inbound}\n      port: ", 1) if f"name: {name}\n" in d else d
                for d in docs]  # fmt: skip
        written = "---\n".join(docs)
    if form == "kubernetes" and example.namespace != SYSTEM:  # the example's services live in its namespace
        written = yaml.safe_dump_all([kubernetes_dataplane(d, example.namespace) for d in yaml.safe_load_all(written)],
                                     sort_keys=False)
    dataplanes.write_text(written)
    return files.root, text


def kubernetes_dataplane(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    labels = {**doc.get("labels", {}), "kuma.io/mesh": doc["mesh"]}
    return {"apiVersion": "kuma.io/v1alpha1", "kind": "Dataplane",
            "metadata": {"name": doc["name"], "namespace": namespace, "labels": labels},
            "spec": {"networking": doc["networking"]}}


def policy_ref(text: str) -> str:
    doc = yaml.safe_load(text)
    return f"{doc.get('type') or doc['kind']}/{doc.get('name') or doc['metadata']['name']}"


def applied_to(root: Path, ref: str) -> list[str]:
    """The proxies whose rendered configuration carries a field this policy set (for a MeshExternalService: the
    proxies with a cluster of it)."""
    from meshplan.render.proxies import render_all
    from meshplan.validate.resources import load_and_parse

    found = []
    for proxy in render_all(load_and_parse(root)):
        origins = [o for resources in proxy.origins.values() for paths in resources.values()
                   for names in paths.values() for o in names]  # fmt: skip
        kind, _, name = ref.partition("/")
        if kind == "MeshExternalService":
            if any(name in cluster["name"] for cluster in proxy.clusters):
                found.append(proxy.name)
        elif any(o.startswith(f"{ref} (") for o in origins):
            found.append(proxy.name)
    return sorted(found)


def rendered_field(root: Path, proxy: str, kind: str, name: str, path: str) -> Any:
    """One field of one resource (the one whose name matches the glob `name`) of a proxy's rendered configuration;
    a `*` step maps the rest of the path over a list."""
    from meshplan.render.proxies import render_all
    from meshplan.validate.resources import load_and_parse

    config = next(p for p in render_all(load_and_parse(root)) if p.name == proxy)
    resources = [r for r in (config.clusters if kind == "cluster" else config.listeners) if fnmatch(r["name"], name)]
    assert len(resources) == 1, f"{proxy}: {kind} {name!r} matches {[r['name'] for r in resources]}"

    def walk(node: Any, steps: list[str]) -> Any:
        if not steps:
            return node
        step, rest = steps[0], steps[1:]
        if step == "*":
            return [walk(item, rest) for item in node]
        return walk(node[int(step)] if isinstance(node, list) else node.get(step), rest)

    return walk(resources[0], path.split(".") if path else [])


CASES = [pytest.param(e, form, id=f"{e.kind}:{e.heading}:{form}") for e in EXAMPLES for form in FORMS]


@pytest.mark.parametrize(("example", "form"), CASES)
def test_docs_example(tmp_path: Path, example: Example, form: str) -> None:
    root, text = build(tmp_path, example, form)
    found = violations(root)
    if not example.refused:
        assert found == [], "\n".join(found)
        applied = applied_to(root, policy_ref(text))
        if example.selects is not None:
            assert applied == sorted(example.selects)
        else:
            assert applied, "accepted but applied to no proxy"
        for proxy, kind, name, path, value in example.renders:
            assert rendered_field(root, proxy, kind, name, path) == value, (proxy, kind, name, path)
        return
    lines = text.splitlines()
    assert len(found) == len(example.expected), "\n".join(found)
    for (path, fragment, on_line), reported in zip(example.expected, sorted(found, key=lambda v: split_violation(v)[1]),
                                                   strict=True):
        file, line, at, message = split_violation(reported)
        assert (file, at) == ("policies.yaml", path), reported
        assert fragment in message, reported
        assert on_line in lines[line - 1], f"{reported} points at {lines[line - 1]!r}"


def test_every_kind_has_examples() -> None:
    """Every kind meshplan supports has docs examples here, each citing its page and heading."""
    kinds = {yaml.safe_load(e.policy)["type"] for e in EXAMPLES}
    assert kinds >= {"MeshTimeout", "MeshRetry", "MeshCircuitBreaker", "MeshHealthCheck", "MeshAccessLog",
                     "MeshFaultInjection", "MeshRateLimit", "MeshTrafficPermission", "MeshLoadBalancingStrategy",
                     "MeshTCPRoute", "MeshHTTPRoute", "MeshTrace", "MeshMetric", "MeshProxyPatch",
                     "MeshExternalService"}  # fmt: skip
    for example in EXAMPLES:
        assert example.page.startswith("app/_src/") and example.heading, example


def test_namespaced_examples_load_in_their_namespace(tmp_path: Path) -> None:
    """The examples the docs write with `policy_yaml namespace=kuma-demo`: in Kubernetes form, the policy is in that
    namespace with the role Kuma gives it, and the example's dataplanes are there too."""
    from meshplan.model import SYSTEM_ROLE
    from meshplan.validate.resources import load_and_parse

    namespaced = [e for e in EXAMPLES if e.namespace != SYSTEM and not e.refused]
    assert len(namespaced) >= 30
    for i, example in enumerate(namespaced):
        root, text = build(tmp_path / str(i), example, "kubernetes")
        desired = load_and_parse(root)
        (policy,) = [p for p in desired.policies if f"{p.kind}/{p.name}" == policy_ref(text)]
        assert (policy.namespace, policy.role != SYSTEM_ROLE) == (example.namespace, True), example.heading
        assert {dp.namespace for dp in desired.dataplanes} == {example.namespace}, example.heading


ENVOY_ACCEPTS = [("meshproxypatch", "Cluster"), ("meshproxypatch", "HTTP Filter"), ("meshproxypatch", "lua filter"),
                 ("meshtrace", "Zipkin (full example)"), ("meshaccesslog", "Format / JSON"),
                 ("meshaccesslog", "Backends / OpenTelemetry")] + [
                    ("meshaccesslog", f"Body / {value}Value") for value in ("string", "array", "kvlist")]


@pytest.mark.envoy
@pytest.mark.parametrize("kind, heading", ENVOY_ACCEPTS)
def test_docs_example_renders_what_envoy_accepts(tmp_path: Path, kind: str, heading: str) -> None:
    """Examples whose whole render is a working configuration: a real `envoy --mode validate` accepts every proxy's
    (the docs' other MeshProxyPatch examples show each operation at once, e.g. a filter after the terminal one)."""
    from meshplan.validate.resources import load_and_parse
    from tests.policy_render import envoy_validates

    example = next(e for e in EXAMPLES if (e.kind, e.heading) == (kind, heading))
    root, _ = build(tmp_path, example, "universal")
    desired = load_and_parse(root)
    assert envoy_validates(desired, tmp_path / "state") == dict.fromkeys(desired.proxy_names())
