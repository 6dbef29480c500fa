"""The exceptions meshplan raises; cli.py maps each to an exit code.

MeshplanError
 ├── LoadError        the desired directory cannot be read or has bad input (carries every Violation)
 ├── EnvoyError       the Envoy binary is missing or failed to run
 ├── SandboxError     a local sandbox could not be started, found or stopped
 ├── FetchError       a proxy's admin API did not answer as expected
 ├── ApplyError       delivering configuration to a proxy failed
 ├── LockError        the state lock is held by another process, or cannot be taken, read or removed
 └── StateError       the state file cannot be read or written
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """Where something was written: a file and a 1-based line; or, with line 0, a resource no file holds (Kuma's
    initial default policies, `KUMA_DEFAULT`), shown by `file` alone."""

    file: str
    line: int

    def __str__(self) -> str:
        return self.file if self.line == 0 else f"{self.file}:{self.line}"


# Where Kuma's initial default policies (validate/initial_policies.py) come from: no file, shown as `default`.
KUMA_DEFAULT = Source("default", 0)


@dataclass(frozen=True)
class Violation:
    """One problem with the input, at a field path in a file."""

    source: Source
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.source}: {where}{self.message}"


class MeshplanError(Exception):
    """Base of every error meshplan reports without a traceback."""


class LoadError(MeshplanError):
    def __init__(self, violations: list[Violation]) -> None:
        self.violations = sorted(violations, key=lambda v: (v.source.file, v.source.line, v.path))
        super().__init__("\n".join(str(v) for v in self.violations))


class EnvoyError(MeshplanError):
    pass


class SandboxError(MeshplanError):
    pass


class FetchError(MeshplanError):
    def __init__(self, proxy: str, url: str, cause: str) -> None:
        self.proxy, self.url, self.cause = proxy, url, cause
        super().__init__(f"{proxy}: {url}: {cause}")


class ApplyError(MeshplanError):
    pass


class LockError(MeshplanError):
    pass


class StateError(MeshplanError):
    pass
