"""State file (serial, lineage, backup) and the lock every writer holds."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.errors import LockError, StateError
from meshplan.state import records as state
from tests.conftest import fill


def test_serial_grows_lineage_stays_backup_kept(tmp_path: Path) -> None:
    first = state.read(tmp_path)
    assert first.serial == 0
    first.proxies["web"] = state.ProxyRecord("abc", "v1", state.now(), "applied", resources={"clusters": [], "listeners": []})
    written = state.write(tmp_path, first)
    assert written.serial == 1
    again = state.read(tmp_path)
    assert (again.serial, again.lineage) == (1, first.lineage)
    assert again.proxies["web"].fingerprint == "abc"
    again.proxies["web"].fingerprint = "def"
    state.write(tmp_path, again)
    backup = json.loads((tmp_path / "state.json.backup").read_text())
    assert backup["serial"] == 1 and backup["proxies"]["web"]["fingerprint"] == "abc"
    assert state.read(tmp_path).serial == 2


def _hold(state_dir: str, seconds: float, ready: "multiprocessing.synchronize.Event") -> None:
    with state.lock(Path(state_dir), "apply"):
        ready.set()
        time.sleep(seconds)


@contextmanager
def lock_held(state_dir: Path, seconds: float) -> Iterator[multiprocessing.Process]:
    """Another process holds the apply lock for `seconds`: started, waited for until it holds it, and joined."""
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(state_dir), seconds, ready))
    holder.start()
    try:
        assert ready.wait(10)
        yield holder
    finally:
        holder.join(10)


def test_second_writer_fails_with_holder_info(tmp_path: Path) -> None:
    with lock_held(tmp_path, 2.0) as holder:
        with pytest.raises(LockError) as caught:
            with state.lock(tmp_path, "apply", timeout=0.2):
                pass
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and "for apply since" in message
    # once the holder lets go, the lock is free again
    with state.lock(tmp_path, "apply"):
        pass
    assert state.holder(tmp_path) is None


def test_waiting_writer_gets_the_lock_when_it_is_released(tmp_path: Path) -> None:
    with lock_held(tmp_path, 0.5):
        with state.lock(tmp_path, "apply", timeout=10) as info:
            assert state.holder(tmp_path) == info


def test_force_unlock_needs_the_right_id(tmp_path: Path) -> None:
    with state.lock(tmp_path, "apply") as info:
        with pytest.raises(LockError, match="not nope"):
            state.force_unlock(tmp_path, "nope")
        assert state.force_unlock(tmp_path, info.id).id == info.id
        assert state.holder(tmp_path) is None
    with pytest.raises(LockError, match="not held"):
        state.force_unlock(tmp_path, info.id)


# --- odd lock and state files: a clear error and a way out, never a traceback -------------------------------------

DEMO = Path(__file__).parent.parent / "examples" / "demo"
runner = CliRunner()


def test_on_a_full_disk_taking_the_lock_fails_cleanly_and_leaves_no_lock(tmpfs: Callable[..., Path]) -> None:
    disk = tmpfs("full")
    fill(disk)
    with pytest.raises(LockError, match="No space left on device; nothing was changed"):
        with state.lock(disk, "apply"):
            raise AssertionError("not reached")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no lock.json, empty or not; no temporary file
    (disk / "filler").unlink()
    with state.lock(disk, "apply") as info:  # the next apply is not refused
        assert state.holder(disk) == info


def test_a_lock_that_fails_half_written_is_not_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without root (no tmpfs), the same full disk as seen by the last step of writing a file."""

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(LockError, match="No space left on device"):
        with state.lock(tmp_path, "apply"):
            raise AssertionError("not reached")
    assert list(tmp_path.iterdir()) == []


def test_apply_on_a_full_disk_says_so_and_the_next_apply_is_not_refused(tmpfs: Callable[..., Path]) -> None:
    disk = tmpfs("full")
    fill(disk)
    result = runner.invoke(app, ["apply", str(DEMO), "--auto-approve", "--state", str(disk)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot take the state lock in {disk}: No space left on device")
    assert not (disk / "lock.json").exists()


def _write_lock(state_dir: Path, kind: str) -> None:
    lock_file = state_dir / "lock.json"
    good = {"id": "x", "who": "me", "pid": 1, "host": "h", "operation": "apply", "since": "now"}
    if kind == "a directory":
        (lock_file / "inside").mkdir(parents=True)
    elif kind == "a FIFO":
        os.mkfifo(lock_file)
    elif kind == "a dangling symlink":
        lock_file.symlink_to(state_dir / "nowhere")
    else:
        content = {
            "empty": "",
            "garbage": "\x00\x01 not json",
            "null": "null",
            "pid abc": json.dumps(good | {"pid": "abc"}),
            "pid 2**70": json.dumps(good | {"pid": 2**70}),
            "pid true": json.dumps(good | {"pid": True}),
            "no id": json.dumps({k: v for k, v in good.items() if k != "id"}),
            "deep": "[" * 100_000 + "]" * 100_000,
            "huge": " " * (state.MAX_LOCK_BYTES + 1) + "{}",
        }[kind]
        lock_file.write_text(content)


ODD_LOCKS = ["empty", "garbage", "null", "pid abc", "pid 2**70", "pid true", "no id", "deep", "huge", "a directory",
             "a FIFO", "a dangling symlink"]


@pytest.mark.parametrize("kind", ODD_LOCKS)
def test_an_odd_lock_file_is_reported_with_an_id_that_force_unlock_takes(tmp_path: Path, kind: str) -> None:
    _write_lock(tmp_path, kind)
    with pytest.raises(LockError) as caught:
        with state.lock(tmp_path, "apply", timeout=0.05):
            raise AssertionError("not reached")
    message = str(caught.value)
    assert f"the state lock {tmp_path / 'lock.json'} cannot be read: " in message
    [lock_id] = re.findall(r"meshplan force-unlock (broken-[0-9a-f]{12}) --state " + re.escape(str(tmp_path)), message)
    with pytest.raises(LockError, match=lock_id):
        state.holder(tmp_path)
    with pytest.raises(LockError, match=f"held with ID {lock_id}, not nope"):
        state.force_unlock(tmp_path, "nope")

    removed = state.force_unlock(tmp_path, lock_id)
    assert removed.id == lock_id and removed.problem
    assert not os.path.lexists(tmp_path / "lock.json")
    assert os.path.lexists(tmp_path / f"lock.json.{lock_id}")  # moved aside, not destroyed
    with state.lock(tmp_path, "apply"):
        pass


@pytest.mark.parametrize("kind", ["pid abc", "a directory", "empty"])
def test_an_odd_lock_through_the_command_line(tmp_path: Path, kind: str) -> None:
    _write_lock(tmp_path, kind)
    refused = runner.invoke(app, ["apply", str(DEMO), "--auto-approve", "--state", str(tmp_path)])
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit)  # no exception but the exit
    assert "cannot be read" in refused.stderr and "Traceback" not in refused.stderr
    [command] = re.findall(r"meshplan (force-unlock broken-\S+ --state \S+)", refused.stderr)
    removed = runner.invoke(app, command.split())
    assert removed.exit_code == 0, removed.stderr
    assert "Moved the broken lock broken-" in removed.stderr
    assert state.holder(tmp_path) is None


def test_describing_a_lock_whose_pid_no_process_can_have(tmp_path: Path) -> None:
    # describe() asks whether the holder lives: a pid no process can have is no crash there either
    info = state.LockInfo("x", "me", 2**70, socket.gethostname(), "apply", "now")
    assert "that process is gone" in info.describe()


def _mount_read_only(tmpfs: Callable[..., Path], tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        return tmpfs("readonly", readonly=True)  # root writes through permissions: only a read-only mount stops it
    directory = tmp_path / "readonly"
    directory.mkdir()
    directory.chmod(0o555)
    return directory


def test_a_read_only_state_directory_is_a_clear_error(tmpfs: Callable[..., Path], tmp_path: Path) -> None:
    read_only = _mount_read_only(tmpfs, tmp_path)
    applied = runner.invoke(app, ["apply", str(DEMO), "--auto-approve", "--state", str(read_only)])
    assert applied.exit_code == 1 and "Traceback" not in applied.stderr
    assert applied.stderr.startswith(f"Error: cannot take the state lock in {read_only}: ")
    assert "Read-only file system" in applied.stderr or "Permission denied" in applied.stderr

    empty = tmp_path / "snapshot"
    empty.mkdir()
    planned = runner.invoke(app, ["plan", str(DEMO), "--live-from", str(empty), "--state", str(tmp_path / "state"),
                                  "--allow-incomplete", "--out", str(read_only / "plan.json")])
    assert planned.exit_code == 1
    assert f"Error: {read_only / 'plan.json'}: cannot write the plan file: " in planned.stderr
    assert "Traceback" not in planned.stderr

    with pytest.raises(StateError, match="cannot write the state file: .*still holds serial 0"):
        state.write(read_only, state.State.empty())


def test_on_a_full_disk_the_state_file_keeps_its_last_good_content(tmpfs: Callable[..., Path]) -> None:
    disk = tmpfs("full")
    first = state.write(disk, state.State.empty())
    fill(disk)
    record = state.ProxyRecord("f" * 64, "v", state.now(), "applied", resources={"clusters": [{"n": "x" * 8192}]})
    first.proxies["web"] = record
    with pytest.raises(StateError, match="No space left on device"):
        state.write(disk, first)
    assert state.read(disk).serial == 1 and state.read(disk).proxies == {}
    assert not [p.name for p in disk.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


CORRUPT = {
    "proxies is a list": '{"serial": 3, "lineage": "l", "proxies": []}',
    "null": "null",
    "deep": "[" * 100_000 + "]" * 100_000,
    "garbage": "\x00garbage",
    "empty": "",
    "serial is text": '{"serial": "3", "lineage": "l", "proxies": {}}',
    "a record is null": '{"serial": 3, "lineage": "l", "proxies": {"web": null}}',
    "a record lacks fields": '{"serial": 3, "lineage": "l", "proxies": {"web": {"fingerprint": "f"}}}',
    "a record has a list of resources": '{"serial": 3, "lineage": "l", "proxies": {"web": {"fingerprint": "f", '
                                        '"version": "v", "applied_at": "t", "outcome": "applied", "resources": []}}}',
    "newer format": '{"format_version": 9, "serial": 3, "lineage": "l", "proxies": {}}',
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_state_file_names_the_backup_and_how_to_restore_it(tmp_path: Path, kind: str) -> None:
    good = state.State.empty()
    good.proxies["web"] = state.ProxyRecord("abc", "v1", state.now(), "applied")
    state.write(tmp_path, good)
    state.write(tmp_path, good)  # serial 2; the backup holds serial 1
    (tmp_path / "state.json").write_text(CORRUPT[kind])
    with pytest.raises(StateError) as caught:
        state.read(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'state.json'}: cannot read the state file: ")
    restore = f"cp {tmp_path / 'state.json.backup'} {tmp_path / 'state.json'}"
    assert f"The previous state is in {tmp_path / 'state.json.backup'} (serial 1)" in message and restore in message
    subprocess.run(restore.split(), check=True)  # the way out works
    assert state.read(tmp_path).serial == 1 and state.read(tmp_path).proxies["web"].fingerprint == "abc"


def test_a_corrupt_state_file_without_a_backup_says_how_to_start_over(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("null")
    with pytest.raises(StateError, match="There is no .*state.json.backup to restore.*mv .*state.json .*broken"):
        state.read(tmp_path)
    (tmp_path / "state.json.backup").write_text("[]")
    with pytest.raises(StateError, match=r"state.json.backup cannot be read either \(the document is a list"):
        state.read(tmp_path)


@pytest.mark.parametrize("kind", ["proxies is a list", "null", "deep"])
def test_a_corrupt_state_file_through_the_command_line(tmp_path: Path, kind: str) -> None:
    (tmp_path / "state.json").write_text(CORRUPT[kind])
    empty = tmp_path / "snapshot"
    empty.mkdir()
    for command in (["plan", str(DEMO), "--live-from", str(empty)], ["drift", str(DEMO)]):
        result = runner.invoke(app, [*command, "--state", str(tmp_path)])
        assert result.exit_code == 1, result.stdout
        assert isinstance(result.exception, SystemExit)
        assert "cannot read the state file" in result.stderr and "state.json.backup" in result.stderr


def test_a_state_file_that_is_a_directory_or_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    with pytest.raises(StateError, match="not a regular file but a directory"):
        state.read(tmp_path)
    (tmp_path / "state.json").rmdir()
    os.mkfifo(tmp_path / "state.json")  # reading it would block for ever
    with pytest.raises(StateError, match="not a regular file but a FIFO"):
        state.read(tmp_path)
