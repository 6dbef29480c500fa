"""The shared test helpers check what they claim: `violations` is what `meshplan validate` reports (so a test that
expects [] fails on a violation), and `FixedAddresses` hands out the same addresses every time."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from meshplan.cli import app
from tests.builders import DEMO, FixedAddresses, split_violation, violations
from tests.policy_tables import BODY_LINE, policy_file

BAD_POLICY = policy_file("MeshTimeout", "connectionTimeout: soon")  # its body on line BODY_LINE


def test_violations_of_a_valid_directory_are_none(tmp_path: Path) -> None:
    shutil.copytree(DEMO, tmp_path / "demo")
    assert violations(tmp_path / "demo") == []


def test_violations_are_what_meshplan_validate_reports(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    shutil.copytree(DEMO, root)
    (root / "bad.yaml").write_text(BAD_POLICY)
    found = violations(root)
    assert found != [], "a test expecting [] must fail on this directory"
    [(file, line, path, _)] = map(split_violation, found)
    assert (file, line, path) == ("bad.yaml", BODY_LINE, "spec.to[0].default.connectionTimeout")
    result = CliRunner().invoke(app, ["validate", str(root)])
    assert result.exit_code == 1
    assert [f"{root}/{v}" for v in found] == [line for line in result.output.splitlines() if line.startswith(f"{root}/")]


def test_fixed_addresses_repeat_themselves() -> None:
    def draw(addresses: FixedAddresses) -> list[object]:
        ips = [addresses.ip() for _ in range(2)]
        return [*ips, *(addresses.port(ip) for ip in ips for _ in range(2))]

    assert draw(FixedAddresses()) == draw(FixedAddresses()) == ["127.0.9.1", "127.0.9.2", 10001, 10002, 10003, 10004]
    assert draw(FixedAddresses(per_address=True))[2:] == [10001, 10002, 10001, 10002]
    assert draw(FixedAddresses(network="127.0.1.", first_port=20001))[:3] == ["127.0.1.1", "127.0.1.2", 20001]
