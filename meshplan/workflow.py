"""The pipeline, end to end: load -> validate -> render -> fetch live -> diff -> Plan. The commands call these."""

from __future__ import annotations

import asyncio
import fnmatch
import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from meshplan import live, state
from meshplan.errors import MeshplanError
from meshplan.model import Dataplane, Desired, ProxyConfig, ZoneEgress
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


def _select(desired: Desired, selection: Selection) -> list[tuple[str, str]]:
    """(name, admin URL) of every selected proxy, known from the desired mesh before anything is rendered."""
    proxies: list[Dataplane | ZoneEgress] = [*sorted(desired.dataplanes, key=lambda d: d.name),
                                              *sorted(desired.egresses, key=lambda e: e.name)]
    chosen = [(p.name, f"http://{p.address}:{p.admin_port}") for p in proxies if selection.picks(p.name)]
    if selection.include and not chosen:
        raise MeshplanError(f"no proxy matches {', '.join(selection.include)} (proxies: {', '.join(p.name for p in proxies)})")
    return chosen


def desired_proxies(directory: Path, state_dir: Path, selection: Selection = Selection()) -> list[ProxyConfig]:
    desired = load_and_parse(directory)
    names = {name for name, _ in _select(desired, selection)}
    return [p for p in render_all(desired, state_dir) if p.name in names]


def fetch_targets(
    targets: list[tuple[str, str]], *, parallelism: int = live.DEFAULT_PARALLELISM, timeout: float = live.DEFAULT_TIMEOUT
) -> dict[str, live.LiveResult]:
    async def run() -> dict[str, live.LiveResult]:
        async with live.new_client(parallelism) as client:
            return await live.fetch_all(client, targets, parallelism=parallelism, timeout=timeout)

    return asyncio.run(run())


def fetch_live(
    proxies: list[ProxyConfig], *, parallelism: int = live.DEFAULT_PARALLELISM, timeout: float = live.DEFAULT_TIMEOUT
) -> dict[str, live.LiveResult]:
    return fetch_targets([(p.name, p.admin_url) for p in proxies], parallelism=parallelism, timeout=timeout)


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """A plan holds the whole desired mesh while it fetches and diffs; with the default thresholds the collector
    walks all of it again and again (a quarter of a 1000-proxy plan, benchmarks/plan_fleet.py). The pipeline makes
    no reference cycles worth collecting early."""
    before = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def compute_plan(
    directory: Path,
    state_dir: Path,
    *,
    selection: Selection = Selection(),
    live_from: Path | None = None,
    parallelism: int = live.DEFAULT_PARALLELISM,
    timeout: float = live.DEFAULT_TIMEOUT,
) -> Plan:
    with _fewer_collections():
        desired = load_and_parse(directory)
        targets = _select(desired, selection)
        if live_from is not None:
            results = live.load_snapshot(live_from, targets)
            proxies = render_all(desired, state_dir)
        else:
            # (Fetching in a thread while rendering was measured: no faster, both hold the interpreter.)
            proxies = render_all(desired, state_dir)
            results = fetch_targets(targets, parallelism=parallelism, timeout=timeout)
        names = {name for name, _ in targets}
        recorded = state.read(state_dir)
        return make_plan([p for p in proxies if p.name in names], results, desired_dir=str(directory),
                         state_serial=recorded.serial, state_lineage=recorded.lineage if recorded.serial else "")
