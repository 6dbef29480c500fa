"""The pipeline, end to end: load -> validate -> render -> fetch live -> diff -> Plan. The commands call these."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from meshplan import live, state
from meshplan.errors import MeshplanError
from meshplan.model import ProxyConfig
from meshplan.plan import Plan, make_plan
from meshplan.render import render_all
from meshplan.validate import load_and_parse


@dataclass(frozen=True)
class Selection:
    """Which proxies a command works on: names matching any include glob (all if none) and no exclude glob."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()

    def picks(self, name: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(name, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, g) for g in self.exclude)


def desired_proxies(directory: Path, state_dir: Path, selection: Selection = Selection()) -> list[ProxyConfig]:
    proxies = render_all(load_and_parse(directory), state_dir)
    chosen = [p for p in proxies if selection.picks(p.name)]
    if selection.include and not chosen:
        raise MeshplanError(f"no proxy matches {', '.join(selection.include)} (proxies: {', '.join(p.name for p in proxies)})")
    return chosen


def fetch_live(
    proxies: list[ProxyConfig], *, parallelism: int = live.DEFAULT_PARALLELISM, timeout: float = live.DEFAULT_TIMEOUT
) -> dict[str, live.LiveResult]:
    async def run() -> dict[str, live.LiveResult]:
        async with live.new_client(parallelism) as client:
            targets = [(p.name, p.admin_url) for p in proxies]
            return await live.fetch_all(client, targets, parallelism=parallelism, timeout=timeout)

    return asyncio.run(run())


def compute_plan(
    directory: Path,
    state_dir: Path,
    *,
    selection: Selection = Selection(),
    live_from: Path | None = None,
    parallelism: int = live.DEFAULT_PARALLELISM,
    timeout: float = live.DEFAULT_TIMEOUT,
) -> Plan:
    proxies = desired_proxies(directory, state_dir, selection)
    if live_from is not None:
        results = live.load_snapshot(live_from, [(p.name, p.admin_url) for p in proxies])
    else:
        results = fetch_live(proxies, parallelism=parallelism, timeout=timeout)
    recorded = state.read(state_dir)
    return make_plan(proxies, results, desired_dir=str(directory), state_serial=recorded.serial,
                     state_lineage=recorded.lineage if recorded.serial else "")
