"""Odd YAML texts and odd desired directories for fuzzing the loader, and the property each must have.

The property (check_validate): `meshplan validate`, run in-process through the CLI's function, exits 0 or 1, raises
nothing else (a traceback), names a file and line in every error line, and stays within a time and a memory bound.

The texts start from the resources the examples write and mutate them (odd tokens inserted, lines cut, repeated and
re-indented, scalars replaced), or are generated from keys meshplan knows and values of every YAML type. The
directories mix such files with the names, links and special files a desired directory can hold.
Used by tests/test_loader_fuzz.py (a few thousand examples, derandomized) and tests/fuzz/fuzz_loader.py (long runs).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import resource
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml
from hypothesis import strategies as st

from meshplan import cli

ROOT = Path(__file__).parent.parent
SEEDS = sorted({path.read_text() for base in (ROOT / "examples" / "demo", ROOT / "tests" / "data" / "demo-k8s")
                for path in base.rglob("*.y*ml")})

MAX_SECONDS = 10.0  # one validate of a small directory takes milliseconds; this catches a runaway, not a slow CI
MAX_PEAK_BYTES = 64 * 2**20  # memory traced during one validate of inputs of a few kilobytes
MAX_RSS_GROWTH = 256 * 2**20  # the process's peak resident size over a whole fuzz run

# Fragments that have broken YAML loaders: tags, anchors and aliases, merge keys, flow and block indicators,
# directives, control and special characters, huge or odd numbers, dates.
TOKENS = [
    "!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!null ", "!!str ", "!!binary ", "!!set ", "!!omap ", "!!map ",
    "!!seq ", "!!python/object/apply:os.system ", "!!python/name:os.system ", "!local ", "! ", "&a ", "&b ", "*a",
    "*b", "<<: *a\n", "<<: ", "? ", ": ", "- ", "[", "]", "{", "}", ",", "'", '"', "|", ">", "#", "~", "null", "---\n",
    "...\n", "%YAML 1.1\n", "%TAG !! tag:example.com,2000:\n", "\t", "\x00", "\x07", "\x1b[31m", "\x7f", "\ufeff",
    "\u2028", "\x85", "\r", "\r\n", "\n", "\\", "9" * 4301, "0x" + "f" * 50, "1:2:3:4", "1e400", ".nan", "-.inf",
    "2024-13-45", "2024-01-01T00:00:00Z", "&a [*a]", "&a {x: *a}", "[" * 70, "{" * 70, "- " * 70, "0.0.0.0", "::",
    "web\n", "a" * 300, "é", "\U0001f600",
]

KEYS = ["type", "name", "mesh", "spec", "kind", "apiVersion", "metadata", "labels", "networking", "address", "port",
        "admin", "inbound", "outbound", "tags", "kuma.io/service", "targetRef", "to", "from", "default", "rules",
        "mtls", "backends", "endpoints", "match", "tls", "<<", "", "x\ny"]
KINDS = ["Mesh", "Dataplane", "ZoneEgress", "MeshExternalService", "MeshTimeout", "MeshRetry", "MeshHTTPRoute",
         "MeshTrafficPermission", "MeshTrace", "Nonsense"]

# libyaml's emitter when PyYAML has it.
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_SCALARS: list[Any] = [None, True, False, 0, -1, 2**63, 2**70, 0.5, float("nan"), float("inf"), "", "p", "web\n",
                       "x" * 70, "0.0.0.0", "::1", "10s", "-1s", "1:2", *KINDS, *TOKENS]


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth >= 3 or roll < 0.5:
        return rng.choice(_SCALARS)
    if roll < 0.7:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def generate(rng: random.Random) -> str:
    """A document of the keys meshplan knows and odd values of every YAML type, in block or flow style."""
    document: dict[str, Any] = {"type": rng.choice(KINDS), "name": rng.choice(["p", "", "web\n", "a" * 70])}
    document.update((rng.choice(KEYS), _value(rng, 1)) for _ in range(rng.randint(0, 4)))
    return yaml.dump(document, Dumper=_Dumper, default_flow_style=rng.choice([False, True, None]), allow_unicode=True)


def mutate(text: str, rng: random.Random, edits: int) -> str:
    """`text` after a few edits: odd tokens inserted, a slice cut, a line repeated or re-indented, a scalar replaced."""
    for _ in range(edits):
        lines = text.split("\n")
        at, line = rng.randint(0, len(text)), rng.randrange(len(lines))
        edit = rng.choice(["insert", "insert", "cut", "repeat", "indent", "scalar"])
        if edit == "insert":
            text = text[:at] + rng.choice(TOKENS) + text[at:]
        elif edit == "cut":
            text = text[:at] + text[at + rng.randint(1, 40):]
        elif edit == "repeat":
            text = "\n".join(lines[:line + 1] + lines[line:])
        elif edit == "indent":
            lines[line] = " " * rng.randint(0, 9) + lines[line].lstrip(" ")
            text = "\n".join(lines)
        else:
            key, sep, _ = lines[line].partition(": ")
            if sep:
                lines[line] = key + sep + rng.choice(TOKENS)
            text = "\n".join(lines)
    return text


@st.composite
def _texts(draw: st.DrawFn) -> str:
    """A resource the examples write, or a generated one, after a few edits (or none). Everything past the choice of
    seed comes from one seeded Random: a few draws an example instead of dozens keep thousands of examples within
    seconds, at the cost of coarser shrinking (a failing example is printed whole)."""
    rng = draw(st.randoms(use_true_random=True))
    return _text(rng, draw(st.sampled_from(SEEDS)) if draw(st.booleans()) else None)


def _text(rng: random.Random, seed: str | None) -> str:
    if seed is None:
        return mutate(generate(rng), rng, rng.randint(0, 4))
    return mutate(seed, rng, rng.randint(1, 4))


yaml_texts = _texts()


@dataclass(frozen=True)
class Entry:
    """One thing in a desired directory."""

    name: str  # relative path, maybe in a subdirectory
    kind: str  # file | bytes | empty | fifo | symlink | dir
    text: str = ""
    target: str = ""  # a symlink's


_DIRECTORIES = ["", "", "sub/", "sub/deeper/", ".hidden/"]
_STEMS = ["a", "b", "mesh", ".dot", "x y", "ü", "-"]
_SUFFIXES = [".yaml", ".yaml", ".yml", ".YAML", ".Yml", ".json", ".txt", "", ".yaml.swp"]
_KINDS = ["file", "file", "file", "bytes", "empty", "fifo", "symlink", "dir"]
_TARGETS = ["a.yaml", "sub", "sub/a.yaml", ".", "..", "../outside.yaml", "../outside", "/nonexistent/x.yaml",
            "loop.yaml", "/dev/null", "/proc/self/status"]


@st.composite
def directories(draw: st.DrawFn) -> list[Entry]:
    """Up to five entries: YAML and other files, invalid UTF-8, empty files, FIFOs, symlinks in and out and nowhere,
    directories; names in every case and in subdirectories. Built from one seeded Random, like the texts."""
    rng = draw(st.randoms(use_true_random=True))
    entries = []
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        kind = rng.choice(_KINDS)
        name = rng.choice(_DIRECTORIES) + rng.choice(_STEMS) + rng.choice(_SUFFIXES)
        text = _text(rng, rng.choice([None, *SEEDS])) if kind == "file" else ""
        entries.append(Entry(name, kind, text, rng.choice(_TARGETS) if kind == "symlink" else ""))
    return entries


def write_text(base: Path, text: str) -> Path:
    """The desired directory `base/desired` with one file, `resource.yaml`, holding `text` (lone surrogates kept)."""
    root = base / "desired"
    root.mkdir()
    (root / "resource.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    return root


def write_directory(base: Path, entries: list[Entry]) -> Path:
    """The desired directory `base/desired`, with `base/outside.yaml` and `base/outside/` next to it."""
    (base / "outside.yaml").write_text(SEEDS[0])
    (base / "outside").mkdir()
    root = base / "desired"
    root.mkdir()
    for entry in entries:
        path = root / entry.name
        if os.path.lexists(path):
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            continue  # a file already holds the name of a directory asked for
        if entry.kind == "file":
            path.write_text(entry.text, encoding="utf-8", errors="surrogatepass")
        elif entry.kind == "bytes":
            path.write_bytes(b"type: Mesh\nname: \xff\xfe\x00m\n")
        elif entry.kind == "empty":
            path.write_bytes(b"")
        elif entry.kind == "fifo":
            os.mkfifo(path)
        elif entry.kind == "symlink":
            path.symlink_to(entry.target)
        else:
            path.mkdir()
    return root


_ERROR_LINE = re.compile(r"(?P<file>.+?):(?P<line>[1-9][0-9]*): ")
_SUMMARY = re.compile(r"Error: (?P<count>[0-9]+) problems? found; nothing was applied or written\.")


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    errors: int
    seconds: float
    peak_bytes: int | None  # traced, when it was


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def run_validate(root: Path) -> tuple[int, str]:
    """`meshplan validate root` through the CLI's own function, in this process: its exit code and its stderr. Any
    exception but the command's exit propagates: that is the traceback a user would see."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.validate(root)
        except typer.Exit as exit:
            return exit.exit_code, err.getvalue()
    raise AssertionError("validate returned without an exit code")


def check_validate(root: Path, *, trace: bool, rss_before: int) -> Outcome:
    """Run `meshplan validate root` in-process and assert the property; what it found.

    Memory is bounded two ways: the process's peak resident size may not grow past `rss_before` + MAX_RSS_GROWTH
    (cheap: checked every time), and with `trace` the memory Python allocates during the run is traced and may not
    pass MAX_PEAK_BYTES (tracing makes a run several times slower: the caller samples)."""
    if trace:
        tracemalloc.start()
    started = time.monotonic()
    try:
        exit_code, stderr = run_validate(root)
        seconds = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1] if trace else None
    finally:
        if trace:
            tracemalloc.stop()
    assert exit_code in (0, 1), (exit_code, stderr)
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    if exit_code == 0:
        assert lines and lines[0].startswith(f"{root}: valid ("), lines
        for line in lines[1:]:  # warnings name a file:line of the directory too
            assert line.startswith(f"Warning: {root}"), line
            assert _ERROR_LINE.match(line.removeprefix("Warning: ")) is not None, line
        errors = 0
    else:
        summary = _SUMMARY.fullmatch(lines[-1]) if lines else None
        assert summary is not None, lines
        errors = len(lines) - 1
        assert int(summary["count"]) == errors, lines
        for line in lines[:-1]:
            where = _ERROR_LINE.match(line)
            assert where is not None and where["file"].startswith(str(root)), line
    assert seconds < MAX_SECONDS, seconds
    assert peak is None or peak < MAX_PEAK_BYTES, peak
    assert max_rss_bytes() < rss_before + MAX_RSS_GROWTH, (max_rss_bytes(), rss_before)
    return Outcome(exit_code, errors, seconds, peak)


def check_text(text: str, *, trace: bool, rss_before: int) -> Outcome:
    """`check_validate` on a fresh temporary desired directory whose one file holds `text` (`write_text`)."""
    with tempfile.TemporaryDirectory(prefix="meshplan-fuzz-") as base:
        return check_validate(write_text(Path(base), text), trace=trace, rss_before=rss_before)


def check_directory(entries: list[Entry], *, trace: bool, rss_before: int) -> Outcome:
    """`check_validate` on a fresh temporary desired directory made of `entries` (`write_directory`)."""
    with tempfile.TemporaryDirectory(prefix="meshplan-fuzz-") as base:
        return check_validate(write_directory(Path(base), entries), trace=trace, rss_before=rss_before)
