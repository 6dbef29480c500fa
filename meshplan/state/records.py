"""The state directory's record of what was applied, and the lock every writer holds.

Like Terraform's local state: `state.json` has a `serial` that grows with every write and a `lineage` fixed at
creation; the previous file is kept as `state.json.backup`. Every write is atomic.

The lock file is never seen half-written: its whole content is written and synced to a temporary file first, which
is then linked into place as `lock.json` (a link, unlike a rename, fails when the name exists). Whatever else sits
there — an empty file from an older meshplan on a full disk, garbage, a directory — is a *broken* lock: it has an ID
derived from what it is, every error about it shows that ID, and `force_unlock` with it moves the thing aside.
A state file that cannot be read is an error naming `state.json.backup` and how to restore it.
"""

from __future__ import annotations

import datetime
import errno
import getpass
import hashlib
import json
import os
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from meshplan.errors import LockError, StateError
from meshplan.present.text import printable
from meshplan.util import jsonlimits
from meshplan.util.fsutil import file_kind, read_bounded, write_atomic

STATE_FILE = "state.json"
BACKUP_FILE = STATE_FILE + ".backup"
LOCK_FILE = "lock.json"
FORMAT_VERSION = 1
MAX_STATE_BYTES = 256 * 1024 * 1024  # a 2,000-proxy fleet's state is ~40 MB
MAX_LOCK_BYTES = 64 * 1024  # a lock is ~200 bytes
MAX_PID = 2**22  # Linux's highest (pid_max); anything above is no process


@dataclass
class ProxyRecord:
    """What meshplan last delivered to one proxy, and how it ended."""

    fingerprint: str
    version: str
    applied_at: str
    outcome: str  # the last apply's outcome for this proxy: applied, rolled back, unreachable, ...
    detail: str = ""  # why, when it is not applied
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "clusters"/"listeners" -> resources
    behaviour: list[dict[str, Any]] = field(default_factory=list)  # what its policies meant (match/behaviour.py facts)


# The outcomes after which a record's resources are what the proxy runs, as meshplan delivered them.
SETTLED = ("applied", "acknowledged", "unchanged")


@dataclass
class State:
    serial: int
    lineage: str
    proxies: dict[str, ProxyRecord]

    @classmethod
    def empty(cls) -> State:
        return cls(serial=0, lineage=str(uuid.uuid4()), proxies={})


# --- the state file -----------------------------------------------------------------------------------------------


class _Invalid(ValueError):
    """What is wrong with a state document."""


def read(state_dir: Path) -> State:
    """The state in `state_dir` (an empty one when there is no state file). Raises StateError, naming the backup and
    how to restore it, for a file that cannot be read as a state file."""
    path = state_dir / STATE_FILE
    try:
        return _read_state_file(path)
    except FileNotFoundError:
        return State.empty()
    except (OSError, ValueError) as e:
        raise StateError(f"{path}: cannot read the state file: {_reason(e)}.\n{_way_out(state_dir)}") from None


def _read_state_file(path: Path) -> State:
    document = jsonlimits.loads(read_bounded(path, MAX_STATE_BYTES))
    return _state_of(document)


def _way_out(state_dir: Path) -> str:
    path, backup = state_dir / STATE_FILE, state_dir / BACKUP_FILE
    start_over = (f"To start a new state instead (every proxy then counts as never applied by meshplan, until the "
                  f"next apply records it): mv {path} {path}.broken")
    try:
        previous = _read_state_file(backup)
    except FileNotFoundError:
        return f"There is no {backup} to restore. {start_over}"
    except (OSError, ValueError) as e:
        return f"{backup} cannot be read either ({_reason(e)}). {start_over}"
    return (f"The previous state is in {backup} (serial {previous.serial}). If no meshplan is running, restore it "
            f"with: cp {backup} {path}  (then `meshplan plan` shows what the proxies run now). {start_over}")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _state_of(document: Any) -> State:
    if not isinstance(document, dict):
        raise _Invalid(f"the document is {_json_type(document)}, not an object")
    version = document.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _Invalid(f"format_version is {version!r}, not a version number")
    if version > FORMAT_VERSION:
        raise _Invalid(f"format_version {version}: written by a newer meshplan (this one reads {FORMAT_VERSION})")
    serial, lineage, proxies = document.get("serial"), document.get("lineage"), document.get("proxies")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise _Invalid(f"serial is {_json_type(serial)}, not a whole number of 0 or more")
    if not isinstance(lineage, str):
        raise _Invalid(f"lineage is {_json_type(lineage)}, not a string")
    if not isinstance(proxies, dict):
        raise _Invalid(f"proxies is {_json_type(proxies)}, not an object")
    return State(serial=serial, lineage=lineage, proxies={name: _record(name, r) for name, r in proxies.items()})


_TEXT_FIELDS = tuple(f.name for f in fields(ProxyRecord) if f.type == "str")


def _record(name: str, raw: Any) -> ProxyRecord:
    where = f"proxies[{json.dumps(name)}]"
    if not isinstance(raw, dict):
        raise _Invalid(f"{where} is {_json_type(raw)}, not an object")
    known = {f.name for f in fields(ProxyRecord)}
    unknown = sorted(set(raw) - known)
    missing = sorted(f.name for f in fields(ProxyRecord) if f.name not in raw and f.default is MISSING
                     and f.default_factory is MISSING)
    if unknown or missing:
        words = [f"unknown field {json.dumps(k)}" for k in unknown] + [f"no {k}" for k in missing]
        raise _Invalid(f"{where}: {', '.join(words)}")
    record = ProxyRecord(**raw)
    for key in _TEXT_FIELDS:
        if not isinstance(getattr(record, key), str):
            raise _Invalid(f"{where}.{key} is {_json_type(getattr(record, key))}, not a string")
    resources = record.resources
    if not isinstance(resources, dict) or not all(
        isinstance(v, list) and all(isinstance(r, dict) for r in v) for v in resources.values()
    ):
        raise _Invalid(f"{where}.resources is not an object of lists of resources")
    if not isinstance(record.behaviour, list) or not all(isinstance(f, dict) for f in record.behaviour):
        raise _Invalid(f"{where}.behaviour is not a list of objects")
    return record


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def write(state_dir: Path, state: State) -> State:
    """Write `state` with the next serial (keeping the previous file as a backup); return what was written.

    Raises StateError when it cannot: the state file is then the one there was before (the write is atomic)."""
    path = state_dir / STATE_FILE
    written = State(serial=state.serial + 1, lineage=state.lineage, proxies=state.proxies)
    document = {
        "format_version": FORMAT_VERSION,
        "serial": written.serial,
        "lineage": written.lineage,
        "proxies": {name: asdict(record) for name, record in sorted(written.proxies.items())},
    }
    try:
        if path.exists():
            write_atomic(state_dir / BACKUP_FILE, read_bounded(path, MAX_STATE_BYTES))
        write_atomic(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    except (OSError, ValueError) as e:
        raise StateError(f"{path}: cannot write the state file: {_reason(e)} "
                         f"(it still holds serial {state.serial}, written before)") from None
    return written


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --- the lock -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockInfo:
    id: str
    who: str
    pid: int
    host: str
    operation: str
    since: str
    problem: str = ""  # set for a broken lock: why it cannot be read (then only `id` means anything)

    def describe(self) -> str:
        if self.problem:
            return f"ID {self.id}, a broken lock ({self.problem})"
        alive = ""
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            alive = " (that process is gone: if no meshplan is running, `meshplan force-unlock " + self.id + "`)"
        # what the lock file says is shown escaped: a newline in it must not forge a line of the message around it
        text = f"ID {self.id}, held by {self.who} (pid {self.pid} on {self.host}) for {self.operation} since {self.since}"
        return printable(text) + alive

    def content(self) -> bytes:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self) if f.name != "problem"}).encode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):  # no such pid can exist
        return False
    except PermissionError:
        return True
    return True


def _inspect(state_dir: Path) -> LockInfo | None:
    """The lock in `state_dir`: None when there is none; a LockInfo with `problem` set when it cannot be read."""
    path = state_dir / LOCK_FILE
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return _broken(f"cannot look at it: {_reason(e)}", f"error:{e.errno}")
    if not stat.S_ISREG(info.st_mode):
        identity = f"{info.st_mode}:{info.st_dev}:{info.st_ino}:{info.st_mtime_ns}"
        return _broken(f"{file_kind(info.st_mode)}, not a file", identity)
    try:
        content = read_bounded(path, MAX_LOCK_BYTES)
    except FileNotFoundError:
        return None  # let go between the two looks
    except ValueError as e:
        return _broken(str(e), f"{info.st_size}:{info.st_ino}:{info.st_mtime_ns}")
    except OSError as e:
        return _broken(f"cannot be read: {_reason(e)}", f"{info.st_size}:{info.st_ino}:{info.st_mtime_ns}")
    problem = _lock_problem(content)
    if problem:
        return _broken(problem, content.hex())
    document = json.loads(content)
    return LockInfo(**{f.name: document[f.name] for f in fields(LockInfo) if f.name != "problem"})


def _broken(problem: str, identity: str) -> LockInfo:
    lock_id = "broken-" + hashlib.sha256(identity.encode()).hexdigest()[:12]
    return LockInfo(lock_id, "", 0, "", "", "", problem=problem)


def _lock_problem(content: bytes) -> str:
    if not content.strip():
        return "an empty file"
    try:
        document = jsonlimits.loads(content, max_depth=4)
    except ValueError as e:
        return f"not JSON ({e})"
    if not isinstance(document, dict):
        return f"{_json_type(document)}, not an object"
    for f in fields(LockInfo):
        if f.name == "problem":
            continue
        value = document.get(f.name)
        if f.name == "pid":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_PID:
                return f"pid {json.dumps(value)[:40]} is no process id"
        elif not isinstance(value, str) or (f.name == "id" and not value):
            return f"{f.name} is {_json_type(value)}" + (" (empty)" if value == "" else ", not a string")
    return ""


def holder(state_dir: Path) -> LockInfo | None:
    """Who holds the lock in `state_dir` (None: nobody). Raises LockError for a lock that cannot be read, with its
    ID and how to remove it."""
    current = _inspect(state_dir)
    if current is not None and current.problem:
        raise LockError(_broken_message(state_dir, current))
    return current


def _broken_message(state_dir: Path, current: LockInfo) -> str:
    return (f"the state lock {state_dir / LOCK_FILE} cannot be read: {current.problem}. A crash or a full disk can "
            f"leave one like it. If no meshplan is running, remove it with: "
            f"meshplan force-unlock {current.id} --state {state_dir}")


@contextmanager
def lock(state_dir: Path, operation: str, timeout: float = 0.0) -> Iterator[LockInfo]:
    """Hold the state lock for `operation`; wait up to `timeout` seconds for another holder to let go.

    Raises LockError when the lock is held (naming the holder), broken (naming its ID), or cannot be created (a
    read-only or full state directory): then nothing was written."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LockError(f"cannot take the state lock: cannot create the state directory {state_dir}: {_reason(e)}") from None
    info = LockInfo(str(uuid.uuid4()), getpass.getuser(), os.getpid(), socket.gethostname(), operation, now())
    path = state_dir / LOCK_FILE
    deadline = time.monotonic() + max(timeout, 0.0)
    while not _create(state_dir, path, info):
        if time.monotonic() >= deadline:
            current = _inspect(state_dir)
            if current is not None and current.problem:
                raise LockError(_broken_message(state_dir, current))
            held = current.describe() if current else "by a process that is just letting go"
            raise LockError(f"the state lock in {state_dir} is held: {held}. "
                            "Wait for it, or retry with --lock-timeout")
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)) or 0.01)
    try:
        yield info
    except BaseException:
        _release(state_dir, info, quiet=True)  # what went wrong is the news, not a lock left behind as well
        raise
    _release(state_dir, info, quiet=False)


def _create(state_dir: Path, path: Path, info: LockInfo) -> bool:
    """Put a complete lock file at `path`; False when one is there already."""
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", suffix=".tmp", dir=state_dir)
    except OSError as e:
        raise _cannot_create(state_dir, e) from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(info.content())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temp, 0o644)
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise _cannot_create(state_dir, e) from None
            return _create_without_link(state_dir, path, info)
        return True
    finally:
        try:
            os.unlink(temp)
        except OSError:
            pass


def _create_without_link(state_dir: Path, path: Path, info: LockInfo) -> bool:
    """For a file system without hard links: create exclusively, and remove the file again if writing it fails."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as e:
        raise _cannot_create(state_dir, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(info.content())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)
        raise _cannot_create(state_dir, e) from None
    return True


def _cannot_create(state_dir: Path, e: OSError) -> LockError:
    return LockError(f"cannot take the state lock in {state_dir}: {_reason(e)}; nothing was changed")


def _release(state_dir: Path, info: LockInfo, *, quiet: bool) -> None:
    current = _inspect(state_dir)
    if current is None or current.id != info.id:
        return
    try:
        (state_dir / LOCK_FILE).unlink(missing_ok=True)
    except OSError as e:
        if not quiet:
            raise LockError(f"cannot remove the state lock {state_dir / LOCK_FILE}: {_reason(e)}; remove it with: "
                            f"meshplan force-unlock {info.id} --state {state_dir}") from None


def force_unlock(state_dir: Path, lock_id: str) -> LockInfo:
    """Remove the lock whose ID is `lock_id` (a lock that cannot be read, a broken one, is moved aside to
    `lock.json.<ID>` rather than deleted); return it. LockError when the lock now there has another ID."""
    current = _inspect(state_dir)
    path = state_dir / LOCK_FILE
    if current is None:
        raise LockError(f"the state lock in {state_dir} is not held")
    if current.id != lock_id:
        raise LockError(f"the lock is held with ID {current.id}, not {lock_id}: {current.describe()}")
    try:
        if current.problem:
            os.rename(path, broken_lock_path(state_dir, current.id))
        else:
            path.unlink(missing_ok=True)
    except OSError as e:
        raise LockError(f"cannot remove the state lock {path}: {_reason(e)}") from None
    return current


def broken_lock_path(state_dir: Path, lock_id: str) -> Path:
    """Where `force_unlock` moves a broken lock."""
    return state_dir / f"{LOCK_FILE}.{lock_id}"

