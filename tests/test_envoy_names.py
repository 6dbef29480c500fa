"""Envoy knowledge in one place: every `@type` URL and every filter, transport socket or extension name meshplan
writes or reads is spelled in meshplan/envoy/ (types.py; the admin API's in config_dump.py) and nowhere else, and
every type URL there names a message the Envoy protos meshplan loads know."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool

from meshplan.compare.canonical import EXTENSION_MODULES, message_descriptor
from meshplan.envoy import types as t

ROOT = Path(__file__).resolve().parents[1] / "meshplan"
ENVOY_PACKAGE = ROOT / "envoy"

# `@type` URLs, and names of Envoy's extensions: filters, transport sockets, access loggers, retry predicates...
ENVOY_NAME = re.compile(
    r"type\.googleapis\.com/|envoy\.(filters|transport_sockets|extensions)\.|^envoy\.[a-z_]+\.[a-z_]+"
)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def envoy_names_outside(root: Path, allowed: Path) -> list[str]:
    """Every string constant (docstrings aside) of the modules under `root` but not under `allowed` that spells an
    Envoy type URL or extension name, as `path:line: value`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.is_relative_to(allowed):
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and ENVOY_NAME.search(node.value)):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {node.value!r}")
    return found


def test_envoy_names_are_spelled_only_in_meshplan_envoy() -> None:
    assert envoy_names_outside(ROOT, ENVOY_PACKAGE) == []


@pytest.mark.parametrize("spelled", [
    'NAME = "envoy.filters.http.router"\n',
    'TYPE = "type.googleapis.com/" + "x.y.Z"\n',
    'def f(x):\n    return {"name": f"envoy.transport_sockets.tls{x}"}\n',
    'KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"\n',
    'SINK = ("envoy.health_check.event_sinks.file", 1)\n',
])
def test_a_name_spelled_elsewhere_is_found(tmp_path: Path, spelled: str) -> None:
    (tmp_path / "envoy").mkdir()
    (tmp_path / "envoy" / "types.py").write_text('HCM_NAME = "envoy.filters.network.http_connection_manager"\n')
    (tmp_path / "policy.py").write_text('"""Adds `envoy.filters.http.fault` (a docstring may say so)."""\n' + spelled)
    found = envoy_names_outside(tmp_path, tmp_path / "envoy")
    assert len(found) == 1 and found[0].startswith(f"{tmp_path.name}/policy.py:")


def test_file_names_and_words_are_not_envoy_names(tmp_path: Path) -> None:
    (tmp_path / "sandbox.py").write_text('LOG = "envoy.log"\nOUT = "envoy.out"\nWHO = "Envoy refused the update"\n')
    assert envoy_names_outside(tmp_path, tmp_path / "envoy") == []


def _type_urls() -> dict[str, str]:
    return {name: value for name, value in vars(t).items()
            if isinstance(value, str) and value.startswith(t.TYPE_URL_PREFIX) and value != t.TYPE_URL_PREFIX}


def test_every_type_url_is_in_a_table() -> None:
    urls = _type_urls()
    assert len(urls) > 30
    assert set(urls.values()) == set(t.PROTO_MODULES) | set(t.ADMIN_PROTO_MODULES)
    assert set(EXTENSION_MODULES) == set(t.PROTO_MODULES.values())


@pytest.mark.parametrize("name", sorted(_type_urls()))
def test_every_type_url_names_a_message_of_its_module(name: str) -> None:
    """A typo in a type URL, or a module that does not define its message, fails here: the message is looked up in
    the module the table names (the one compare/canonical.py imports), not among every Envoy proto."""
    url = getattr(t, name)
    module = (t.PROTO_MODULES | t.ADMIN_PROTO_MODULES)[url]
    file = importlib.import_module(module).DESCRIPTOR
    full_name = url.removeprefix(t.TYPE_URL_PREFIX)
    assert full_name.rpartition(".")[2] in file.message_types_by_name, f"{module} defines no {full_name}"
    descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    assert descriptor.file.name == file.name
    if url in t.PROTO_MODULES:
        assert module in EXTENSION_MODULES
        assert message_descriptor(url) is descriptor
