"""Processes meshplan starts and must later stop by PID: spawning, recording, recognising, stopping.

A recorded PID is trusted only while /proc/<pid> still shows the recorded command line and start time: PIDs are
reused, and signalling a stranger's process is the one mistake `sandbox down` must never make.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

POLL_INTERVAL = 0.02


class Liveness(str, Enum):
    RUNNING = "running"
    EXITED = "exited"
    REPLACED = "replaced"  # the PID now belongs to another process


class StopOutcome(str, Enum):
    STOPPED = "stopped"  # exited after the polite request or SIGTERM
    KILLED = "killed"  # needed SIGKILL
    NOT_RUNNING = "not running"  # had already exited
    NOT_OURS = "not ours"  # the PID was reused; left alone
    STILL_RUNNING = "still running"  # survived SIGKILL (another user's process?)


@dataclass(frozen=True)
class TrackedProcess:
    role: str
    name: str
    pid: int
    argv: tuple[str, ...]
    started_at: float  # wall-clock seconds, for people
    start_ticks: int | None  # /proc/<pid>/stat starttime: tells a reused PID apart even with the same command line
    address: str
    port: int
    log: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"] = list(self.argv)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrackedProcess:
        return cls(
            role=str(data["role"]),
            name=str(data["name"]),
            pid=int(data["pid"]),
            argv=tuple(str(a) for a in data["argv"]),
            started_at=float(data["started_at"]),
            start_ticks=None if data.get("start_ticks") is None else int(data["start_ticks"]),
            address=str(data["address"]),
            port=int(data["port"]),
            log=str(data["log"]),
        )


@dataclass(frozen=True)
class Stopped:
    process: TrackedProcess
    outcome: StopOutcome


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of a live PID, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0")[:-1])


def _reap(pid: int) -> None:
    # A child of this very process (tests, or a failed `up`) lingers as a zombie until waited for.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def liveness(process: TrackedProcess) -> Liveness:
    _reap(process.pid)
    stat = _proc_stat(process.pid)
    if stat is None or stat[0] in ("Z", "X"):
        return Liveness.EXITED
    if process.start_ticks is not None and stat[1] != process.start_ticks:
        return Liveness.REPLACED
    cmdline = _cmdline(process.pid)
    if cmdline == () and process.start_ticks is not None:
        # The same process (same start time) in the middle of exiting: its memory, and so its cmdline, is gone
        # before it becomes a zombie. Still there, still ours.
        return Liveness.RUNNING
    if cmdline != process.argv:
        return Liveness.REPLACED
    return Liveness.RUNNING


def spawn(
    role: str,
    name: str,
    argv: list[str],
    *,
    output: Path,
    log: Path | None = None,
    address: str,
    port: int,
    cwd: Path,
    env: Mapping[str, str] | None = None,
) -> tuple[TrackedProcess, subprocess.Popen[bytes]]:
    """Start a process in its own session, so that it outlives the command that started it and its Ctrl-C.

    Its stdout and stderr go to `output`; `log` (default: `output`) is where to look when it fails.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as out:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    stat = _proc_stat(child.pid)
    tracked = TrackedProcess(
        role=role,
        name=name,
        pid=child.pid,
        argv=tuple(argv),
        started_at=time.time(),
        start_ticks=None if stat is None else stat[1],
        address=address,
        port=port,
        log=str(log or output),
    )
    return tracked, child


def _signal(process: TrackedProcess, signum: int) -> None:
    # Checked right before each signal, not once at the start: the process may have exited (and its PID been
    # reused) while we waited for it.
    if liveness(process) is not Liveness.RUNNING:
        return
    try:
        os.kill(process.pid, signum)
    except ProcessLookupError:
        pass


def _wait_gone(processes: Iterable[TrackedProcess], seconds: float) -> set[TrackedProcess]:
    """Wait (bounded in time and rounds) until none is running; return those still running."""
    waiting = set(processes)
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / POLL_INTERVAL) + 1):
        waiting = {p for p in waiting if liveness(p) is Liveness.RUNNING}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    return waiting


def stop(
    processes: Iterable[TrackedProcess],
    *,
    ask: Callable[[TrackedProcess], bool] | None = None,
    grace: float = 3.0,
) -> list[Stopped]:
    """Stop exactly these processes: `ask` each politely (True if it agreed), else SIGTERM; SIGKILL after `grace`.

    All are stopped together, so the whole takes at most about 2 * grace + 1 seconds however many there are.
    """
    ordered = list(processes)
    outcomes: dict[TrackedProcess, StopOutcome] = {}
    running: list[TrackedProcess] = []
    for process in ordered:
        state = liveness(process)
        if state is Liveness.RUNNING:
            running.append(process)
        else:
            outcomes[process] = StopOutcome.NOT_OURS if state is Liveness.REPLACED else StopOutcome.NOT_RUNNING

    asked = {p for p in running if ask is not None and ask(p)}
    for process in running:
        if process not in asked:
            _signal(process, signal.SIGTERM)
    stubborn = _wait_gone(running, grace)
    if stubborn & asked:
        # Asked politely and still there: now as everyone else was, with SIGTERM and the same grace.
        for process in stubborn & asked:
            _signal(process, signal.SIGTERM)
        stubborn = (stubborn - asked) | _wait_gone(stubborn & asked, grace)
    for process in stubborn:
        _signal(process, signal.SIGKILL)
    survivors = _wait_gone(stubborn, 1.0)

    for process in running:
        if process in survivors:
            outcomes[process] = StopOutcome.STILL_RUNNING
        elif process in stubborn:
            outcomes[process] = StopOutcome.KILLED
        else:
            outcomes[process] = StopOutcome.STOPPED
    return [Stopped(p, outcomes[p]) for p in ordered]
