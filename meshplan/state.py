"""The state directory's record of what was applied, and the lock every writer holds.

Like Terraform's local state: `state.json` has a `serial` that grows with every write and a `lineage` fixed at
creation; the previous file is kept as `state.json.backup`. Every write is atomic.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshplan.errors import LockError, MeshplanError
from meshplan.fsutil import write_atomic

STATE_FILE = "state.json"
LOCK_FILE = "lock.json"
FORMAT_VERSION = 1


@dataclass
class ProxyRecord:
    """What meshplan last delivered to one proxy, and how it ended."""

    fingerprint: str
    version: str
    applied_at: str
    outcome: str  # the last apply's outcome for this proxy: applied, rolled back, unreachable, ...
    detail: str = ""  # why, when it is not applied
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "clusters"/"listeners" -> resources


@dataclass
class State:
    serial: int
    lineage: str
    proxies: dict[str, ProxyRecord]

    @classmethod
    def empty(cls) -> State:
        return cls(serial=0, lineage=str(uuid.uuid4()), proxies={})


def read(state_dir: Path) -> State:
    path = state_dir / STATE_FILE
    if not path.exists():
        return State.empty()
    try:
        data = json.loads(path.read_text())
        proxies = {name: ProxyRecord(**record) for name, record in data["proxies"].items()}
        return State(serial=int(data["serial"]), lineage=str(data["lineage"]), proxies=proxies)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MeshplanError(f"{path}: cannot read the state file: {e}") from e


def write(state_dir: Path, state: State) -> State:
    """Write `state` with the next serial (keeping the previous file as a backup); return what was written."""
    path = state_dir / STATE_FILE
    if path.exists():
        write_atomic(state_dir / (STATE_FILE + ".backup"), path.read_bytes())
    written = State(serial=state.serial + 1, lineage=state.lineage, proxies=state.proxies)
    document = {
        "format_version": FORMAT_VERSION,
        "serial": written.serial,
        "lineage": written.lineage,
        "proxies": {name: asdict(record) for name, record in sorted(written.proxies.items())},
    }
    write_atomic(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    return written


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LockInfo:
    id: str
    who: str
    pid: int
    host: str
    operation: str
    since: str

    def describe(self) -> str:
        alive = ""
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            alive = " (that process is gone: if no meshplan is running, `meshplan force-unlock " + self.id + "`)"
        return f"ID {self.id}, held by {self.who} (pid {self.pid} on {self.host}) for {self.operation} since {self.since}{alive}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(state_dir: Path) -> LockInfo | None:
    try:
        return LockInfo(**json.loads((state_dir / LOCK_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise LockError(f"{state_dir / LOCK_FILE}: unreadable lock file ({e}); remove it if no meshplan is running") from e


@contextmanager
def lock(state_dir: Path, operation: str, timeout: float = 0.0) -> Iterator[LockInfo]:
    """Hold the state lock for `operation`; wait up to `timeout` seconds for another holder to let go."""
    state_dir.mkdir(parents=True, exist_ok=True)
    info = LockInfo(str(uuid.uuid4()), getpass.getuser(), os.getpid(), socket.gethostname(), operation, now())
    path = state_dir / LOCK_FILE
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if time.monotonic() >= deadline:
                current = holder(state_dir)
                held = current.describe() if current else "by a process that is just letting go"
                raise LockError(f"the state lock in {state_dir} is held: {held}. "
                                "Wait for it, or retry with --lock-timeout") from None
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)) or 0.01)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(info), f)
            f.flush()
            os.fsync(f.fileno())
        break
    try:
        yield info
    finally:
        current = None
        try:
            current = holder(state_dir)
        except LockError:
            pass
        if current is not None and current.id == info.id:
            path.unlink(missing_ok=True)


def force_unlock(state_dir: Path, lock_id: str) -> LockInfo:
    current = holder(state_dir)
    if current is None:
        raise LockError(f"the state lock in {state_dir} is not held")
    if current.id != lock_id:
        raise LockError(f"the lock is held with ID {current.id}, not {lock_id}: {current.describe()}")
    (state_dir / LOCK_FILE).unlink(missing_ok=True)
    return current
