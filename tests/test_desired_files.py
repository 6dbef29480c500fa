"""Which files of a desired directory are read: nothing in it is passed over without a word (an unreadable
directory, a dangling symlink, a FIFO, `.YAML`), symlinks are followed only inside it, and reading is bounded."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.load import files as desired_files
from meshplan.load.resources import load_dir
from tests.test_validate import write

POLICY = ("type: MeshTimeout\nmesh: default\nname: {name}\nspec:\n  targetRef:\n    kind: Mesh\n"
          "  to: [{{targetRef: {{kind: Mesh}}, default: {{idleTimeout: 1m}}}}]\n")


def validate(directory: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", str(directory)])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


@pytest.fixture
def desired(tmp_path: Path) -> Path:
    """A valid desired directory (test_validate's BASE) with a `policies/` subdirectory holding one policy."""
    root = tmp_path / "desired"
    root.mkdir()
    write(root, {})
    (root / "policies").mkdir()
    (root / "policies" / "timeout.yaml").write_text(POLICY.format(name="t1"))
    assert validate(root)[0] == 0
    return root


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Directories made unreadable (mode 000) for the test. Root reads any directory, so under root os.scandir is
    made to refuse them as the kernel refuses everyone else."""
    locked: list[Path] = []
    if os.geteuid() == 0:
        real = os.scandir

        def scandir(path: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
            if Path(path) in locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path)  # type: ignore[return-value]

        monkeypatch.setattr(os, "scandir", scandir)
    yield locked
    for path in locked:
        path.chmod(0o755)


def test_an_unreadable_subdirectory_is_an_error(desired: Path, unreadable: list[Path]) -> None:
    locked = desired / "policies"
    locked.chmod(0)
    unreadable.append(locked)
    code, stderr = validate(desired)
    assert code == 1
    assert f"{locked}:1: cannot read directory: Permission denied" in stderr, stderr


def test_an_unreadable_file_is_an_error(desired: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    (desired / "policies" / "timeout.yaml").chmod(0)
    code, stderr = validate(desired)
    assert code == 1 and "timeout.yaml:1: cannot read file: Permission denied" in stderr, stderr


@pytest.mark.parametrize("name", ["p.YAML", "p.YML", "p.Yaml", "p.json"])
def test_a_name_kubectl_users_might_expect_to_be_read_is_an_error(desired: Path, name: str) -> None:
    (desired / "policies" / name).write_text(POLICY.format(name="t2"))
    code, stderr = validate(desired)
    assert code == 1
    assert f"{desired}/policies/{name}:1: meshplan reads " in stderr, stderr


def test_other_names_are_not_read(desired: Path) -> None:
    (desired / "README.md").write_text("# the mesh\n")
    (desired / ".timeout.yaml.swp").write_bytes(b"\x00\x01")
    (desired / "notes.txt").write_text("type: nonsense\n")
    assert validate(desired)[0] == 0


def test_a_dangling_symlink_is_an_error(desired: Path) -> None:
    (desired / "policies" / "retry.yaml").symlink_to(desired / "gone.yaml")
    (desired / "more").symlink_to("/nonexistent/policies")  # it may have been a directory of policies
    code, stderr = validate(desired)
    assert code == 1
    assert f"{desired}/policies/retry.yaml:1: symlink to '{desired}/gone.yaml', which cannot be followed" in stderr
    assert f"{desired}/more:1: symlink to '/nonexistent/policies', which cannot be followed" in stderr


def test_a_symlink_loop_is_an_error(desired: Path) -> None:
    (desired / "a.yaml").symlink_to("b.yaml")
    (desired / "b.yaml").symlink_to("a.yaml")
    code, stderr = validate(desired)
    assert code == 1
    assert f"{desired}/a.yaml:1: symlink to 'b.yaml', which cannot be followed: Too many levels of symbolic links" in stderr


def test_a_fifo_is_an_error_and_never_opened(desired: Path) -> None:
    os.mkfifo(desired / "policies" / "pipe.yaml")
    code, stderr = validate(desired)  # opening a FIFO for reading would block until a writer came
    assert code == 1
    assert f"{desired}/policies/pipe.yaml:1: not a regular file (a FIFO)" in stderr, stderr


def test_a_symlink_out_of_the_directory_is_an_error(desired: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "retry.yaml").write_text(POLICY.format(name="t3"))
    (desired / "policies" / "retry.yaml").symlink_to(outside / "retry.yaml")
    (desired / "shared").symlink_to(outside)
    code, stderr = validate(desired)
    assert code == 1
    assert (f"{desired}/policies/retry.yaml:1: symlink to {outside}/retry.yaml, outside the desired directory "
            f"{desired}: meshplan follows symlinks only inside it") in stderr, stderr
    assert f"{desired}/shared:1: symlink to {outside}, outside the desired directory" in stderr, stderr


def test_symlinks_inside_are_followed_and_each_file_is_read_once(desired: Path) -> None:
    (desired / "data").mkdir()
    (desired / "data" / "retry.txt").write_text(POLICY.format(name="t4"))
    (desired / "a-retry.yaml").symlink_to("data/retry.txt")  # a YAML name for a file that has none
    (desired / "z-timeout.yaml").symlink_to("policies/timeout.yaml")  # a second name for a file read anyway
    (desired / "again").symlink_to("policies")  # a second name for a directory walked anyway
    (desired / "loop").symlink_to(".")
    resources, violations = load_dir(desired)
    assert violations == []
    assert sorted(r.name for r in resources if r.kind == "MeshTimeout") == ["t1", "t4"]
    timeout = next(r for r in resources if r.name == "t1")
    assert timeout.source.file == f"{desired}/policies/timeout.yaml"  # under its own name, not the symlink's
    assert validate(desired)[0] == 0


def test_a_desired_directory_given_through_a_symlink(desired: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(desired)
    (desired / "z.yaml").symlink_to("policies/timeout.yaml")
    resources, violations = load_dir(tmp_path / "link")
    assert violations == [] and len(resources) == 6


def test_directories_nested_too_deep_are_an_error(desired: Path) -> None:
    deep = desired.joinpath(*["d"] * (desired_files.MAX_DIR_DEPTH + 1))
    deep.mkdir(parents=True)
    (deep / "p.yaml").write_text(POLICY.format(name="t5"))
    code, stderr = validate(desired)
    assert code == 1
    too_deep = desired.joinpath(*["d"] * (desired_files.MAX_DIR_DEPTH + 1))
    assert f"{too_deep}:1: directories nested more than {desired_files.MAX_DIR_DEPTH} deep" in stderr, stderr


def test_a_tree_deeper_than_path_max_is_an_error(desired: Path) -> None:
    # 20 directories of 250 characters: 5000 characters, more than PATH_MAX (4096), fewer than MAX_DIR_DEPTH.
    name = "n" * 250
    fd = os.open(desired, os.O_RDONLY)
    try:
        for _ in range(20):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("p.yaml", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "w") as f:
            f.write(POLICY.format(name="t6"))
    finally:
        os.close(fd)
    try:
        code, stderr = validate(desired)
        assert code == 1
        assert ":1: cannot read" in stderr and "File name too long" in stderr, stderr[-300:]
    finally:
        shutil.rmtree(desired / name)


def test_a_file_too_large_is_an_error(desired: Path) -> None:
    big = desired / "policies" / "big.yaml"
    with big.open("wb") as f:
        f.truncate(desired_files.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    code, stderr = validate(desired)
    assert code == 1
    assert (f"{big}:1: file is {desired_files.MAX_FILE_BYTES + 1:,} bytes or more: meshplan reads files of at most "
            f"{desired_files.MAX_FILE_BYTES:,} bytes") in stderr, stderr


def test_the_directory_byte_budget_stops_reading(desired: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(desired_files, "MAX_TOTAL_BYTES", 500)
    code, stderr = validate(desired)
    assert code == 1
    assert "the desired directory holds more than 500 bytes of YAML: meshplan reads no more" in stderr, stderr
    assert stderr.count("meshplan reads no more") == 1


def test_too_many_entries_stop_the_walk(desired: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(desired_files, "MAX_ENTRIES", 3)
    code, stderr = validate(desired)
    assert code == 1
    assert f"{desired}:1: more than 3 files and directories: meshplan looks at no more" in stderr, stderr


def test_a_fifo_given_as_the_directory_is_an_error(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    code, stderr = validate(tmp_path / "pipe")
    assert code == 1 and f"{tmp_path}/pipe:1: not a directory or a regular file (a FIFO)" in stderr, stderr
