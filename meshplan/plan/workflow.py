"""The pipeline, end to end: load -> validate -> render -> fetch live -> diff -> Plan. The commands call these."""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.match.unused import warnings
from meshplan.model import Dataplane, Desired, ProxyConfig, ZoneEgress
from meshplan.observe import live
from meshplan.plan.model import DesiredForms, Plan, desired_forms, make_plan
from meshplan.render.proxies import render_all
from meshplan.state import records as state
from meshplan.util.phases import Phase, Tick, quiet
from meshplan.validate.addresses import http_url
from meshplan.validate.resources import load_and_parse


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
    chosen = [(p.name, http_url(p.address, p.admin_port)) for p in proxies if selection.picks(p.name)]
    if selection.include and not chosen:
        raise MeshplanError(f"no proxy matches {', '.join(selection.include)} (proxies: {', '.join(p.name for p in proxies)})")
    return chosen


def admin_url(directory: Path, proxy: str) -> str:
    """The admin API of the proxy named `proxy` (exactly: no glob), as the desired directory says: where plan reads."""
    targets = dict(_select(load_and_parse(directory), Selection()))
    if proxy not in targets:
        raise MeshplanError(f"no proxy named {proxy!r} (proxies: {', '.join(targets)})")
    return targets[proxy]


def desired_proxies(directory: Path, selection: Selection = Selection()) -> list[ProxyConfig]:
    desired = load_and_parse(directory)
    names = {name for name, _ in _select(desired, selection)}
    return [p for p in render_all(desired) if p.name in names]


def fetch_targets(
    targets: list[tuple[str, str]], *, parallelism: int = live.DEFAULT_PARALLELISM, timeout: float = live.DEFAULT_TIMEOUT,
    max_response_bytes: int = live.DEFAULT_MAX_RESPONSE_BYTES, phase: Phase = quiet,
) -> dict[str, live.LiveResult]:
    async def run(tick: Tick) -> dict[str, live.LiveResult]:
        async with live.new_client(parallelism) as client:
            return await live.fetch_all(client, targets, parallelism=parallelism, timeout=timeout,
                                        max_response_bytes=max_response_bytes, on_result=lambda _: tick())

    with phase("Reading the admin APIs", len(targets)) as tick:
        return asyncio.run(run(tick))


def fetch_live(
    proxies: list[ProxyConfig], *, parallelism: int = live.DEFAULT_PARALLELISM, timeout: float = live.DEFAULT_TIMEOUT,
    max_response_bytes: int = live.DEFAULT_MAX_RESPONSE_BYTES, phase: Phase = quiet,
) -> dict[str, live.LiveResult]:
    return fetch_targets([(p.name, p.admin_url) for p in proxies], parallelism=parallelism, timeout=timeout,
                         max_response_bytes=max_response_bytes, phase=phase)


# Rendering a fleet is CPU work and fetching it mostly waiting: a forked process renders while this one fetches.
# (A thread does not help: both would hold the interpreter.) Small meshes are rendered here, a fork costs more.
FORK_AT = 200


def _render(desired: Desired) -> tuple[list[ProxyConfig], dict[str, DesiredForms]]:
    """Every proxy's resources and their canonical forms: the CPU half of a plan."""
    proxies = render_all(desired)
    return proxies, {p.name: desired_forms(p) for p in proxies}


def _render_while_fetching(
    desired: Desired, targets: list[tuple[str, str]], parallelism: int, timeout: float,
    max_response_bytes: int = live.DEFAULT_MAX_RESPONSE_BYTES, phase: Phase = quiet,
) -> tuple[list[ProxyConfig], dict[str, DesiredForms], dict[str, live.LiveResult]]:
    if len(targets) < FORK_AT or "fork" not in multiprocessing.get_all_start_methods():
        proxies, forms = _render(desired)
        return proxies, forms, fetch_targets(targets, parallelism=parallelism, timeout=timeout,
                                             max_response_bytes=max_response_bytes, phase=phase)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        rendering = pool.submit(_render, desired)
        results = fetch_targets(targets, parallelism=parallelism, timeout=timeout,
                                max_response_bytes=max_response_bytes, phase=phase)
        proxies, forms = rendering.result()
        return proxies, forms, results


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


def delivered(recorded: state.State) -> dict[str, tuple[str, dict[str, list[dict[str, Any]]]]]:
    """What meshplan last delivered to each proxy that took it (its fingerprint and resources): what the plan tells
    changes made outside from."""
    return {name: (record.fingerprint, record.resources) for name, record in recorded.proxies.items()
            if record.outcome in state.SETTLED and record.resources}


def compute_plan(
    directory: Path,
    state_dir: Path,
    *,
    selection: Selection = Selection(),
    live_from: Path | None = None,
    parallelism: int = live.DEFAULT_PARALLELISM,
    timeout: float = live.DEFAULT_TIMEOUT,
    max_response_bytes: int = live.DEFAULT_MAX_RESPONSE_BYTES,
    phase: Phase = quiet,
) -> Plan:
    with _fewer_collections():
        desired = load_and_parse(directory)
        targets = _select(desired, selection)
        if live_from is not None:
            results = live.load_snapshot(live_from, targets)
            proxies, forms = _render(desired)
        else:
            proxies, forms, results = _render_while_fetching(desired, targets, parallelism, timeout, max_response_bytes,
                                                             phase)
        names = {name for name, _ in targets}
        recorded = state.read(state_dir)
        return make_plan([p for p in proxies if p.name in names], results, desired_dir=str(directory),
                         state_serial=recorded.serial, state_lineage=recorded.lineage if recorded.serial else "",
                         forms=forms, directory_warnings=warnings(desired), delivered=delivered(recorded),
                         applied_facts={name: r.behaviour for name, r in recorded.proxies.items()})
