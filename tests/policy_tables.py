"""The validation tables of one policy kind: a one-item policy file around a `default` body, and the line a
violation must point at (marked with MARK)."""

from __future__ import annotations

import textwrap

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
