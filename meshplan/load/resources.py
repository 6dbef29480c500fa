"""Read a desired directory: every YAML document, in universal or Kubernetes form, with the line of every field.

Loading only finds documents and their kind, mesh and name; `validate.parse` decides what they mean. Which files are
read is `desired_files`' business, and reading YAML within bounds `yaml_documents`'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshplan.errors import Source, Violation
from meshplan.load.files import ByteBudget, DesiredFile, find_files, read_text
from meshplan.load.yaml_documents import Budget, PathKey, format_path, read_documents

__all__ = ["PathKey", "RawResource", "format_path", "load_dir", "load_file", "load_text"]

KUMA_API_GROUP = "kuma.io/"
MESH_LABEL = "kuma.io/mesh"
UNIVERSAL_FIELDS = ("type", "name", "mesh", "spec")  # Mesh, Dataplane and ZoneEgress may have their fields here instead
KUBERNETES_FIELDS = ("apiVersion", "kind", "metadata", "spec", "mesh")
# Labels and annotations may hold anything; of the labels, meshplan reads kuma.io/mesh.
METADATA_FIELDS = ("name", "namespace", "labels", "annotations")


@dataclass(frozen=True)
class RawResource:
    """One YAML document that names a kind, before its fields are checked."""

    kind: str
    mesh: str | None
    name: str | None
    form: str  # "universal" | "kubernetes"
    body: dict[str, Any]  # the spec: `spec` of a policy, the top level of a universal Dataplane, ...
    body_path: PathKey  # where `body` sits in the document
    source: Source  # the document's first line
    lines: dict[PathKey, int] = field(compare=False, repr=False)
    labels: dict[str, Any] = field(default_factory=dict)  # Kubernetes form: `metadata.labels` as written
    namespace: Any = None  # Kubernetes form: `metadata.namespace` as written (policy_rules decides what it means)

    def at(self, path: PathKey) -> Source:
        """The source of a field path inside `body`, or of its nearest written ancestor."""
        full = self.body_path + path
        for end in range(len(full), 0, -1):
            line = self.lines.get(full[:end])
            if line is not None:
                return Source(self.source.file, line)
        return self.source

    def display(self, path: PathKey) -> str:
        """A field path inside `body` as the user wrote it: `spec.to[0].default`."""
        return format_path(self.body_path + path)

    def violation(self, path: PathKey, message: str) -> Violation:
        return Violation(self.at(path), self.display(path), message)

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.mesh + '/' if self.mesh else ''}{self.name}"


def load_file(path: Path, display: str) -> tuple[list[RawResource], list[Violation]]:
    """The resources of one file, whatever its name, and every problem found reading it."""
    text, problems = read_text(DesiredFile(path, display, follow=True), ByteBudget())
    if text is None:
        return [], problems
    return load_text(text, display, Budget())


def load_text(text: str, display: str, budget: Budget) -> tuple[list[RawResource], list[Violation]]:
    """The resources of one file's text, and every problem found reading it."""
    documents, violations = read_documents(text, display, budget)
    if not documents and not violations:
        return [], [Violation(Source(display, 1), "", "empty file: expected at least one resource")]
    resources: list[RawResource] = []
    for document in documents:
        resource, problems = _classify(document.data, Source(display, document.line), document.lines)
        violations.extend(problems)
        if resource is not None:
            resources.append(resource)
    return resources, violations


def _classify(data: Any, start: Source, lines: dict[PathKey, int]) -> tuple[RawResource | None, list[Violation]]:
    def at(path: PathKey) -> Source:
        return Source(start.file, lines.get(path, start.line))

    if not isinstance(data, dict):
        return None, [Violation(start, "", f"a resource must be a mapping, got {_type_name(data)}")]

    if "apiVersion" in data or "metadata" in data or "kind" in data:
        return _kubernetes(data, start, lines, at)

    if "type" not in data:
        return None, [Violation(start, "", "missing `type` (universal form) or `apiVersion`/`kind` (Kubernetes form)")]
    kind = data["type"]
    problems: list[Violation] = []
    if not isinstance(kind, str) or not kind:
        return None, [Violation(at(("type",)), "type", f"must be a kind name, got {_type_name(kind)}")]
    name = data.get("name")
    if name is None:
        problems.append(Violation(start, "name", "missing required field"))
    elif not isinstance(name, str):
        problems.append(Violation(at(("name",)), "name", f"must be a string, got {_type_name(name)}"))
        name = None
    mesh = data.get("mesh")
    if mesh is not None and not isinstance(mesh, str):
        problems.append(Violation(at(("mesh",)), "mesh", f"must be a string, got {_type_name(mesh)}"))
        mesh = None

    body_path: PathKey
    if "spec" in data:
        body, body_path = data["spec"], ("spec",)
        problems += _unknown(data, (), UNIVERSAL_FIELDS, at)
    else:
        # Mesh, Dataplane and ZoneEgress keep their fields at the top level in universal form.
        body = {k: v for k, v in data.items() if k not in ("type", "name", "mesh")}
        body_path = ()
    if not isinstance(body, dict):
        problems.append(Violation(at(body_path), "spec", f"must be a mapping, got {_type_name(body)}"))
        body = {}
    return RawResource(kind, mesh, name, "universal", body, body_path, start, lines), problems


def _kubernetes(
    data: dict[str, Any], start: Source, lines: dict[PathKey, int], at: Any
) -> tuple[RawResource | None, list[Violation]]:
    problems: list[Violation] = _unknown(data, (), KUBERNETES_FIELDS, at)
    api = data.get("apiVersion")
    if api is None:
        problems.append(Violation(start, "apiVersion", "missing required field"))
    elif not isinstance(api, str) or not api.startswith(KUMA_API_GROUP):
        problems.append(
            Violation(at(("apiVersion",)), "apiVersion", f"unsupported API version {api!r}: expected kuma.io/v1alpha1")
        )
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind:
        problems.append(Violation(at(("kind",)), "kind", "missing required field" if kind is None else "must be a string"))
        return None, problems
    metadata = data.get("metadata")
    name: str | None = None
    mesh: str | None = None
    resource_labels: dict[str, Any] = {}
    if not isinstance(metadata, dict):
        problems.append(Violation(at(("metadata",)), "metadata", "missing required field" if metadata is None else "must be a mapping"))
    else:
        problems += _unknown(metadata, ("metadata",), METADATA_FIELDS, at)
        raw_name = metadata.get("name")
        if raw_name is None:
            problems.append(Violation(at(("metadata",)), "metadata.name", "missing required field"))
        elif not isinstance(raw_name, str):
            problems.append(Violation(at(("metadata", "name")), "metadata.name", "must be a string"))
        else:
            name = raw_name
        labels = metadata.get("labels") or {}
        if not isinstance(labels, dict):
            problems.append(Violation(at(("metadata", "labels")), "metadata.labels", "must be a mapping"))
        else:
            resource_labels = labels
            raw_mesh = labels.get(MESH_LABEL)
            if raw_mesh is not None and not isinstance(raw_mesh, str):
                problems.append(Violation(at(("metadata", "labels", MESH_LABEL)), f"metadata.labels.{MESH_LABEL}", "must be a string"))
            else:
                mesh = raw_mesh
        # Kuma's Kubernetes Dataplane has `mesh` at the top level; accept it there too.
    if mesh is None and isinstance(data.get("mesh"), str):
        mesh = data["mesh"]
    body = data.get("spec", {})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        problems.append(Violation(at(("spec",)), "spec", f"must be a mapping, got {_type_name(body)}"))
        body = {}
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return RawResource(kind, mesh, name, "kubernetes", body, ("spec",), start, lines, resource_labels, namespace), problems


def _unknown(obj: dict[str, Any], path: PathKey, known: tuple[str, ...], at: Any) -> list[Violation]:
    return [Violation(at(path + (key,)), format_path(path + (key,)), f"unknown field (expected one of: {', '.join(known)})")
            for key in obj if key not in known]


def _type_name(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)


def load_dir(root: Path) -> tuple[list[RawResource], list[Violation]]:
    """Every resource under `root` (recursively, .yaml/.yml, sorted by path) and every problem found reading them."""
    files, violations = find_files(root)
    resources: list[RawResource] = []
    values, read = Budget(), ByteBudget()
    for file in files:
        text, problems = read_text(file, read)
        violations.extend(problems)
        if text is not None:
            found, problems = load_text(text, file.display, values)
            resources.extend(found)
            violations.extend(problems)
        if read.spent or values.values < 0:
            break  # reported in the file where the directory's budget ran out
    return resources, violations
