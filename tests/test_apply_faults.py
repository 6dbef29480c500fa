"""Faults in the middle of `meshplan apply` on real Envoys: meshplan interrupted (SIGINT, SIGTERM), killed (SIGKILL),
stopped and continued; an Envoy stopped mid-delivery; a full disk; a read-only state directory. After each, every
proxy runs its previous or its desired configuration, the state file says which, and `drift` agrees — never a
false `drifted`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import fill

from meshplan.apply.deliver import Outcome, apply_plan, record
from meshplan.plan.workflow import compute_plan
from meshplan.sandbox import mesh as sandbox
from meshplan.state import records as state
from meshplan.xds.store import DirectoryStore
from tests.builders import DemoCopy, bring_down, copy_demo
from tests.test_apply_e2e import apply, drift, meshplan, plan_exit, start_empty

pytestmark = pytest.mark.envoy
PROXIES = ("admin", "backend-1", "backend-2", "egress", "web")


@pytest.fixture
def demo(tmp_path: Path) -> DemoCopy:
    return copy_demo(tmp_path / "demo")


def apply_process(demo: DemoCopy, state_dir: Path, *args: str) -> subprocess.Popen[str]:
    """`meshplan apply` as its own process, one proxy a wave, so that it can be signalled between two."""
    argv = [sys.executable, "-m", "meshplan.cli", "apply", str(demo.path), "--state", str(state_dir), "--auto-approve",
            "--parallelism", "1", *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def until(what: str, check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        time.sleep(0.02)


def first_wave_recorded(state_dir: Path) -> Callable[[], bool]:
    return lambda: (state_dir / "state.json").exists() and state.read(state_dir).serial >= 1


def truthful(demo: DemoCopy, state_dir: Path, tmp_path: Path) -> dict[str, str]:
    """drift's word on every proxy, which must never be `drifted` or `rejected` after meshplan's own faults."""
    code, statuses, _ = drift(demo, state_dir, tmp_path)
    assert set(statuses.values()) <= {"in-sync", "pending"}, statuses
    assert code == (2 if "pending" in statuses.values() else 0)
    return statuses


def finish(demo: DemoCopy, state_dir: Path, tmp_path: Path) -> None:
    """A later apply completes, and then every proxy is in sync and recorded so."""
    code, _, err = apply(demo, state_dir)
    assert code == 0, err
    assert plan_exit(demo, state_dir) == 0
    assert set(truthful(demo, state_dir, tmp_path).values()) == {"in-sync"}
    assert {r.outcome for r in state.read(state_dir).proxies.values()} <= {"applied", "unchanged"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_apply_finishes_the_wave_in_flight_records_it_and_lets_go(
    demo: DemoCopy, sandbox_state: Path, tmp_path: Path, signum: int
) -> None:
    start_empty(demo, sandbox_state)
    running = apply_process(demo, sandbox_state)
    until("the first wave", first_wave_recorded(sandbox_state))
    running.send_signal(signum)
    out, err = running.communicate(timeout=60)

    name = signal.Signals(signum).name
    assert running.returncode == 128 + signum, err
    assert f"Interrupted by {name}: the wave in flight was finished and recorded" in err and "Traceback" not in err
    assert not (sandbox_state / "lock.json").exists()
    records = state.read(sandbox_state).proxies
    done = {n for n, r in records.items() if r.outcome == "applied"}
    skipped = {n for n, r in records.items() if r.outcome == "skipped"}
    assert done and skipped and done | skipped == set(PROXIES)
    assert all("interrupted" in records[n].detail for n in skipped)
    statuses = truthful(demo, sandbox_state, tmp_path)
    assert {n for n, s in statuses.items() if s == "in-sync"} == done  # they run their desired configuration
    finish(demo, sandbox_state, tmp_path)


def test_killed_apply_leaves_no_false_alarm_and_a_lock_that_can_be_removed(
    demo: DemoCopy, sandbox_state: Path, tmp_path: Path
) -> None:
    start_empty(demo, sandbox_state)
    running = apply_process(demo, sandbox_state)
    until("the first wave", first_wave_recorded(sandbox_state))
    running.kill()
    running.communicate(timeout=30)

    truthful(demo, sandbox_state, tmp_path)  # a proxy that took its snapshot unrecorded is in sync, not drifted
    code, _, err = apply(demo, sandbox_state)
    assert code == 1 and "that process is gone" in err
    lock_id = state.holder(sandbox_state).id  # type: ignore[union-attr]
    assert f"meshplan force-unlock {lock_id}" in err
    assert meshplan("force-unlock", lock_id, "--state", str(sandbox_state))[0] == 0
    finish(demo, sandbox_state, tmp_path)


def test_stopped_and_continued_apply_completes(demo: DemoCopy, sandbox_state: Path, tmp_path: Path) -> None:
    start_empty(demo, sandbox_state)
    running = apply_process(demo, sandbox_state)
    until("the first wave", first_wave_recorded(sandbox_state))
    running.send_signal(signal.SIGSTOP)
    try:
        # Stopped, meshplan delivers nothing more: the server has served what was written, and that is all.
        store = DirectoryStore.under(sandbox_state)
        written = [n for n in PROXIES if store.read_snapshot(n) is not None]
        until("the server to deliver what was written", lambda: all(
            (s := store.read_status(n)) is not None and s.acked == store.read_snapshot(n).version  # type: ignore[union-attr]
            for n in written))
    finally:
        running.send_signal(signal.SIGCONT)
    out, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    assert plan_exit(demo, sandbox_state) == 0
    assert set(truthful(demo, sandbox_state, tmp_path).values()) == {"in-sync"}


def test_an_envoy_stopped_mid_delivery_times_out_and_takes_it_when_it_wakes(
    demo: DemoCopy, sandbox_state: Path, tmp_path: Path
) -> None:
    start_empty(demo, sandbox_state)
    (web,) = [p for p in sandbox.status(sandbox_state) if p.role == "envoy" and p.name == "web"]
    plan = compute_plan(demo.path, sandbox_state)  # before: a stopped Envoy's admin API does not answer a plan
    os.kill(web.pid, signal.SIGSTOP)
    try:
        with state.lock(sandbox_state, "apply"):
            results = apply_plan(plan, sandbox_state, wait=2, timeout=1, stop_on_failure=False)
            record(sandbox_state, results, plan)
        outcomes = {r.name: r.outcome for r in results}
        assert outcomes.pop("web") is Outcome.TIMED_OUT
        assert set(outcomes.values()) == {Outcome.APPLIED}
        records = state.read(sandbox_state).proxies
        assert records["web"].outcome == "timed out" and "no ACK or NACK" in records["web"].detail
        _, statuses, _ = drift(demo, sandbox_state, tmp_path)
        assert statuses["web"] == "unreachable" and {s for n, s in statuses.items() if n != "web"} == {"in-sync"}
    finally:
        os.kill(web.pid, signal.SIGCONT)
    # Woken, it reads what the server sent it meanwhile: nothing left to apply.
    store = DirectoryStore.under(sandbox_state)
    until("web to take its snapshot", lambda: (s := store.read_status("web")) is not None
          and s.acked == store.read_snapshot("web").version)  # type: ignore[union-attr]
    assert set(truthful(demo, sandbox_state, tmp_path).values()) == {"in-sync"}
    assert plan_exit(demo, sandbox_state) == 0


@pytest.fixture
def small_state(tmpfs: Callable[..., Path]) -> Iterator[Path]:
    """A state directory on a tmpfs of its own, its sandbox brought down before it is unmounted."""
    where = tmpfs("small-state", size="32m")
    try:
        yield where
    finally:
        bring_down(where)


def test_a_full_disk_stops_apply_before_anything_is_delivered(
    demo: DemoCopy, small_state: Path, tmp_path: Path
) -> None:
    start_empty(demo, small_state)
    fill(small_state)
    with (small_state / "filler").open("r+b") as filler:  # room for the lock, not for five snapshots
        filler.truncate(filler.seek(0, os.SEEK_END) - 8192)
    code, _, err = apply(demo, small_state)
    assert code == 1
    assert "cannot write the snapshots to the store" in err and "No space left on device" in err
    assert not (small_state / "lock.json").exists() and not (small_state / "state.json").exists()
    assert not list((small_state / "xds").glob("snapshots/*"))  # not even a temporary file left
    assert set(truthful(demo, small_state, tmp_path).values()) == {"pending"}  # nothing was applied, and so it says
    (small_state / "filler").unlink()
    finish(demo, small_state, tmp_path)


def test_a_read_only_state_directory_applies_nothing(demo: DemoCopy, small_state: Path, tmp_path: Path) -> None:
    start_empty(demo, small_state)
    # The same directory seen read-only (the server keeps writing through its own view of it): what an apply run
    # from a host that mounts the state read-only meets.
    view = tmp_path / "read-only-view"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(small_state), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        code, _, err = apply(demo, view)
        assert code == 1 and "Read-only file system" in err and "Traceback" not in err
        assert not (small_state / "state.json").exists() and not list((small_state / "xds").glob("snapshots/*"))
        assert set(truthful(demo, view, tmp_path).values()) == {"pending"}
    finally:
        subprocess.run(["umount", str(view)], check=True)
    finish(demo, small_state, tmp_path)
    assert json.loads((small_state / "state.json").read_text())["serial"] >= 1
