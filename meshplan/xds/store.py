"""Where `apply` and `meshplan serve` meet: per proxy, the snapshot to serve, the last one the proxy ACKed whole, and
the server's status of it; and which servers are alive.

`Store` is the interface; `DirectoryStore` keeps it in a local directory (`<state>/xds/`), the embedded default.
A shared database for several servers and operators implements the same methods. Writers never coordinate with
readers beyond this: a snapshot write is what tells the server to push, a status appended to the journal is what
tells `apply` how it went. `snapshot_changes` and `status_changes` are the watches: each call returns what changed
since the cursor it was given.

    <state>/xds/snapshots/<proxy>.pb   the snapshot to serve (0600: it holds the proxy's private key)
    <state>/xds/acked/<proxy>.pb       the last snapshot the proxy ACKed whole (make-before-break after a restart)
    <state>/xds/status/<proxy>.json    the server's status of the proxy (no secrets), rewritten a few times a second
    <state>/xds/journal/<id>.<n>.jsonl every status as it changes, one JSON line each, appended by server <id>:
                                       what `apply` follows (one append per batch, where a file per proxy would
                                       cost a rename each; kept to two files of 16 MiB)
    <state>/xds/servers/<id>.json      each running server, with a heartbeat
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from meshplan.util.fsutil import fsync_path, replace_file, write_atomic, write_temp
from meshplan.xds.snapshot import Snapshot, SnapshotError


@dataclass(frozen=True)
class _Listing:
    """A DirectoryStore cursor: the directory's mtime and each file's (inode, mtime, size) when last listed."""

    mtime: int
    entries: dict[str, tuple[int, int, int]]


HEARTBEAT = 1.0  # seconds between two beats of a running server
JOURNAL_BYTES = 16 * 1024 * 1024  # a server's journal file is this large at most; the one before it is kept
ALIVE = 5 * HEARTBEAT  # a server whose last beat is older is gone


@dataclass(frozen=True)
class ProxyStatus:
    """What the server knows of one proxy. `acked`/`nacked` name snapshot versions: a version is acked once every
    step of its delivery was ACKed, nacked when Envoy refused one of them (`error` says what Envoy said)."""

    proxy: str
    server: str = ""  # the id of the server that wrote this
    connected: bool = False  # a stream from this proxy is open (to `server`)
    target: str = ""  # the snapshot version whose delivery ended last (then acked, or nacked)
    acked: str = ""
    nacked: str = ""
    error: str = ""  # Envoy's message for `nacked`, cleaned (XDS-NOTES.md)
    error_type: str = ""  # cluster | listener | secret
    updated_at: float = 0.0

    def evolve(self, **changes: Any) -> ProxyStatus:
        return replace(self, updated_at=time.time(), **changes)

    @classmethod
    def from_json(cls, data: Any) -> ProxyStatus:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class ServerInfo:
    id: str
    pid: int
    host: str
    listen: str
    started_at: float
    beat_at: float = field(default=0.0)

    def alive(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) - self.beat_at < ALIVE


class Store(Protocol):
    def write_snapshot(self, proxy: str, snapshot: Snapshot) -> None: ...
    def write_snapshots(self, snapshots: Mapping[str, Snapshot]) -> None: ...
    def read_snapshot(self, proxy: str) -> Snapshot | None: ...
    def write_acked(self, proxy: str, snapshot: Snapshot) -> None: ...
    def read_acked(self, proxy: str) -> Snapshot | None: ...
    def write_status(self, status: ProxyStatus) -> None: ...
    def read_status(self, proxy: str) -> ProxyStatus | None: ...
    def append_statuses(self, server: str, statuses: Sequence[ProxyStatus]) -> None: ...
    def status_changes(self, cursor: object | None) -> tuple[object, list[ProxyStatus]]: ...
    def snapshot_changes(self, cursor: object | None) -> tuple[object, set[str]]: ...
    def forget(self, proxy: str) -> None: ...
    def beat(self, server: ServerInfo) -> None: ...
    def forget_server(self, server_id: str) -> None: ...
    def servers(self) -> list[ServerInfo]: ...


class DirectoryStore:
    """The store in a local directory. Every write is a rename, so a reader sees the old file or the new one.

    Snapshots are written durably (fsync): `apply` records state only after them. Status and acked files are not
    fsynced: the server writes them often, and after a crash a lost one only costs a re-send."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._loaded: dict[str, tuple[int, str]] = {}  # proxy -> (inode, version) of the snapshot file last read
        self._journals: dict[str, int] = {}  # server -> the generation of its journal this store appends to

    @classmethod
    def under(cls, state_dir: Path) -> DirectoryStore:
        return cls(state_dir.absolute() / "xds")

    def _file(self, kind: str, proxy: str, suffix: str) -> Path:
        if not proxy or "/" in proxy or proxy.startswith(".") or "\0" in proxy:
            raise ValueError(f"proxy name {proxy!r} cannot name a file")
        return self.root / kind / f"{proxy}{suffix}"

    def write_snapshot(self, proxy: str, snapshot: Snapshot) -> None:
        write_atomic(self._file("snapshots", proxy, ".pb"), snapshot.encode(), 0o600)

    def write_snapshots(self, snapshots: Mapping[str, Snapshot]) -> None:
        """Several at once, all durable when it returns: all written and made durable first (an fsync each, in
        parallel, not one after the other), then renamed into place together, so that the server gets the whole
        batch at once (and, on one machine, does not compete with the writing), then one fsync of the directory."""
        files = [self._file("snapshots", proxy, ".pb") for proxy in snapshots]
        if not files:
            return
        files[0].parent.mkdir(parents=True, exist_ok=True)
        temps: list[Path] = []
        try:
            for path, snapshot in zip(files, snapshots.values()):
                temps.append(write_temp(path, snapshot.encode(), 0o600))
        except BaseException:
            for temp in temps:
                temp.unlink(missing_ok=True)
            raise
        try:
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(fsync_path, temps))
        except BaseException:
            for temp in temps:
                temp.unlink(missing_ok=True)
            raise
        for temp, path in zip(temps, files):
            os.replace(temp, path)
        fsync_path(files[0].parent)

    def read_snapshot(self, proxy: str) -> Snapshot | None:
        return self._read_pb("snapshots", proxy)

    def write_acked(self, proxy: str, snapshot: Snapshot) -> None:
        target = self._file("acked", proxy, ".pb")
        target.parent.mkdir(exist_ok=True)
        source = self._file("snapshots", proxy, ".pb")
        try:
            # Most often the snapshot file still holds what was ACKed (the one this store read): link, not copy.
            if self._loaded.get(proxy) == (source.stat().st_ino, snapshot.version):
                temp = target.with_name(f".{target.name}.{os.getpid()}.link")
                temp.unlink(missing_ok=True)
                os.link(source, temp)
                os.replace(temp, target)
                return
        except OSError:
            pass  # no hard links here, or the file just changed: write it
        replace_file(target, snapshot.encode(), 0o600)

    def read_acked(self, proxy: str) -> Snapshot | None:
        return self._read_pb("acked", proxy)

    def _read_pb(self, kind: str, proxy: str) -> Snapshot | None:
        try:
            with self._file(kind, proxy, ".pb").open("rb") as f:
                inode, data = os.fstat(f.fileno()).st_ino, f.read()
        except FileNotFoundError:
            return None
        try:
            snapshot = Snapshot.decode(data)
        except SnapshotError as e:
            raise SnapshotError(f"{self._file(kind, proxy, '.pb')}: {e}") from None
        if kind == "snapshots":
            self._loaded[proxy] = (inode, snapshot.version)
        return snapshot

    def write_status(self, status: ProxyStatus) -> None:
        data = json.dumps(asdict(status), sort_keys=True).encode() + b"\n"
        path = self._file("status", status.proxy, ".json")
        try:
            replace_file(path, data)
        except FileNotFoundError:  # the first status: no directory yet
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_file(path, data)

    def read_status(self, proxy: str) -> ProxyStatus | None:
        try:
            return ProxyStatus.from_json(json.loads(self._file("status", proxy, ".json").read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None  # half a file from before a crash: as good as none; the server writes a new one

    def append_statuses(self, server: str, statuses: Sequence[ProxyStatus]) -> None:
        """Append statuses to the server's journal, in one write."""
        directory = self.root / "journal"
        directory.mkdir(parents=True, exist_ok=True)
        generation = self._journals.get(server, 0)
        path = directory / f"{server}.{generation}.jsonl"
        if generation == 0 or (path.exists() and path.stat().st_size > JOURNAL_BYTES):
            generation += 1
            (directory / f"{server}.{generation - 2}.jsonl").unlink(missing_ok=True)
            self._journals[server] = generation
            path = directory / f"{server}.{generation}.jsonl"
        data = b"".join(json.dumps(asdict(s), sort_keys=True).encode() + b"\n" for s in statuses)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)  # O_APPEND: the lines land whole, after everything written before
        finally:
            os.close(fd)

    def status_changes(self, cursor: object | None) -> tuple[object, list[ProxyStatus]]:
        """The statuses appended to any journal since `cursor`, oldest first (None: a cursor at the end of every
        journal now, and no statuses)."""
        offsets: dict[str, int] = dict(cursor) if isinstance(cursor, dict) else {}
        found: list[ProxyStatus] = []
        directory = self.root / "journal"
        try:
            names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".jsonl"))
        except FileNotFoundError:
            return {}, []
        for name in names:
            path = directory / name
            try:
                with path.open("rb") as f:
                    if cursor is None:
                        offsets[name] = f.seek(0, os.SEEK_END)
                        continue
                    f.seek(offsets.get(name, 0))
                    data = f.read(JOURNAL_BYTES)
            except FileNotFoundError:
                continue
            complete = data[: data.rfind(b"\n") + 1]  # a line being appended now is read next time
            offsets[name] = offsets.get(name, 0) + len(complete)
            for line in complete.splitlines():
                try:
                    found.append(ProxyStatus.from_json(json.loads(line)))
                except (ValueError, TypeError):
                    continue
        return {n: o for n, o in offsets.items() if n in names}, found

    def snapshot_changes(self, cursor: object | None) -> tuple[object, set[str]]:
        """The proxies whose snapshot changed since `cursor` (None: every one there is), and the next cursor.

        A rename into a directory changes the directory's mtime, so a directory that did not change is not listed.
        The kernel's clock for mtimes is coarse (a few ms): two renames within one tick leave one mtime, so a
        directory changed less than a second ago is listed again on the next call."""
        directory = self.root / "snapshots"
        suffix = ".pb"
        previous = cursor if isinstance(cursor, _Listing) else None
        try:
            mtime = directory.stat().st_mtime_ns
        except FileNotFoundError:
            return _Listing(0, {}), set(previous.entries if previous else ())
        if previous is not None and previous.mtime == mtime and time.time() - mtime / 1e9 > 1.0:
            return previous, set()
        entries: dict[str, tuple[int, int, int]] = {}
        with os.scandir(directory) as listing:
            for entry in listing:
                if entry.name.endswith(suffix) and not entry.name.startswith("."):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    entries[entry.name[: -len(suffix)]] = (st.st_ino, st.st_mtime_ns, st.st_size)
        before = previous.entries if previous is not None else {}
        changed = {name for name, sig in entries.items() if before.get(name) != sig}
        changed |= set(before) - set(entries)
        return _Listing(mtime, entries), changed

    def forget(self, proxy: str) -> None:
        """Drop everything about one proxy: its snapshot (the server stops serving it), acked snapshot and status."""
        for kind, suffix in (("snapshots", ".pb"), ("acked", ".pb"), ("status", ".json")):
            self._file(kind, proxy, suffix).unlink(missing_ok=True)

    def beat(self, server: ServerInfo) -> None:
        data = json.dumps(asdict(replace(server, beat_at=time.time())), sort_keys=True).encode() + b"\n"
        write_atomic(self.root / "servers" / f"{server.id}.json", data, durable=False)

    def forget_server(self, server_id: str) -> None:
        (self.root / "servers" / f"{server_id}.json").unlink(missing_ok=True)

    def servers(self) -> list[ServerInfo]:
        found = []
        for path in sorted((self.root / "servers").glob("*.json")):
            try:
                data = json.loads(path.read_bytes())
                found.append(ServerInfo(**data))
            except (OSError, ValueError, TypeError):
                continue
        return found


def new_server_info(listen: str) -> ServerInfo:
    host = socket.gethostname()
    now = time.time()
    return ServerInfo(id=f"{host}-{os.getpid()}-{int(now * 1000)}", pid=os.getpid(), host=host, listen=listen,
                      started_at=now, beat_at=now)
