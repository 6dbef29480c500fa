"""apply: deliver a Plan to running Envoys, verify each one took it, roll back the ones that did not, record state.

Envoy gives no transaction (ENVOY-NOTES.md): an update can be rejected whole, rejected yet partly applied, or left
warming. So every changed proxy goes through the same steps, a wave of proxies at a time:

  baseline  read the update counters (`/stats`) before anything is written
  deliver   the plan's resources into the proxy's watched files, atomically, with a version derived from the plan
  verify    the counters show that version and no new rejection or failure, and the live config canonicalises
            to exactly the desired one — within a bounded wait
  rollback  on any other result the files it had before go back (a fresh version), and that is verified too

The caller holds the state lock; `record` writes what happened into the state file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import httpx

from meshplan import live, state
from meshplan.canonical import fingerprint
from meshplan.envoy import read_xds_files, write_xds_file
from meshplan.plan import Plan, ProxyPlan

COUNTERS = tuple(f"{p}.{c}" for p in ("cluster_manager.cds", "listener_manager.lds") for c in ("update_rejected", "update_failure"))
VERSIONS = ("cluster_manager.cds.version_text", "listener_manager.lds.version_text")
WARMING = ("cluster_manager.warming_clusters", "listener_manager.total_listeners_warming")
_STATS_FILTER = (
    r"^(cluster_manager\.cds|listener_manager\.lds)\.(version_text|update_rejected|update_failure)$"
    r"|^cluster_manager\.warming_clusters$|^listener_manager\.total_listeners_warming$"
)
POLL = 0.02  # seconds between two looks at a proxy's stats


class Outcome(str, Enum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"  # nothing to do for this proxy
    ROLLED_BACK = "rolled back"  # Envoy refused the update; its previous config is back and verified
    UNREACHABLE = "unreachable"
    TIMED_OUT = "timed out"
    SKIPPED = "skipped"  # an earlier wave failed and --on-failure stop
    FAILED = "failed"  # refused, and the rollback could not be verified either

    @property
    def good(self) -> bool:
        """Did the proxy end in its desired or its previous config?"""
        return self in (Outcome.APPLIED, Outcome.UNCHANGED, Outcome.ROLLED_BACK, Outcome.SKIPPED)


@dataclass(frozen=True)
class ProxyResult:
    name: str
    type: str
    outcome: Outcome
    detail: str = ""
    version: str = ""
    fingerprint: str = ""  # what the proxy's files hold now
    delivered: bool = False  # whether its files were written
    seconds: float = 0.0


def version_of(proxy: ProxyPlan) -> str:
    """Derived from the plan, so the same desired config always carries the same version."""
    return f"meshplan-{proxy.desired_fingerprint[:16]}"


class _Unreachable(Exception):
    pass


async def _stats(client: httpx.AsyncClient, admin: str, timeout: float) -> dict[str, Any]:
    try:
        answer = await client.get(f"{admin}/stats", params={"format": "json", "filter": _STATS_FILTER}, timeout=timeout)
        answer.raise_for_status()
        return {s["name"]: s["value"] for s in answer.json()["stats"] if "name" in s}
    except (httpx.TransportError, httpx.HTTPStatusError, ValueError, KeyError) as e:
        raise _Unreachable(f"{admin}/stats: {type(e).__name__}: {e}") from None


async def _live_fingerprint(client: httpx.AsyncClient, name: str, admin: str, timeout: float) -> tuple[str | None, str]:
    result = await live.fetch_proxy(client, name, admin, timeout=timeout, retries=1, backoff=0.05)
    if not result.ok or result.resources is None:
        raise _Unreachable(str(result))
    errors = "; ".join(f"listener {e.name}: {e.details}" for e in result.resources.errored_listeners)
    return fingerprint(result.resources.clusters + result.resources.listeners), errors


CDS = ("cluster_manager.cds.version_text",)
LDS = ("listener_manager.lds.version_text",)


async def _await_version(
    client: httpx.AsyncClient, admin: str, version: str, baseline: dict[str, Any], deadline: float, timeout: float,
    subscriptions: tuple[str, ...] = VERSIONS,
) -> str | None:
    """None once the subscriptions report `version` with nothing warming; else what Envoy said instead (a rejection,
    or the wait ran out)."""
    while True:
        stats = await _stats(client, admin, timeout)
        grown = [c for c in COUNTERS if int(stats.get(c, 0)) > int(baseline.get(c, 0))]
        if grown:
            return "Envoy refused the update (" + ", ".join(f"{c} grew" for c in grown) + ")"
        # A new cluster with health checks (or a listener) warms before it is active: not applied until it is.
        if all(stats.get(v) == version for v in subscriptions) and not any(int(stats.get(w, 0)) for w in WARMING):
            return None
        if time.monotonic() >= deadline:
            seen = ", ".join(f"{v}={stats.get(v)!r}" for v in VERSIONS + WARMING)
            return f"timed out: Envoy still reports {seen}"
        await asyncio.sleep(POLL)


async def _deliver(
    client: httpx.AsyncClient,
    state_dir: Path,
    name: str,
    admin: str,
    version: str,
    clusters: list[dict[str, Any]],
    listeners: list[dict[str, Any]],
    deadline: float,
    timeout: float,
) -> str | None:
    """Make before break, as a control plane orders xDS: first the clusters, the new ones and any old one a current
    listener may still route to; once they are active (a cluster with health checks warms first, and a listener that
    names a cluster Envoy does not have yet is rejected) the listeners; then the clusters alone. Each file waits for
    the one before it: Envoy watches them independently. None when every step took, else what went wrong."""
    baseline = await _stats(client, admin, timeout)
    previous = read_xds_files(state_dir, name)
    wanted = {c["name"] for c in clusters}
    lingering = [c for c in (previous[1] if previous else []) if c.get("name") not in wanted]
    steps: list[tuple[str, list[dict[str, Any]], tuple[str, ...]]] = [
        ("cds.json", clusters + lingering, CDS), ("lds.json", listeners, LDS)
    ]
    if lingering:
        steps.append(("cds.json", clusters, CDS))
    for i, (file, resources, subscription) in enumerate(steps):
        # the first clusters carry a version of their own when the last step rewrites them
        step_version = f"{version}-make" if i == 0 and lingering else version
        write_xds_file(state_dir, name, file, step_version, resources)
        problem = await _await_version(client, admin, step_version, baseline, deadline, timeout, subscription)
        if problem is not None:
            return problem
    return await _await_version(client, admin, version, baseline, deadline, timeout)


async def _deliver_and_verify(
    client: httpx.AsyncClient, state_dir: Path, proxy: ProxyPlan, wait: float, timeout: float
) -> ProxyResult:
    began = time.monotonic()
    version = version_of(proxy)
    desired_clusters, desired_listeners = list(proxy.desired["clusters"]), list(proxy.desired["listeners"])

    def result(outcome: Outcome, detail: str = "", *, delivered: bool = True, fp: str = "") -> ProxyResult:
        return ProxyResult(proxy.name, proxy.type, outcome, detail, version, fp, delivered, time.monotonic() - began)

    try:
        await _stats(client, proxy.admin_url, timeout)
    except _Unreachable as e:
        return result(Outcome.UNREACHABLE, f"before delivery: {e}", delivered=False)
    previous = read_xds_files(state_dir, proxy.name)
    try:
        problem = await _deliver(client, state_dir, proxy.name, proxy.admin_url, version, desired_clusters,
                                 desired_listeners, time.monotonic() + wait, timeout)
        # What Envoy runs now also says why it refused: a listener in error_state carries Envoy's message.
        running, errors = await _live_fingerprint(client, proxy.name, proxy.admin_url, timeout)
        if problem is None:
            if running == proxy.desired_fingerprint:
                return result(Outcome.APPLIED, fp=proxy.desired_fingerprint)
            problem = "Envoy reports the version but runs a different configuration (partly applied)"
        if errors:
            problem += f": {errors}"
    except _Unreachable as e:
        return result(Outcome.UNREACHABLE, f"after delivery, not verified: {e}", fp=proxy.desired_fingerprint)
    return await _rollback(client, state_dir, proxy, previous, problem, wait, timeout, result)


async def _rollback(
    client: httpx.AsyncClient,
    state_dir: Path,
    proxy: ProxyPlan,
    previous: tuple[str, list[dict[str, Any]], list[dict[str, Any]]] | None,
    problem: str,
    wait: float,
    timeout: float,
    result: Callable[..., ProxyResult],
) -> ProxyResult:
    """Put back the files the proxy had (none: an empty configuration) under a fresh version, and verify it."""
    _, clusters, listeners = previous or ("", [], [])
    restore = f"rollback-{version_of(proxy)}-{int(time.time() * 1000)}"
    restored_fp = fingerprint(clusters + listeners)
    try:
        failure = await _deliver(client, state_dir, proxy.name, proxy.admin_url, restore, clusters, listeners,
                                 time.monotonic() + wait, timeout)
        if failure is None:
            running, _ = await _live_fingerprint(client, proxy.name, proxy.admin_url, timeout)
            if running == restored_fp:
                return result(Outcome.ROLLED_BACK, f"{problem}; the previous configuration is back", fp=restored_fp)
            failure = "the previous configuration did not come back whole"
    except _Unreachable as e:
        failure = str(e)
    return result(Outcome.FAILED, f"{problem}; rollback failed: {failure}", fp=restored_fp)


def _socket_addresses(resources: Sequence[dict[str, Any]], key: str) -> set[tuple[str, int]]:
    """Every socket address (address, port) under `key` in some resources (listeners' own, clusters' endpoints)."""
    found: set[tuple[str, int]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, value in node.items():
                if k == key and isinstance(value, dict):
                    socket = value.get("socket_address", {})
                    if "address" in socket and "port_value" in socket:
                        found.add((socket["address"], int(socket["port_value"])))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(list(resources))
    return found


def delivery_order(proxies: Sequence[ProxyPlan]) -> list[list[ProxyPlan]]:
    """Levels of proxies, each level's proxies sending only to proxies of earlier levels (or to none of these).

    A client updated with its server would start sending, and health checking, before the server listens: the
    first check fails and the instance is shunned until the next one (up to Envoy's `no_traffic_interval`, 60 s by
    default). Read from the plan's own resources: a proxy sends to another when one of its clusters' endpoints is one
    of the other's listener addresses. Proxies in a cycle share the last level, in plan order."""
    listens = {p.name: _socket_addresses(p.desired.get("listeners", ()), "address") for p in proxies}
    sends = {p.name: _socket_addresses(p.desired.get("clusters", ()), "address") for p in proxies}
    after = {p.name: {q.name for q in proxies if q.name != p.name and sends[p.name] & listens[q.name]} for p in proxies}
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


def apply_plan(
    plan: Plan,
    state_dir: Path,
    *,
    parallelism: int = 10,
    wait: float = 10.0,
    timeout: float = 5.0,
    stop_on_failure: bool = True,
    progress: Callable[[ProxyResult], None] | None = None,
) -> list[ProxyResult]:
    """Deliver every changed proxy of `plan`, `parallelism` proxies per wave, the proxies a proxy sends to before it
    (`delivery_order`); return every proxy's outcome."""
    changed = [p for p in plan.proxies if p.changes]
    waves = [level[i : i + parallelism] for level in delivery_order(changed) for i in range(0, len(level), parallelism)]
    results = [ProxyResult(p.name, p.type, Outcome.UNCHANGED, fingerprint=p.desired_fingerprint) for p in plan.proxies if not p.changes]

    async def run() -> list[ProxyResult]:
        done: list[ProxyResult] = []
        async with live.new_client(parallelism) as client:
            for wave in waves:
                if stop_on_failure and any(r.outcome is not Outcome.APPLIED for r in done):
                    done += [ProxyResult(p.name, p.type, Outcome.SKIPPED, "an earlier wave failed (--on-failure stop)",
                                         version_of(p), delivered=False) for p in wave]
                    continue
                outcomes = await asyncio.gather(*(_deliver_and_verify(client, state_dir, p, wait, timeout) for p in wave))
                for outcome in outcomes:
                    if progress is not None:
                        progress(outcome)
                done += outcomes
        return done

    return results + asyncio.run(run()) if changed else results


def record(state_dir: Path, results: Sequence[ProxyResult], plan: Plan) -> state.State:
    """Write what happened to each proxy into the state file (the caller holds the lock)."""
    current = state.read(state_dir)
    desired = {p.name: p for p in plan.proxies}
    now = state.now()
    for r in results:
        if r.outcome is Outcome.UNCHANGED:
            if r.name not in current.proxies:
                p = desired[r.name]
                current.proxies[r.name] = state.ProxyRecord(p.desired_fingerprint, "", now, r.outcome.value,
                                                            resources={k: list(v) for k, v in p.desired.items()})
            continue
        if not r.delivered:
            # nothing was written: keep what the files hold, note the attempt
            old = current.proxies.get(r.name) or state.ProxyRecord("", "", "", "")
            old.outcome, old.detail = r.outcome.value, r.detail
            current.proxies[r.name] = old
            continue
        resources = read_xds_files(state_dir, r.name)
        current.proxies[r.name] = state.ProxyRecord(
            fingerprint=r.fingerprint,
            version=r.version,
            applied_at=now,
            outcome=r.outcome.value,
            detail=r.detail,
            resources={"clusters": resources[1], "listeners": resources[2]} if resources else {},
        )
    return state.write(state_dir, current)


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
