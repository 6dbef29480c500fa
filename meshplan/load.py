"""Read a desired directory: every YAML document, in universal or Kubernetes form, with the line of every field.

Loading only finds documents and their kind, mesh and name; `validate.parse` decides what they mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshplan.errors import Source, Violation

PathKey = tuple[str | int, ...]

KUMA_API_GROUP = "kuma.io/"
# libyaml's parser when PyYAML was built with it (about ten times faster on a large directory); marks are the same.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MESH_LABEL = "kuma.io/mesh"


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


def format_path(path: PathKey) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _Document:
    """A YAML node tree turned into plain data, remembering the line of every key and item."""

    def __init__(self, loader: Any, file: str) -> None:
        self.loader = loader
        self.file = file
        self.lines: dict[PathKey, int] = {}
        self.violations: list[Violation] = []

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolves `<<` merge keys
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key)
                if key in out:
                    self.violations.append(
                        Violation(
                            Source(self.file, key_node.start_mark.line + 1),
                            format_path(path + (key,)),
                            "duplicate key",
                        )
                    )
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)


def load_file(path: Path, display: str) -> tuple[list[RawResource], list[Violation]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return [], [Violation(Source(display, 1), "", f"cannot read file: {e}")]
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") or line.strip() == "---" for line in text.splitlines()
    ):
        return [], [Violation(Source(display, 1), "", "empty file: expected at least one resource")]

    resources: list[RawResource] = []
    violations: list[Violation] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            doc = _Document(loader, display)
            try:
                data = doc.build(node, ())
            except yaml.YAMLError as e:
                violations.append(_yaml_violation(display, e))
                continue
            violations.extend(doc.violations)
            start = Source(display, node.start_mark.line + 1)
            if data is None:
                continue  # an empty document between two `---`
            resource, problems = _classify(data, start, doc.lines)
            violations.extend(problems)
            if resource is not None:
                resources.append(resource)
    except yaml.YAMLError as e:
        violations.append(_yaml_violation(display, e))
    finally:
        loader.dispose()
    return resources, violations


def _yaml_violation(file: str, e: yaml.YAMLError) -> Violation:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    message = f"malformed YAML: {problem}" + (f" ({context})" if context else "")
    return Violation(Source(file, line), "", message)


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
    problems: list[Violation] = []
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
    if not isinstance(metadata, dict):
        problems.append(Violation(at(("metadata",)), "metadata", "missing required field" if metadata is None else "must be a mapping"))
    else:
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
    return RawResource(kind, mesh, name, "kubernetes", body, ("spec",), start, lines), problems


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
    if not root.exists():
        return [], [Violation(Source(str(root), 1), "", "no such directory")]
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        return [], [Violation(Source(str(root), 1), "", "no .yaml or .yml files found")]
    resources: list[RawResource] = []
    violations: list[Violation] = []
    for path in files:
        found, problems = load_file(path, str(path))
        resources.extend(found)
        violations.extend(problems)
    return resources, violations
