"""State file (serial, lineage, backup) and the lock every writer holds."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from meshplan import state
from meshplan.errors import LockError


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


def test_second_writer_fails_with_holder_info(tmp_path: Path) -> None:
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), 2.0, ready))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LockError) as caught:
            with state.lock(tmp_path, "apply", timeout=0.2):
                pass
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and "for apply since" in message
    finally:
        holder.join(10)
    # once the holder lets go, the lock is free again
    with state.lock(tmp_path, "apply"):
        pass
    assert state.holder(tmp_path) is None


def test_waiting_writer_gets_the_lock_when_it_is_released(tmp_path: Path) -> None:
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), 0.5, ready))
    holder.start()
    try:
        assert ready.wait(10)
        with state.lock(tmp_path, "apply", timeout=10) as info:
            assert state.holder(tmp_path) == info
    finally:
        holder.join(10)


def test_force_unlock_needs_the_right_id(tmp_path: Path) -> None:
    with state.lock(tmp_path, "apply") as info:
        with pytest.raises(LockError, match="not nope"):
            state.force_unlock(tmp_path, "nope")
        assert state.force_unlock(tmp_path, info.id).id == info.id
        assert state.holder(tmp_path) is None
    with pytest.raises(LockError, match="not held"):
        state.force_unlock(tmp_path, info.id)
