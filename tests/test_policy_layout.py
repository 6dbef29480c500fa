"""The layout docs/architecture.md promises: each registered policy kind is a package `meshplan/policies/<kind>/`
with its API side (api.py) and its Envoy side (envoy.py) apart, its placement row comes from the kind, and nothing in
meshplan but its own folder and the registry imports it, so adding a kind is its folder and one registry line."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from test_imports import import_graph, write_tree

from meshplan.policies import registry

ROOT = Path(__file__).resolve().parents[1] / "meshplan"
POLICIES = ROOT / "policies"


def _package(module: object) -> Path:
    assert isinstance(module, ModuleType)
    path = Path(str(module.__file__))
    assert path.name == "__init__.py", f"{module.__name__} is a package"
    return path.parent


@pytest.mark.parametrize("module", registry.MODULES, ids=lambda m: m.KIND)
def test_every_kind_is_a_package_with_its_api_and_envoy_sides(module: object) -> None:
    folder = _package(module)
    assert folder.parent == POLICIES
    assert sorted(p.name for p in folder.glob("*.py")) == ["__init__.py", "api.py", "envoy.py"]


@pytest.mark.parametrize("module", registry.MODULES, ids=lambda m: m.KIND)
def test_the_placement_row_comes_from_the_kind(module: registry.PolicyModule) -> None:
    assert module.PLACEMENT.name == module.KIND
    assert registry.KINDS[module.KIND] is module.PLACEMENT


def test_the_placement_table_is_the_kinds_rows() -> None:
    assert list(registry.KINDS) == [m.KIND for m in registry._ALL]


def test_references_come_from_the_kinds() -> None:
    assert registry.REFERENCES == {m.KIND: m.check_references for m in registry.MODULES
                                   if m.check_references is not None}
    assert set(registry.REFERENCES) == {"MeshHTTPRoute", "MeshTCPRoute"}


def outside_importers(root: Path, kinds: list[str], allowed: set[str]) -> list[str]:
    """`importer -> kind` for every module under `root` that imports a kind's package (or a module in it) from
    outside that package, other than the `allowed` ones."""
    graph, _, _ = import_graph(root)
    found = []
    for importer, deps in sorted(graph.items()):
        for kind in kinds:
            inside = importer == kind or importer.startswith(kind + ".")
            if not inside and importer not in allowed and any(d == kind or d.startswith(kind + ".") for d in deps):
                found.append(f"{importer} -> {kind}")
    return found


def test_only_its_folder_and_the_registry_import_a_kind() -> None:
    kinds = [f"meshplan.policies.{_package(m).name}" for m in registry.MODULES]
    assert len(kinds) == len(registry.MODULES)
    assert outside_importers(ROOT, kinds, {"meshplan.policies.registry"}) == []


def test_an_outside_import_of_a_kind_is_found(tmp_path: Path) -> None:
    package = write_tree(tmp_path, {
        "timeout/__init__.py": "from meshplan.timeout.api import KIND\n",
        "timeout/api.py": "KIND = 'MeshTimeout'\n",
        "registry.py": "from meshplan import timeout\n",
        "render.py": "from meshplan.timeout.api import KIND\n",
    })
    assert outside_importers(package, ["meshplan.timeout"], {"meshplan.registry"}) == ["meshplan.render -> meshplan.timeout"]
