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
                # ... but a package this module is in has started running before it: only a name taken from
                # that package itself (the target) depends on it, not reaching a sibling through it.
                found |= ({".".join(parts[:i]) for i in range(1, len(parts))} - ancestors) | {target}
                found &= modules.keys()
            if found and id(node) not in top_level:
                lazy.append((name, node.lineno))
            deps |= found
        graph[name] = deps - {name}
    return graph, lazy, relative


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """A package `meshplan` under `root` with these files (paths relative to it), for checking the rules on it."""
    package = root / "meshplan"
    for name, text in {"__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


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
    package = write_tree(tmp_path, {
        "render/__init__.py": "",
        "render/proxies.py": "def f():\n    from meshplan.policies import registry\n",
        "policies.py": "from meshplan.render import proxies\n",
    })
    graph, lazy, _ = import_graph(package)
    assert find_cycle(graph) == ["meshplan.policies", "meshplan.render.proxies", "meshplan.policies"]
    assert lazy == [("meshplan.render.proxies", 2)]


def test_a_package_may_import_its_own_parts(tmp_path: Path) -> None:
    """A kind's package (`policies/timeout/__init__`) imports its api and envoy modules, and envoy imports api
    through the package: no cycle. Taking a name from the package itself, while it imports the module, is one."""
    package = write_tree(tmp_path, {
        "timeout/__init__.py": "from meshplan.timeout.api import KIND\nfrom meshplan.timeout.envoy import apply\n",
        "timeout/api.py": "KIND = 'MeshTimeout'\n",
        "timeout/envoy.py": "from meshplan.timeout.api import KIND\n",
    })
    graph, _, _ = import_graph(package)
    assert find_cycle(graph) is None
    (package / "timeout" / "envoy.py").write_text("from meshplan.timeout import KIND\n")
    graph, _, _ = import_graph(package)
    assert find_cycle(graph) == ["meshplan.timeout", "meshplan.timeout.envoy", "meshplan.timeout"]


def test_lazy_imports_only_in_the_command_line() -> None:
    _, lazy, _ = import_graph(ROOT)
    assert [entry for entry in lazy if entry[0] not in LAZY_ALLOWED] == []


def test_no_relative_imports() -> None:
    _, _, relative = import_graph(ROOT)
    assert relative == []
