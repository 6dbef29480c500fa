"""Validation parity with Kuma v2.14.3's validator tests: for each case in tests/data/kuma_parity.yaml (our own
inputs for the constructs Kuma's cases exercise), meshplan's verdict is Kuma's, and an invalid input is reported at
exactly Kuma's field paths; a deliberate deviation asserts meshplan's own verdict and is listed in docs/policies.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import split_violation, violations
from tests.test_validate import write

DATA = Path(__file__).parent / "data" / "kuma_parity.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(DATA.read_text())
DOCS = Path(__file__).parent.parent / "docs" / "policies.md"


def _id(case: dict[str, Any]) -> str:
    file, title = case["kuma"]
    return f"{case['kind']}: {title}" + (f" ({case['note']})" if "note" in case else "")


def _policy(case: dict[str, Any]) -> str:
    return yaml.safe_dump({"type": case["kind"], "mesh": "default", "name": case.get("name", "parity"),
                           "spec": case["spec"]},
                          sort_keys=False)


@pytest.mark.parametrize("case", [pytest.param(c, id=_id(c)) for c in CASES])
def test_same_verdict_at_the_same_fields_as_kuma(tmp_path: Path, case: dict[str, Any]) -> None:
    write(tmp_path, {"policy.yaml": _policy(case)})
    found = violations(tmp_path)
    assert all(v.startswith("policy.yaml:") for v in found), found
    if case["verdict"] == "valid":
        assert found == []
    else:
        assert sorted({_field(v) for v in found}) == sorted(set(case["fields"])), "\n".join(found)


def _field(reported: str) -> str:
    """The field a violation is about: meshplan reports a missing field at its parent ("`x` is required")."""
    _, _, path, message = split_violation(reported)
    missing = re.match(r"`([A-Za-z]+)` is required", message)
    return f"{path}.{missing.group(1)}" if missing else path


def test_the_table_is_well_formed() -> None:
    """Every entry cites a Kuma test file and title, says valid or invalid with fields, and a deviation records
    Kuma's own verdict; each deviation's reason is in docs/policies.md."""
    docs = " ".join(DOCS.read_text().split())  # titles may wrap
    assert len(CASES) >= 100
    for case in CASES:
        assert set(case) <= {"kuma", "kind", "name", "note", "verdict", "fields", "spec", "deviation", "kuma_verdict",
                             "kuma_fields"}, case
        file, title = case["kuma"]
        assert file.endswith(("validator_test.go", "validation_test.go")) and title, case
        assert case["verdict"] in ("valid", "invalid"), case
        assert (case["verdict"] == "invalid") == bool(case.get("fields")), case
        if "deviation" in case:
            assert case["kuma_verdict"] in ("valid", "invalid"), case
            assert (case["kuma_verdict"] == "invalid") == bool(case.get("kuma_fields")), case
            assert case["kuma_verdict"] != case["verdict"] or case["kuma_fields"] != case["fields"], case
            assert f"{case['kind']}: {title}" in docs, f"docs/policies.md does not list the deviation {_id(case)}"
        else:
            assert "kuma_verdict" not in case and "kuma_fields" not in case, case
