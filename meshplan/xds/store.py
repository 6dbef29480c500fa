"""Where `apply` and `meshplan serve` meet: per proxy, the snapshot to serve, the last one the proxy ACKed whole, and
the server's status of it; and which servers are alive.

`Store` is the interface; `DirectoryStore` keeps it in a local directory (`<state>/xds/`), the embedded default.
A shared database for several servers and operators implements the same methods. Writers never coordinate with
readers beyond this: a snapshot write is what tells the server to push, a status write is what tells `apply` how
it went. `changes` is the watch: each call returns what changed since the cursor it was given.

    <state>/xds/snapshots/<proxy>.pb   the snapshot to serve (0600: it holds the proxy's private key)
    <state>/xds/acked/<proxy>.pb       the last snapshot the proxy ACKed whole (make-before-break after a restart)
    <state>/xds/status/<proxy>.json    the server's status of the proxy (no secrets)
    <state>/xds/servers/<id>.json      each running server, with a heartbeat
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from meshplan.fsutil import write_atomic
from meshplan.xds.snapshot import Snapshot, SnapshotError

Kind = Literal["snapshots", "status"]


@dataclass(frozen=True)
class _Listing:
    """A DirectoryStore cursor: the directory's mtime and each file's (inode, mtime, size) when last listed."""

    mtime: int
    entries: dict[str, tuple[int, int, int]]
HEARTBEAT = 1.0  # seconds between two beats of a running server
ALIVE = 5 * HEARTBEAT  # a server whose last beat is older is gone


@dataclass(frozen=True)
class ProxyStatus:
    """What the server knows of one proxy. `acked`/`nacked` name snapshot versions: a version is acked once every
    step of its delivery was ACKed, nacked when Envoy refused one of them (`error` says what Envoy said)."""

    proxy: str
    server: str = ""  # the id of the server that wrote this
    connected: bool = False  # a stream from this proxy is open (to `server`)
    target: str = ""  # the snapshot version being delivered or last delivered
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
    def read_snapshot(self, proxy: str) -> Snapshot | None: ...
    def write_acked(self, proxy: str, snapshot: Snapshot) -> None: ...
    def read_acked(self, proxy: str) -> Snapshot | None: ...
    def write_status(self, status: ProxyStatus) -> None: ...
    def read_status(self, proxy: str) -> ProxyStatus | None: ...
    def changes(self, kind: Kind, cursor: object | None) -> tuple[object, set[str]]: ...
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
        self._seen: dict[Kind, tuple[int, float, dict[str, tuple[int, int, int]]]] = {}

    @classmethod
    def under(cls, state_dir: Path) -> DirectoryStore:
        return cls(state_dir.absolute() / "xds")

    def _file(self, kind: str, proxy: str, suffix: str) -> Path:
        if not proxy or "/" in proxy or proxy.startswith(".") or "\0" in proxy:
            raise ValueError(f"proxy name {proxy!r} cannot name a file")
        return self.root / kind / f"{proxy}{suffix}"

    def write_snapshot(self, proxy: str, snapshot: Snapshot) -> None:
        write_atomic(self._file("snapshots", proxy, ".pb"), snapshot.encode(), 0o600)

    def read_snapshot(self, proxy: str) -> Snapshot | None:
        return self._read_pb("snapshots", proxy)

    def write_acked(self, proxy: str, snapshot: Snapshot) -> None:
        write_atomic(self._file("acked", proxy, ".pb"), snapshot.encode(), 0o600, durable=False)

    def read_acked(self, proxy: str) -> Snapshot | None:
        return self._read_pb("acked", proxy)

    def _read_pb(self, kind: str, proxy: str) -> Snapshot | None:
        try:
            return Snapshot.decode(self._file(kind, proxy, ".pb").read_bytes())
        except FileNotFoundError:
            return None
        except SnapshotError as e:
            raise SnapshotError(f"{self._file(kind, proxy, '.pb')}: {e}") from None

    def write_status(self, status: ProxyStatus) -> None:
        data = json.dumps(asdict(status), sort_keys=True).encode() + b"\n"
        write_atomic(self._file("status", status.proxy, ".json"), data, durable=False)

    def read_status(self, proxy: str) -> ProxyStatus | None:
        try:
            return ProxyStatus.from_json(json.loads(self._file("status", proxy, ".json").read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None  # half a file from before a crash: as good as none; the server writes a new one

    def changes(self, kind: Kind, cursor: object | None) -> tuple[object, set[str]]:
        """The proxies whose `kind` file changed since `cursor` (None: every one there is), and the next cursor.

        A rename into a directory changes the directory's mtime, so a directory that did not change is not listed.
        The kernel's clock for mtimes is coarse (a few ms): two renames within one tick leave one mtime, so a
        directory changed less than a second ago is listed again on the next call."""
        directory = self.root / kind
        suffix = ".pb" if kind == "snapshots" else ".json"
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
