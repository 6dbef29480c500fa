"""Atomic file writes: a reader (or a watching Envoy) sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write to a temporary file in the same directory, fsync it, then rename it over `path`. Not `durable`: no
    fsync (readers still see the old file or the new one; after a crash, maybe neither)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (which makes the renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """`write_atomic` without the fsyncs, the directory check and the random name, for writers that write thousands
    of files in a row into a directory that exists (a reader still sees the old file or the new one)."""
    temp = write_temp(path, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_temp(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """`data` in a hidden temporary file beside `path`, to be renamed over it. The name holds the process and
    thread, so two writers never share one."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    view = memoryview(data)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file `path`, refusing (ValueError) one larger than `limit`; never blocks on a FIFO
    or a device. FileNotFoundError when there is none."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"not a regular file but {file_kind(info.st_mode)}")
        if info.st_size > limit:
            raise ValueError(f"{info.st_size} bytes, more than the {limit} allowed")
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ValueError(f"more than the {limit} bytes allowed")
        return b"".join(chunks)
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words, from its `st_mode`."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"
