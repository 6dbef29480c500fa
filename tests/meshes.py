"""Copies of the bundled example for tests, moved to loopback addresses of their own so that tests never meet."""

from __future__ import annotations

import itertools
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from meshplan.model import ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki

DEMO = Path(__file__).parent.parent / "examples" / "demo"

_networks = itertools.count(random.Random().randrange(0, 200 * 250))


def fresh_prefix() -> str:
    """`127.A.B.`: a /24 that no other test of this session has used (and unlikely any other session)."""
    n = next(_networks) % (200 * 250)
    return f"127.{40 + n // 250}.{n % 250}."


@dataclass(frozen=True)
class DemoCopy:
    path: Path
    proxies: str  # the prefix that replaced 127.0.1.
    externals: str  # the prefix that replaced 127.0.2.

    def addr(self, original: str) -> str:
        """Where an address of examples/demo (`127.0.1.1`) lives in this copy."""
        return original.replace("127.0.1.", self.proxies).replace("127.0.2.", self.externals)

    def url(self, original: str, path: str = "/") -> str:
        return f"http://{self.addr(original)}{path}"


def copy_demo(target: Path, source: Path = DEMO) -> DemoCopy:
    """examples/demo moved from 127.0.1.x and 127.0.2.x to two fresh /24s."""
    copy = DemoCopy(target, fresh_prefix(), fresh_prefix())
    shutil.copytree(source, target)
    for path in target.rglob("*.y*ml"):
        path.write_text(copy.addr(path.read_text()))
    return copy


def start(directory: Path, state: Path) -> list[ProxyConfig]:
    """Bring up a sandbox running exactly what `directory` renders to."""
    desired = load_and_parse(directory)
    pki.ensure(desired, state)
    proxies = render_all(desired)
    sandbox.up(desired, proxies, state)
    return proxies
