"""Tracked processes: recognising a recorded PID, and stopping exactly that process, by force if need be."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshplan.util.processes import (
    Liveness,
    StopOutcome,
    TrackedProcess,
    liveness,
    spawn,
    stop,
)
from tests.builders import pid_running

IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
)


@pytest.fixture
def stubborn(tmp_path: Path) -> Iterator[tuple[TrackedProcess, subprocess.Popen[bytes]]]:
    """A process that ignores SIGTERM; killed afterwards whatever the test did."""
    output = tmp_path / "stubborn.log"
    tracked, child = spawn("app", "stubborn", [sys.executable, "-c", IGNORES_SIGTERM], output=output,
                           address="127.0.0.1", port=0, cwd=tmp_path)  # fmt: skip
    try:
        for _ in range(500):  # until the SIGTERM handler is in place (bounded: 10 s)
            if output.read_text().strip() == "up" or child.poll() is not None:
                break
            time.sleep(0.02)
        yield tracked, child
    finally:
        child.kill()
        child.wait(timeout=5)


def test_a_recorded_process_is_recognised_and_a_changed_one_is_not(
    stubborn: tuple[TrackedProcess, subprocess.Popen[bytes]],
) -> None:
    tracked, _ = stubborn
    assert liveness(tracked) is Liveness.RUNNING
    assert liveness(dataclasses.replace(tracked, argv=("envoy", "-c", "x"))) is Liveness.REPLACED
    assert liveness(dataclasses.replace(tracked, start_ticks=(tracked.start_ticks or 0) + 1)) is Liveness.REPLACED
    assert TrackedProcess.from_json(tracked.to_json()) == tracked


def test_stop_kills_what_ignores_sigterm(stubborn: tuple[TrackedProcess, subprocess.Popen[bytes]]) -> None:
    tracked, _ = stubborn
    [stopped] = stop([tracked], grace=0.3)
    assert stopped.outcome is StopOutcome.KILLED
    assert not pid_running(tracked.pid)
    # Stopping again is harmless.
    assert [s.outcome for s in stop([tracked], grace=0.3)] == [StopOutcome.NOT_RUNNING]
