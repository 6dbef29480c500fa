"""The validation tables of one policy kind: a one-item policy file around a `default` body, and the line a
violation must point at (marked with MARK)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.builders import assert_violations_point_at, table_cases, violations

# The header of a policy file in the validation tables: its body (the `default` block) starts on line 11.
POLICY_HEAD = """\
type: {kind}
mesh: default
name: p
spec:
  targetRef:
    kind: Mesh
  {section}:
    - targetRef:
        kind: Mesh
      default:
"""
BODY_LINE = 11
MARK = "#<"  # ends the line a violation must point at


# --- validation tables ----------------------------------------------------------------------------------------


def policy_file(kind: str, body: str, section: str = "to") -> str:
    """A one-item policy whose `default` is `body` (YAML, any indentation)."""
    lines = textwrap.dedent(body).strip("\n").splitlines()
    return POLICY_HEAD.format(kind=kind, section=section) + "".join(f"        {line}\n" for line in lines)


def marked_line(body: str) -> int:
    """The file line of the body line that ends with MARK."""
    lines = textwrap.dedent(body).strip("\n").splitlines()
    found = [i for i, line in enumerate(lines) if line.rstrip().endswith(MARK)]
    assert len(found) == 1, f"mark exactly one line with {MARK!r}"
    return BODY_LINE + found[0]


def single_default_policy(kind: str, default: str, *, name: str, top: str = "kind: Mesh") -> str:
    """A policy of a kind with one top-level `default` (MeshTrace, MeshMetric): `default` is YAML, any indentation;
    `top` the lines of its top-level targetRef."""
    body = textwrap.indent(textwrap.dedent(default).strip(), " " * 4)
    return f"type: {kind}\nmesh: default\nname: {name}\nspec:\n  targetRef:\n    {top}\n  default:\n{body}\n"


Spec = Callable[[str], str]  # a `default` (YAML) as a whole policy file
Write = Callable[[Path, dict[str, str]], Path]  # files (name: text) into a mesh in a directory; its root


def validation_table_tests(write: Write, policy: Spec, good: dict[str, str],
                           bad: list[tuple[str, str, list[tuple[str, str, str]]]],
                           section: str = "spec.to[0].default") -> tuple[Any, Any]:
    """A kind's two validation-table tests, for its module to bind under their names: every `good` spec passes, and
    every `bad` one reports each expected violation (path below `section`, message, its line's text) at its file
    and line."""

    @pytest.mark.parametrize("case", sorted(good))
    def test_good_specs_pass(tmp_path: Path, case: str) -> None:
        assert violations(write(tmp_path, {"policy.yaml": policy(good[case])})) == []

    @pytest.mark.parametrize(("default", "expected"), table_cases(bad))
    def test_bad_specs_report_every_violation_with_file_line_and_path(
        tmp_path: Path, default: str, expected: list[tuple[str, str, str]]
    ) -> None:
        directory = write(tmp_path, {"policy.yaml": policy(default)})
        assert_violations_point_at(directory, "policy.yaml", expected, section=section)

    return test_good_specs_pass, test_bad_specs_report_every_violation_with_file_line_and_path
