"""The package graph stays one-directional: no import cycles (a lazy import inside a function counts), lazy imports
only where the command line defers heavy stages, no relative imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "meshplan"
LAZY_ALLOWED = {"meshplan.cli"}  # each command imports only the stages it runs, so that `--help` stays fast


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[tuple[str, int]], list[tuple[str, int]]]:
    """Per module, the meshplan modules it imports (a package's `__init__` included, as Python runs it); the lazy
    imports (not at module level) and the relative ones, each as (module, line)."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    lazy: list[tuple[str, int]] = []
    relative: list[tuple[str, int]] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(node) for node in tree.body}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    relative.append((name, node.lineno))
                    continue
                targets = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found = set()
            ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
            for target in targets:  # importing a.b.c runs a, a.b and a.b.c
                parts = target.split(".")
                # ...except the importer's own packages, which Python has begun running before it (a package's
                # `__init__` may import its modules, which import their siblings); importing a name from one of
                # them directly still counts.
                prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
                found |= {p for p in prefixes if p not in ancestors or p == target} & modules.keys()
            if found and id(node) not in top_level:
                lazy.append((name, node.lineno))
            deps |= found
        graph[name] = deps - {name}
    return graph, lazy, relative


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycle() -> None:
    graph, _, _ = import_graph(ROOT)
    assert len(graph) > 50, "the walk found meshplan's modules"
    assert find_cycle(graph) is None


def test_a_cycle_is_found(tmp_path: Path) -> None:
    package = tmp_path / "meshplan"
    (package / "render").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "render" / "__init__.py").write_text("")
    (package / "render" / "proxies.py").write_text("def f():\n    from meshplan.policies import registry\n")
    (package / "policies.py").write_text("from meshplan.render import proxies\n")
    graph, lazy, _ = import_graph(package)
    assert find_cycle(graph) == ["meshplan.policies", "meshplan.render.proxies", "meshplan.policies"]
    assert lazy == [("meshplan.render.proxies", 2)]


def test_lazy_imports_only_in_the_command_line() -> None:
    _, lazy, _ = import_graph(ROOT)
    assert [entry for entry in lazy if entry[0] not in LAZY_ALLOWED] == []


def test_no_relative_imports() -> None:
    _, _, relative = import_graph(ROOT)
    assert relative == []
