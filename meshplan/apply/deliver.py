"""apply: deliver a Plan through `meshplan serve`, learn from it whether each Envoy took it, verify what can be
verified, roll back the ones that refused it, record state.

`apply` never talks to an Envoy to change it. Per changed proxy, a wave of proxies at a time:

  deliver   write the proxy's snapshot (its clusters, listeners and secrets, under a new version) to the store
  wait      for the server's status of that version, bounded: acked (every make-before-break step ACKed),
            nacked (Envoy refused a step; its message comes along), or nothing (timed out)
  verify    acked: where the admin API answers, the live config must canonicalise to exactly the desired one
            (`applied`); where it does not, the ACK is all there is (`acknowledged`)
  rollback  nacked, or verified to differ: the snapshot the proxy last ACKed whole goes back under a fresh version,
            and is waited for and verified the same way

The caller holds the state lock; `record` writes what happened into the state file.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import httpx

from meshplan.compare.canonical import fingerprint
from meshplan.envoy.types import (
    CLUSTER,
    LISTENER,
    cluster_endpoints,
    listener_addresses,
)
from meshplan.errors import ApplyError
from meshplan.observe import live
from meshplan.plan.model import Plan, ProxyPlan
from meshplan.state import records as state
from meshplan.xds import snapshot as snapshots
from meshplan.xds.snapshot import Snapshot
from meshplan.xds.store import DirectoryStore, ProxyStatus, Store

POLL = 0.02  # seconds between two looks at the server's status journal
SETTLE = 2.0  # seconds an ACKed proxy may take to show it in /config_dump (listeners warm while SDS secrets arrive)


class Outcome(str, Enum):
    APPLIED = "applied"  # ACKed, and the live config is verified to be the desired one
    ACKNOWLEDGED = "acknowledged"  # ACKed; the admin API did not answer, so not verified
    UNCHANGED = "unchanged"  # nothing to do for this proxy
    ROLLED_BACK = "rolled back"  # Envoy refused the update; its previous config is back and verified
    TIMED_OUT = "timed out"  # no ACK or NACK in time: the snapshot waits in the store for the proxy
    SKIPPED = "skipped"  # an earlier wave failed and --on-failure stop
    FAILED = "failed"  # refused, and the rollback could not be confirmed either

    @property
    def good(self) -> bool:
        """Did the proxy end in its desired or its previous config?"""
        return self in (Outcome.APPLIED, Outcome.ACKNOWLEDGED, Outcome.UNCHANGED, Outcome.ROLLED_BACK, Outcome.SKIPPED)


@dataclass(frozen=True)
class ProxyResult:
    name: str
    type: str
    outcome: Outcome
    detail: str = ""
    version: str = ""
    fingerprint: str = ""  # what the proxy's snapshot in the store holds now
    delivered: bool = False  # whether a snapshot was written
    seconds: float = 0.0
    resources: dict[str, list[dict[str, Any]]] | None = None  # the clusters and listeners of that snapshot
    written_at: float = 0.0  # time.time() when its snapshot went to the store (0: never)
    answered_at: float = 0.0  # time.time() when apply learnt of the ACK or NACK of that snapshot (0: never)


def version_of(proxy: ProxyPlan, now: float | None = None) -> str:
    """The plan's fingerprint, and the time: every write is a new version, so a re-apply of a configuration that was
    once refused is a new snapshot for the server, not the NACKed one again."""
    return f"meshplan-{proxy.desired_fingerprint[:12]}-{int((now or time.time()) * 1000)}"


class StatusWatch:
    """One poll of the store's statuses for every proxy waiting on one; each waiter is woken for its own proxy only
    (a wave of thousands must not wake every waiter for every status that changes)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.statuses: dict[str, ProxyStatus] = {}
        self._cursor: object | None = None
        self._waiters: dict[str, tuple[str, asyncio.Future[ProxyStatus]]] = {}
        self._task: asyncio.Task[None] | None = None

    def _read(self) -> dict[str, ProxyStatus]:
        self._cursor, changed = self.store.status_changes(self._cursor)
        return {status.proxy: status for status in changed}  # the last of each proxy's wins

    async def _poll(self) -> None:
        while True:
            found = await asyncio.to_thread(self._read)
            self.statuses.update(found)
            for proxy, status in found.items():
                version, future = self._waiters.get(proxy, ("", None))
                if future is not None and not future.done() and version in (status.acked, status.nacked):
                    future.set_result(status)
            await asyncio.sleep(POLL)

    def start(self) -> None:
        """From now on: call before writing what to wait for."""
        self._cursor, _ = self.store.status_changes(None)
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def outcome(self, proxy: str, version: str, deadline: float) -> ProxyStatus | None:
        """The proxy's status once `version` is acked or nacked; None if neither by the deadline."""
        status = self.statuses.get(proxy)
        if status is not None and version in (status.acked, status.nacked):
            return status
        future: asyncio.Future[ProxyStatus] = asyncio.get_running_loop().create_future()
        self._waiters[proxy] = (version, future)
        try:
            return await asyncio.wait_for(future, timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            return None
        finally:
            if self._waiters.get(proxy, ("", None))[1] is future:
                del self._waiters[proxy]

    def waiting_detail(self, proxy: str) -> str:
        status = self.statuses.get(proxy) or self.store.read_status(proxy)
        if status is None or not status.connected:
            return "not connected to meshplan serve: its snapshot waits in the store and is delivered when it connects"
        return "connected, but no ACK or NACK of the new snapshot yet"


@dataclass
class _Delivery:
    """What one proxy's delivery needs: the store, the watch, the admin client (and how many may use it at once)
    and the bounds."""

    store: Store
    watch: StatusWatch
    client: httpx.AsyncClient
    admin_slots: asyncio.Semaphore
    wait: float
    timeout: float
    # proxy -> when its (first) snapshot was written, and answered: how long delivery itself took
    written: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    delivered_in: dict[str, float] = field(default_factory=dict)  # seconds from write to answer (or to giving up)


async def _live_fingerprint(d: _Delivery, proxy: ProxyPlan) -> tuple[str | None, bool, str]:
    """(fingerprint of what the proxy runs, whether something is still warming, errors Envoy reports) — or
    (None, False, why) when its admin API does not answer as that proxy."""
    async with d.admin_slots:
        result = await live.fetch_proxy(d.client, proxy.name, proxy.admin_url, timeout=d.timeout, retries=1,
                                        backoff=0.05)
    if not result.ok or result.resources is None:
        return None, False, str(result)
    running = result.resources
    errors = "; ".join(f"listener {e.name}: {e.details}" for e in running.errored_listeners)
    warming = bool(running.warming_clusters or running.warming_listeners)
    return fingerprint(running.clusters + running.listeners), warming, errors


async def _settled(d: _Delivery, proxy: ProxyPlan, expected: str) -> tuple[str | None, str]:
    """After an ACK: ("", "") when the proxy runs `expected`; (None, why) when it cannot be read; else what it
    runs instead — bounded by SETTLE, since warming listeners (waiting for their SDS secrets) are not active yet."""
    deadline = time.monotonic() + SETTLE
    while True:
        running, warming, errors = await _live_fingerprint(d, proxy)
        if running is None:
            return None, errors
        if running == expected:
            return "", ""
        if not warming or time.monotonic() >= deadline:
            return running, errors
        await asyncio.sleep(POLL)


async def _deliver(
    d: _Delivery, proxy: ProxyPlan, snapshot: Snapshot, written: bool = False
) -> tuple[ProxyStatus | None, str]:
    """Write the snapshot (unless it is `written` already) and wait for its outcome: (status, "") once acked or
    nacked, (None, why) if neither."""
    began = time.monotonic()
    d.written.setdefault(proxy.name, time.time())
    if not written:
        await asyncio.to_thread(d.store.write_snapshot, proxy.name, snapshot)
    status = await d.watch.outcome(proxy.name, snapshot.version, time.monotonic() + d.wait)
    d.delivered_in.setdefault(proxy.name, time.monotonic() - began)
    if status is None:
        return None, f"{d.wait:g}s without an ACK or NACK: {d.watch.waiting_detail(proxy.name)}"
    d.answered.setdefault(proxy.name, time.time())
    return status, ""


# Converting a fleet's resources to protobuf is CPU work (~0.5 ms a resource in json_format): from this many proxies
# it is shared among processes forked for it, as many as there are CPUs.
FORK_AT = 200


def _build(state_dir: Path, proxies: Sequence[ProxyPlan], now: float) -> tuple[dict[str, bytes], list[str]]:
    built: dict[str, bytes] = {}
    problems: list[str] = []
    for proxy in proxies:
        try:
            built[proxy.name] = snapshots.build(state_dir, proxy.name, version_of(proxy, now),
                                                proxy.desired["clusters"], proxy.desired["listeners"]).encode()
        except snapshots.SnapshotError as e:
            problems.append(f"  {e}")
    return built, problems


_forked: tuple[Path, Sequence[ProxyPlan], float, int] | None = None  # what forked builders read, not pickled


def _build_share(index: int) -> tuple[dict[str, bytes], list[str]]:
    assert _forked is not None
    state_dir, proxies, now, workers = _forked
    return _build(state_dir, proxies[index::workers], now)


def build_snapshots(plan: Plan, state_dir: Path) -> dict[str, Snapshot]:
    """The snapshot of every proxy the plan changes, each under a new version: the protobuf conversion happens here,
    once. Raises ApplyError naming every proxy whose snapshot cannot be made (nothing is written)."""
    global _forked
    changed, now = plan.changed_proxies, time.time()
    workers = min(os.cpu_count() or 1, len(changed) // (FORK_AT // 2) or 1)
    if len(changed) < FORK_AT or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        parts = [_build(state_dir, changed, now)]
    else:
        _forked = (state_dir, changed, now, workers)  # the forked processes have it without a copy through a pipe
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
                parts = list(pool.map(_build_share, range(workers)))
        finally:
            _forked = None
    problems = [p for _, found in parts for p in found]
    if problems:
        raise ApplyError("cannot make the snapshots to deliver; nothing was applied:\n" + "\n".join(problems))
    return {name: Snapshot.decode(data) for built, _ in parts for name, data in built.items()}


async def _conclude(
    d: _Delivery, proxy: ProxyPlan, snapshot: Snapshot, previous: Snapshot | None, status: ProxyStatus | None, why: str
) -> ProxyResult:
    """What became of one proxy's snapshot: verified, acknowledged only, timed out, or rolled back."""
    began = time.monotonic()
    desired = {"clusters": list(proxy.desired["clusters"]), "listeners": list(proxy.desired["listeners"])}

    def result(outcome: Outcome, detail: str = "", *, fp: str = proxy.desired_fingerprint,
               resources: dict[str, list[dict[str, Any]]] | None = desired, version: str = snapshot.version) -> ProxyResult:
        return ProxyResult(proxy.name, proxy.type, outcome, detail, version, fp, True,
                           time.monotonic() - began + d.delivered_in.get(proxy.name, 0.0), resources)

    if status is None:
        return result(Outcome.TIMED_OUT, why)
    if status.acked == snapshot.version:
        running, errors = await _settled(d, proxy, proxy.desired_fingerprint)
        if running == "":
            return result(Outcome.APPLIED)
        if running is None:
            return result(Outcome.ACKNOWLEDGED, f"ACKed; not verified: {errors}")
        problem = "Envoy ACKed the update but runs a different configuration" + (f": {errors}" if errors else "")
    else:
        problem = f"Envoy refused the {status.error_type}s: {status.error}"
    return await _rollback(d, proxy, previous, problem, result)


async def _wave(d: _Delivery, wave: Sequence[ProxyPlan], built: Mapping[str, Snapshot]) -> list[ProxyResult]:
    """Deliver a wave: every snapshot written and answered (or timed out) first, then each proxy verified or rolled
    back. Verifying reads admin APIs, which must not hold up learning of the ACKs still to come."""
    previous = await asyncio.to_thread(lambda: {p.name: d.store.read_acked(p.name) for p in wave})
    # One write of the whole wave; the waits start at once.
    async def write() -> None:
        await asyncio.to_thread(d.store.write_snapshots, {p.name: built[p.name] for p in wave})
        now = time.time()
        for p in wave:
            d.written[p.name] = now

    writing = asyncio.create_task(write())
    waiting = asyncio.gather(*(_deliver(d, p, built[p.name], written=True) for p in wave))
    either: list[asyncio.Future[Any]] = [writing, waiting]
    await asyncio.wait(either, return_when=asyncio.FIRST_EXCEPTION)
    if writing.done() and writing.exception() is not None:
        waiting.cancel()
        raise ApplyError(f"cannot write the snapshots to the store: {writing.exception()}")
    answers = await waiting
    await writing
    results = await asyncio.gather(*(_conclude(d, p, built[p.name], previous[p.name], *answer)
                                     for p, answer in zip(wave, answers)))
    return [replace(r, written_at=d.written.get(r.name, 0.0), answered_at=d.answered.get(r.name, 0.0)) for r in results]


async def _rollback(
    d: _Delivery, proxy: ProxyPlan, previous: Snapshot | None, problem: str, result: Callable[..., ProxyResult]
) -> ProxyResult:
    """Put back the snapshot the proxy last ACKed whole (none: an empty configuration) under a fresh version, and
    verify it."""
    version = f"rollback-{version_of(proxy)}"  # a fresh version: the server delivers it like any new snapshot
    restore = (previous or Snapshot("")).with_version(version)
    resources = {"clusters": [], "listeners": []} if previous is None else _resources_of(previous)
    restored_fp = fingerprint(resources["clusters"] + resources["listeners"])
    status, why = await _deliver(d, proxy, restore)
    if status is None:
        failure = why
    elif status.nacked == version:
        failure = f"Envoy refused the previous configuration too: {status.error}"
    else:
        running, errors = await _settled(d, proxy, restored_fp)
        if running == "":
            return result(Outcome.ROLLED_BACK, f"{problem}; the previous configuration is back", fp=restored_fp,
                          resources=resources, version=version)
        if running is None:
            return result(Outcome.ROLLED_BACK, f"{problem}; the previous configuration is back (ACKed; not verified: "
                          f"{errors})", fp=restored_fp, resources=resources, version=version)
        failure = "the previous configuration did not come back whole"
    return result(Outcome.FAILED, f"{problem}; rollback failed: {failure}", fp=restored_fp, resources=resources,
                  version=version)


def _resources_of(snapshot: Snapshot) -> dict[str, list[dict[str, Any]]]:
    found = list(snapshots.to_json(snapshot))
    return {"clusters": [r for r in found if r["@type"] == CLUSTER],
            "listeners": [r for r in found if r["@type"] == LISTENER]}


def delivery_order(proxies: Sequence[ProxyPlan]) -> list[list[ProxyPlan]]:
    """Levels of proxies, each level's proxies sending only to proxies of earlier levels (or to none of these).

    A client updated with its server would start sending, and health checking, before the server listens: the
    first check fails and the instance is shunned until the next one (up to Envoy's `no_traffic_interval`, 60 s by
    default). Read from the plan's own resources: a proxy sends to another when one of its clusters' endpoints is one
    of the other's listener addresses. Proxies in a cycle share the last level, in plan order."""
    listens = {p.name: {a for r in p.desired.get("listeners", ()) for a in listener_addresses(r)} for p in proxies}
    sends = {p.name: {a for r in p.desired.get("clusters", ()) for a in cluster_endpoints(r)} for p in proxies}
    owners: dict[tuple[str, int], set[str]] = {}
    for name, addresses in listens.items():
        for address in addresses:
            owners.setdefault(address, set()).add(name)
    after = {p.name: {o for a in sends[p.name] for o in owners.get(a, ()) if o != p.name} for p in proxies}
    levels: list[list[ProxyPlan]] = []
    placed: set[str] = set()
    left = list(proxies)
    while left:
        ready = [p for p in left if after[p.name] <= placed]
        if not ready:  # a cycle: nothing to gain from an order
            ready = left
        levels.append(ready)
        placed |= {p.name for p in ready}
        left = [p for p in left if p.name not in placed]
    return levels


def check_server(store: Store) -> None:
    """Refuse to deliver when no server serves this store: nothing would take the snapshots."""
    if not any(s.alive() for s in store.servers()):
        raise ApplyError("no `meshplan serve` is running for this state directory, so nothing would deliver the "
                         "snapshots; nothing was applied. Start one where the Envoys can reach it: "
                         "meshplan serve --listen HOST:PORT --state DIR")


def unchanged(plan: Plan) -> list[ProxyResult]:
    """The outcome of every proxy the plan leaves alone: it runs its desired configuration already."""
    return [ProxyResult(p.name, p.type, Outcome.UNCHANGED, fingerprint=p.desired_fingerprint)
            for p in plan.proxies if not p.changes]


def apply_plan(
    plan: Plan,
    state_dir: Path,
    *,
    parallelism: int = 10,
    wait: float = 10.0,
    timeout: float = 5.0,
    stop_on_failure: bool = True,
    progress: Callable[[ProxyResult], None] | None = None,
    on_wave: Callable[[list[ProxyResult]], None] | None = None,
    store: Store | None = None,
    interrupted: Callable[[], str] | None = None,
) -> list[ProxyResult]:
    """Deliver every changed proxy of `plan`, `parallelism` proxies per wave, the proxies a proxy sends to before it
    (`delivery_order`); return every proxy's outcome. `on_wave` gets each wave's results as soon as it ends. When
    `interrupted()` says why (a signal's name), the waves after the one in flight are skipped. `parallelism` 0:
    deliver nothing, return the unchanged proxies' outcomes only."""
    store = store or DirectoryStore.under(state_dir)
    changed = [p for p in plan.proxies if p.changes]
    waves = [level[i : i + parallelism] for level in delivery_order(changed) for i in range(0, len(level), parallelism)]
    results = unchanged(plan)
    if not changed:
        return results
    check_server(store)
    built = build_snapshots(plan, state_dir)

    async def run() -> list[ProxyResult]:
        done: list[ProxyResult] = []
        watch = StatusWatch(store)
        watch.start()
        try:
            async with live.new_client(parallelism) as client:
                # Verifying is reading each proxy's admin API, bounded like a plan's fetch.
                delivery = _Delivery(store, watch, client, asyncio.Semaphore(live.DEFAULT_PARALLELISM), wait, timeout)
                for wave in waves:
                    why = interrupted() if interrupted is not None else ""
                    if why:
                        outcomes = [ProxyResult(p.name, p.type, Outcome.SKIPPED, f"not delivered: apply was interrupted "
                                                f"({why})", delivered=False) for p in wave]
                    elif stop_on_failure and any(r.outcome not in (Outcome.APPLIED, Outcome.ACKNOWLEDGED) for r in done):
                        outcomes = [ProxyResult(p.name, p.type, Outcome.SKIPPED, "an earlier wave failed (--on-failure stop)",
                                                delivered=False) for p in wave]
                    else:
                        outcomes = await _wave(delivery, wave, built)
                        for outcome in outcomes:
                            if progress is not None:
                                progress(outcome)
                    done += outcomes
                    if on_wave is not None:
                        on_wave(outcomes)
        finally:
            await watch.stop()
        return done

    return results + asyncio.run(run())


_SETTLED = state.SETTLED


def record(state_dir: Path, results: Sequence[ProxyResult], plan: Plan) -> state.State:
    """Write what happened to each proxy into the state file (the caller holds the lock); nothing to write (only
    proxies already recorded as running their desired configuration): the state as it is."""
    current = state.read(state_dir)
    desired = {p.name: p for p in plan.proxies}
    now = state.now()
    touched = False
    for r in results:
        if r.outcome is Outcome.UNCHANGED:
            # The plan saw it run its desired configuration: a record that says otherwise (an apply interrupted
            # before it could write, a proxy that took its snapshot after apply gave up waiting) is set right.
            p, old = desired[r.name], current.proxies.get(r.name)
            if old is None or old.fingerprint != p.desired_fingerprint or old.outcome not in _SETTLED:
                touched = True
                detail = "" if old is None else f"reconciled: it runs its desired configuration (was: {old.outcome})"
                current.proxies[r.name] = state.ProxyRecord(
                    p.desired_fingerprint, old.version if old else "", now, r.outcome.value, detail,
                    resources={k: list(v) for k, v in p.desired.items()}, behaviour=list(p.facts))
            elif old.behaviour != list(p.facts):  # what its policies mean changed, not what it runs
                touched = True
                old.behaviour = list(p.facts)
            continue
        touched = True
        if not r.delivered:
            # nothing was written: keep what the store holds, note the attempt
            old = current.proxies.get(r.name) or state.ProxyRecord("", "", "", "")
            old.outcome, old.detail = r.outcome.value, r.detail
            current.proxies[r.name] = old
            continue
        previous = current.proxies.get(r.name)
        current.proxies[r.name] = state.ProxyRecord(
            fingerprint=r.fingerprint,
            version=r.version,
            applied_at=now,
            outcome=r.outcome.value,
            detail=r.detail,
            resources=r.resources or {},
            # what its policies mean, once it runs them; a proxy rolled back still means what it did
            behaviour=list(desired[r.name].facts) if r.outcome.value in _SETTLED and r.name in desired
            else (previous.behaviour if previous else []),
        )
    return state.write(state_dir, current) if touched else current


def stale(plan: Plan, state_dir: Path, results: dict[str, live.LiveResult]) -> list[str]:
    """Why a saved plan no longer describes the world, per proxy it would change (empty: it still does)."""
    reasons = []
    current = state.read(state_dir)
    if current.serial != plan.state_serial or (plan.state_lineage and current.lineage != plan.state_lineage):
        reasons.append(f"the state has moved on since the plan was made (serial {plan.state_serial} -> {current.serial})")
    for proxy in plan.proxies:
        if not proxy.changes:
            continue
        result = results.get(proxy.name)
        if result is None or not result.ok or result.resources is None:
            reasons.append(f"{proxy.name}: cannot be read now ({result.outcome.value if result else 'not fetched'})")
        elif fingerprint(result.resources.clusters + result.resources.listeners) != proxy.live_fingerprint:
            reasons.append(f"{proxy.name}: its running configuration changed since the plan was made")
    return reasons
