"""Golden files in tests/testdata/: compare with a stored file; `pytest --update-goldens` (or UPDATE_GOLDENS=1)
rewrites them. The renders' cases (`<case>.input/` next to `<case>.golden.json`) are tests/test_goldens.py's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTDATA = Path(__file__).parent / "testdata"


def check_golden(request: pytest.FixtureRequest, name: str, text: str) -> None:
    path = TESTDATA / name
    update = os.environ.get("UPDATE_GOLDENS") == "1" or bool(request.config.getoption("--update-goldens", default=False))
    if update or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if not update:
            pytest.fail(f"golden file {path} did not exist and was written: check it in")
        return
    expected = path.read_text()
    assert text == expected, f"{path} differs from the output; if the change is intended run: pytest --update-goldens"
