"""Which files of a desired directory are read, and why any other one is not: nothing in it is passed over without a
word, and reading it is bounded.

The rules (README, "The desired directory"; docs/reliability.md):
- Files named `*.yaml` and `*.yml` are read, in every subdirectory, in path order. Other names are not, except that
  a name kubectl users might expect to be read (`.YAML`, `.Yml`, `.json`) is an error: kubectl compares extensions
  case-sensitively and skips `.YAML` silently, and meshplan does not read JSON.
- A directory, or a YAML file, that cannot be read is an error (a policy in an unreadable directory must not vanish
  from an apply). So is a YAML name that is not a regular file (a FIFO would block the read).
- Symlinks are followed only inside the directory: a YAML-named or directory symlink whose target is outside it is
  an error, and so is any symlink that points nowhere. A symlinked directory is not walked through the link: its
  target is inside, so its files are read under their own names. A file reached by several names is read once,
  under its own name when it has one.
- Limits: MAX_FILE_BYTES per file, MAX_TOTAL_BYTES for the directory, MAX_DIR_DEPTH levels of subdirectories and
  MAX_ENTRIES directory entries looked at.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from meshplan.errors import Source, Violation

YAML_SUFFIXES = (".yaml", ".yml")
_LOOK_ALIKE = (".yaml", ".yml", ".json")  # compared in lower case

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_TOTAL_BYTES = 64 * 1024 * 1024
MAX_DIR_DEPTH = 32
MAX_ENTRIES = 100_000


@dataclass
class ByteBudget:
    """The bytes one read of a desired directory may still take, shared by its files."""

    left: int = field(default_factory=lambda: MAX_TOTAL_BYTES)
    spent: bool = False  # a file did not fit: the caller reads no more


@dataclass(frozen=True)
class DesiredFile:
    path: Path  # what is opened
    display: str  # how messages name it: the path as the user gave the directory, then the names inside
    follow: bool  # whether the name is a symlink (already checked to point inside the directory)


def _error(where: Path | str, message: str) -> Violation:
    # A problem with a whole file or directory is reported at its line 1, so that every message reads file:line.
    return Violation(Source(str(where), 1), "", message)


def find_files(root: Path) -> tuple[list[DesiredFile], list[Violation]]:
    """The files to read under `root` (or `root` itself when it is a file), and every problem found looking."""
    try:
        st = root.stat()
    except FileNotFoundError:
        return [], [_error(root, "no such directory")]
    except OSError as e:
        return [], [_error(root, f"cannot read: {e.strerror}")]
    if stat.S_ISREG(st.st_mode):
        return [DesiredFile(root, str(root), follow=True)], []  # named on the command line: read whatever its name
    if not stat.S_ISDIR(st.st_mode):
        return [], [_error(root, f"not a directory or a regular file ({_kind(st.st_mode)})")]
    walk = _Walk(root)
    walk.run()
    if not walk.files and not walk.violations:
        walk.violations.append(_error(root, "no .yaml or .yml files found"))
    return walk.files, walk.violations


class _Walk:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.files: list[DesiredFile] = []
        self.violations: list[Violation] = []
        self.entries = 0

    def run(self) -> None:
        pending: list[tuple[Path, int]] = [(self.root, 0)]
        found: list[tuple[Path, bool, os.stat_result]] = []
        while pending:
            directory, depth = pending.pop()
            try:
                with os.scandir(directory) as listing:
                    entries = list(listing)
            except OSError as e:
                self.violations.append(_error(directory, f"cannot read directory: {e.strerror}"))
                continue
            for entry in entries:
                self.entries += 1
                if self.entries > MAX_ENTRIES:
                    self.violations.append(_error(self.root, f"more than {MAX_ENTRIES:,} files and directories: "
                                                  "meshplan looks at no more (is this the right directory?)"))
                    return
                path = directory / entry.name
                try:
                    taken = self._entry(entry, path, depth, pending)
                except OSError as e:
                    self.violations.append(_error(path, f"cannot read: {e.strerror}"))
                    continue
                if taken is not None:
                    found.append((path, *taken))
        # A file reached by several names is read once: under a name that is not a symlink if it has one, else the
        # first. Then path order, as `sorted(root.rglob(...))` gave it, the same on every machine.
        chosen: dict[tuple[int, int], tuple[Path, bool]] = {}
        for path, follow, st in sorted(found, key=lambda item: (item[1], item[0])):
            chosen.setdefault((st.st_dev, st.st_ino), (path, follow))
        self.files = [DesiredFile(path, str(path), follow) for path, follow in sorted(chosen.values())]

    def _entry(self, entry: os.DirEntry[str], path: Path, depth: int,
               pending: list[tuple[Path, int]]) -> tuple[bool, os.stat_result] | None:
        """The file to read at this entry (whether it is a symlink, and what it is), or None; walks into directories."""
        suffix = os.path.splitext(entry.name)[1]
        wanted = suffix in YAML_SUFFIXES
        if entry.is_symlink():
            return self._symlink(path, wanted, suffix)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            if depth + 1 > MAX_DIR_DEPTH:
                self.violations.append(_error(path, f"directories nested more than {MAX_DIR_DEPTH} deep: "
                                              "meshplan does not look inside"))
            else:
                pending.append((path, depth + 1))
            return None
        if not wanted:
            self._look_alike(path, suffix)
            return None
        if not stat.S_ISREG(st.st_mode):
            self.violations.append(_error(path, f"not a regular file ({_kind(st.st_mode)}): meshplan reads only files"))
            return None
        return False, st

    def _symlink(self, path: Path, wanted: bool, suffix: str) -> tuple[bool, os.stat_result] | None:
        target = os.path.realpath(path)
        try:
            st = os.stat(path)
        except OSError as e:
            # Whatever it pointed to may have held resources (a directory of policies, say).
            self.violations.append(_error(path, f"symlink to {os.readlink(path)!r}, which cannot be followed: {e.strerror}"))
            return None
        is_dir = stat.S_ISDIR(st.st_mode)
        if not (wanted or is_dir):
            self._look_alike(path, suffix)
            return None
        if os.path.commonpath([self.real_root, target]) != self.real_root:
            self.violations.append(_error(path, f"symlink to {target}, outside the desired directory "
                                          f"{self.real_root}: meshplan follows symlinks only inside it"))
            return None
        if is_dir:
            return None  # its target is inside the directory too, and read there under its own names
        if not stat.S_ISREG(st.st_mode):
            self.violations.append(_error(path, f"symlink to {target}, which is not a regular file ({_kind(st.st_mode)})"))
            return None
        return True, st

    def _look_alike(self, path: Path, suffix: str) -> None:
        if suffix.lower() not in _LOOK_ALIKE:
            return
        if suffix.lower() == ".json":
            self.violations.append(_error(path, "meshplan reads .yaml and .yml files, not .json: "
                                          "write it as YAML, or move it out of the desired directory"))
        else:
            self.violations.append(_error(path, f"meshplan reads only lower-case .yaml and .yml names (kubectl skips "
                                          f"{suffix} files without a word): rename it to {path.stem}{suffix.lower()}"))


def read_text(file: DesiredFile, budget: ByteBudget) -> tuple[str | None, list[Violation]]:
    """The file's text: UTF-8, at most MAX_FILE_BYTES and what is left of the directory's budget."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # never blocks on a FIFO swapped in after the walk
    if not file.follow:
        flags |= os.O_NOFOLLOW  # nor follows a symlink swapped in after the walk
    try:
        fd = os.open(file.path, flags)
    except OSError as e:
        return None, [_error(file.display, f"cannot read file: {e.strerror}")]
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, [_error(file.display, f"not a regular file ({_kind(st.st_mode)}): meshplan reads only files")]
        limit = min(MAX_FILE_BYTES, budget.left)
        if st.st_size > limit:
            return None, [_too_large(file.display, st.st_size, budget)]
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # the file may grow while it is read: stop one byte past the limit
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        return None, [_error(file.display, f"cannot read file: {e.strerror}")]
    finally:
        os.close(fd)
    if size > limit:
        return None, [_too_large(file.display, size, budget)]
    budget.left -= size
    data = b"".join(chunks)
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return None, [Violation(Source(file.display, line), "", f"not UTF-8: byte 0x{data[e.start]:02X} "
                                f"at byte offset {e.start} cannot be decoded ({e.reason})")]


def _too_large(display: str, size: int, budget: ByteBudget) -> Violation:
    if size > MAX_FILE_BYTES:
        return _error(display, f"file is {size:,} bytes or more: meshplan reads files of at most {MAX_FILE_BYTES:,} bytes")
    budget.spent = True
    return _error(display, f"the desired directory holds more than {MAX_TOTAL_BYTES:,} bytes of YAML: meshplan reads no more")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"
