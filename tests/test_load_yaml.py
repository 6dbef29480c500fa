"""YAML that would exhaust memory, recurse without end, run a constructor or end in a traceback: each is a violation
at its file and line, found in bounded time and memory, and the command exits 1."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.load import yaml_documents
from meshplan.load.resources import load_dir
from meshplan.load.yaml_documents import Budget, read_documents

LOL = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)
MEMORY_LIMIT = 512 * 2**20  # address space for `meshplan validate` in a subprocess; it needs about 100 MB


def validate(directory: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", str(directory)])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


def validate_limited(directory: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed command in a process that cannot have more than MEMORY_LIMIT of address space."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, "-m", "meshplan.cli", "validate", str(directory)], preexec_fn=limit,
                          capture_output=True, text=True, timeout=timeout)


def one_file(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def test_a_billion_laughs_is_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    assert len(LOL) < 600
    one_file(tmp_path, LOL)
    started = time.monotonic()
    proc = validate_limited(tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    assert f"{tmp_path}/bad.yaml:" in proc.stderr and "aliases expand to more than 100,000 values" in proc.stderr
    assert time.monotonic() - started < 30

    tracemalloc.start()
    try:
        started = time.monotonic()
        documents, violations = read_documents(LOL, "bad.yaml", Budget())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert documents == [] and [str(v) for v in violations] == [
        "bad.yaml:6: aliases expand to more than 100,000 values in this file (a YAML bomb?): "
        "write the values out, or use fewer aliases"]
    assert peak < 64 * 2**20 and time.monotonic() - started < 5


@pytest.mark.parametrize("text, expected", [
    ("a: &a [*a]\n", "bad.yaml:1: a[0]: alias *a is inside its own anchor &a"),
    ("a: &a {b: {c: *a}}\n", "bad.yaml:1: a.b.c: alias *a is inside its own anchor &a"),
    ("type: Mesh\nname: m\nmtls: *nowhere\n", "bad.yaml:3: mtls: alias *nowhere has no anchor &nowhere"),
    ("[" * 490 + "]" * 490 + "\n", "bad.yaml:1: nested more than 64 levels deep"),
    ("x:\n" + "".join("  " * i + f"- k{i}:\n" for i in range(1, 100)), "bad.yaml:33: nested more than 64 levels deep"),
    ("- " * 5000 + "x\n", "bad.yaml:1: nested more than 64 levels deep"),
    ("[" * 100_000 + "]" * 100_000 + "\n", "bad.yaml:1: malformed YAML: exceeded maximum nesting depth"),
], ids=["self alias", "alias in its own anchor", "undefined alias", "490-deep flow list", "deep block mappings",
        "5000-deep block lists", "100000-deep flow list"])
def test_recursive_and_deep_structures_are_violations(tmp_path: Path, text: str, expected: str) -> None:
    code, stderr = validate(one_file(tmp_path, text))
    assert code == 1
    assert f"{tmp_path}/{expected}" in stderr, stderr


def test_deep_structures_in_the_installed_command(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("[" * 490 + "]" * 490 + "\n")
    (tmp_path / "b.yaml").write_text("a: &a [*a]\n")
    proc = validate_limited(tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{tmp_path}/a.yaml:1: nested more than 64 levels deep" in proc.stderr
    assert f"{tmp_path}/b.yaml:1: a[0]: alias *a is inside its own anchor &a" in proc.stderr


@pytest.mark.parametrize("text, expected", [
    ("type: Mesh\nname: m\nport: " + "9" * 5000 + "\n", "bad.yaml:3: port: a number of 5000 characters is too long"),
    ("type: Mesh\nname: m\nport: !!int " + "9" * 4301 + "\n", "bad.yaml:3: port: a number of 4301 characters"),
    ("a: !!int abc\n", "bad.yaml:1: a: cannot read 'abc' as an integer (!!int)"),
    ("a: !!float abc\n", "bad.yaml:1: a: cannot read 'abc' as a number (!!float)"),
    ("a: !!bool maybe\n", "bad.yaml:1: a: cannot read 'maybe' as a boolean (!!bool)"),
    ("a: !!timestamp tomorrow\n", "bad.yaml:1: a: cannot read 'tomorrow' as a timestamp (!!timestamp)"),
    ("a: 2024-13-45\n", "bad.yaml:1: a: cannot read '2024-13-45' as a timestamp (!!timestamp)"),
    ("a:\n  b: 1:" + ":".join(["59"] * 2000) + "\n", "bad.yaml:2: a.b: a number of 6001 characters is too long"),
    ("a: !!int\n", "bad.yaml:1: a: cannot read '' as an integer (!!int)"),
    ("a: !!int 0b_\n", "bad.yaml:1: a: cannot read '0b_' as an integer (!!int)"),
    ("a: !!float 1.5.1\n", "bad.yaml:1: a: cannot read '1.5.1' as a number (!!float)"),
], ids=["long integer", "long tagged integer", "int tag", "float tag", "bool tag", "timestamp tag", "bad date",
        "sexagesimal", "empty int", "bare binary prefix", "two dots"])
def test_scalars_a_type_cannot_read_are_violations(tmp_path: Path, text: str, expected: str) -> None:
    code, stderr = validate(one_file(tmp_path, text))
    assert code == 1
    assert f"{tmp_path}/{expected}" in stderr, stderr


@pytest.mark.parametrize("text, expected", [
    ("type: Mesh\nname: m\nmtls: !!python/object/apply:os.system [echo pwned]\n",
     "bad.yaml:3: mtls: YAML tag !!python/object/apply:os.system is not allowed on a list"),
    ("type: Mesh\nname: m\nmtls: !!python/object:meshplan.model.Mesh {name: x}\n",
     "bad.yaml:3: mtls: YAML tag !!python/object:meshplan.model.Mesh is not allowed on a mapping"),
    ("type: Mesh\nname: m\nrouting: !!set {zoneEgress}\n", "bad.yaml:3: routing: YAML tag !!set is not allowed on a mapping"),
    ("type: Mesh\nname: m\nrouting: !!omap [{zoneEgress: true}]\n", "bad.yaml:3: routing: YAML tag !!omap is not allowed"),
    ("type: Mesh\nname: !!binary bWVzaA==\n", "bad.yaml:2: name: YAML tag !!binary is not allowed"),
    ("type: Mesh\nname: !local m\n", "bad.yaml:2: name: YAML tag !local is not allowed"),
    ("--- !!python/object:os.system\ntype: Mesh\nname: m\n", "bad.yaml:1: YAML tag !!python/object:os.system is not allowed"),
    ("type: Mesh\n!!python/name:os.system name: m\n", "bad.yaml:2: YAML tag !!python/name:os.system is not allowed"),
    ("type: Mesh\nname: m\n? [a, b]\n: c\n", "bad.yaml:3: a key must be a plain string, not a mapping or a list"),
], ids=["python on a list", "python on a mapping", "set", "omap", "binary", "local tag", "document tag", "key tag",
        "list as a key"])
def test_tags_meshplan_does_not_read_are_violations(tmp_path: Path, text: str, expected: str) -> None:
    code, stderr = validate(one_file(tmp_path, text))
    assert code == 1
    assert f"{tmp_path}/{expected}" in stderr, stderr


@pytest.mark.parametrize("text, line", [
    ("type: Mesh\nname: m\n\x00\n", 3),
    ("type: Mesh\r\nname: m\r\nrouting: {zoneEgress: true}\r\n# \x07\r\n", 4),
    ("type: Mesh\nname: m\nmtls: {}\n\n\x1b[31m\n", 5),
], ids=["NUL", "BEL after CRLF lines", "ESC"])
def test_a_forbidden_character_is_reported_on_its_line(tmp_path: Path, text: str, line: int) -> None:
    code, stderr = validate(one_file(tmp_path, text))
    assert code == 1
    assert f"{tmp_path}/bad.yaml:{line}: character U+" in stderr, stderr


def test_invalid_utf8_is_reported_on_its_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_bytes(b"type: Mesh\nname: m\n# caf\xe9\n")
    code, stderr = validate(tmp_path)
    assert code == 1
    assert f"{tmp_path}/bad.yaml:3: not UTF-8: byte 0xE9" in stderr, stderr


def test_merge_keys_and_aliases_keep_the_line_of_every_field(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        "type: Mesh\n"                                    # 1
        "name: m\n"                                       # 2
        "mtls:\n"                                         # 3
        "  enabledBackend: ca-1\n"                        # 4
        "  backends:\n"                                   # 5
        "    - &ca {name: ca-1, type: builtin}\n"         # 6
        "routing: &routing\n"                             # 7
        "  <<: {zoneEgress: true}\n"                      # 8
        "  defaultForbidMeshExternalServiceAccess: false\n"  # 9
        "x-copy:\n"                                       # 10
        "  <<: [*routing, {zoneEgress: false, y: 1}]\n"   # 11
        "  backends: [*ca, {name: ca-2, type: vault}]\n"  # 12
    )
    (resource,), violations = load_dir(tmp_path)
    assert [str(v) for v in violations] == []
    body = resource.body
    assert body["routing"] == {"zoneEgress": True, "defaultForbidMeshExternalServiceAccess": False}
    assert str(resource.at(("routing", "zoneEgress"))) == f"{tmp_path}/mesh.yaml:8"
    # Merged keys come from the first mapping that has them, after the mapping's own keys; each keeps its line.
    assert body["x-copy"] == {"zoneEgress": True, "defaultForbidMeshExternalServiceAccess": False, "y": 1,
                              "backends": [{"name": "ca-1", "type": "builtin"}, {"name": "ca-2", "type": "vault"}]}
    assert str(resource.at(("x-copy", "zoneEgress"))) == f"{tmp_path}/mesh.yaml:8"
    assert str(resource.at(("x-copy", "defaultForbidMeshExternalServiceAccess"))) == f"{tmp_path}/mesh.yaml:9"
    assert str(resource.at(("x-copy", "y"))) == f"{tmp_path}/mesh.yaml:11"
    assert str(resource.at(("x-copy", "backends", 0, "type"))) == f"{tmp_path}/mesh.yaml:6"
    assert str(resource.at(("x-copy", "backends", 1, "type"))) == f"{tmp_path}/mesh.yaml:12"
    assert not any("<<" in str(step) or step == -1 for path in resource.lines for step in path)
    assert body["x-copy"]["backends"][0] is not body["mtls"]["backends"][0]  # an alias is a copy


def test_anchors_belong_to_their_document(tmp_path: Path) -> None:
    code, stderr = validate(one_file(tmp_path, "type: Mesh\nname: m\nmtls: &tls {}\n---\ntype: Mesh\nname: n\n"
                                               "mtls: {<<: *tls}\n"))
    assert code == 1
    assert f"{tmp_path}/bad.yaml:7: mtls.<<: alias *tls has no anchor &tls before it in this document" in stderr, stderr


def test_the_directory_budget_stops_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_documents, "MAX_VALUES", 50)
    for i in range(5):
        (tmp_path / f"{i}.yaml").write_text("".join(f"type: Mesh\nname: m{i}-{j}\n---\n" for j in range(5)))
    resources, violations = load_dir(tmp_path)
    assert [str(v) for v in violations] == [
        f"{tmp_path}/3.yaml:2: the desired directory holds more than 50 YAML values (aliases expanded): "
        "meshplan reads no more"]


def test_a_tag_reads_text_of_its_type(tmp_path: Path) -> None:
    documents, violations = read_documents("a: !!float 1\nb: !!int '7'\nc: !!bool yes\nd: !!str 5\n", "ok.yaml", Budget())
    assert violations == [] and documents[0].data == {"a": 1.0, "b": 7, "c": True, "d": "5"}


def test_a_key_that_does_not_print_is_quoted_and_the_violation_stays_on_one_line(tmp_path: Path) -> None:
    code, stderr = validate(one_file(tmp_path, 'type: Mesh\nname: m\n"rou\\nting": {}\n"": 1\n'))
    assert code == 1
    assert f'{tmp_path}/bad.yaml:3: ["rou\\nting"]: unknown field' in stderr, stderr
    assert f'{tmp_path}/bad.yaml:4: [""]: unknown field' in stderr, stderr
    assert all(line.startswith(str(tmp_path)) for line in stderr.splitlines()[:-1])
