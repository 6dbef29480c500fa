"""The steps of `meshplan apply`: lock, plan (or read a saved plan and check it is fresh), show, confirm,
pre-flight with the real Envoy, deliver in waves, record state, summarise."""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from rich.console import Console

from meshplan.apply.deliver import (
    Outcome,
    ProxyResult,
    apply_plan,
    record,
    stale,
    unchanged,
)
from meshplan.envoy.binary import validate_configs
from meshplan.envoy.types import json_fields
from meshplan.errors import ApplyError, MeshplanError
from meshplan.plan.model import Plan, read_plan_file
from meshplan.plan.workflow import Selection, compute_plan, fetch_live
from meshplan.present.human import render_plan
from meshplan.present.progress import phases
from meshplan.present.text import markup_safe
from meshplan.state import records as state
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3
_STYLE = {Outcome.APPLIED: "green", Outcome.UNCHANGED: "dim", Outcome.ROLLED_BACK: "yellow", Outcome.SKIPPED: "yellow"}


def run_apply(
    target: Path,
    state_dir: Path,
    *,
    out: Console,
    err: Console,
    auto_approve: bool,
    stop_on_failure: bool,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    parallelism: int = 10,
    wait: float = 10.0,
    timeout: float = 5.0,
    lock_timeout: float = 0.0,
) -> int:
    saved = target.is_file()
    if not saved and not auto_approve and not sys.stdin.isatty():
        raise MeshplanError("refusing to ask for confirmation: standard input is not a terminal; use --auto-approve")
    with state.lock(state_dir, "apply", timeout=lock_timeout), _signals(err) as signals:
        if saved:
            plan = read_plan_file(target)
            if plan.desired_dir and Path(plan.desired_dir).is_dir():
                pki.ensure(load_and_parse(Path(plan.desired_dir)), state_dir)
            changed = [p.config() for p in plan.proxies if p.changes]
            reasons = stale(plan, state_dir, fetch_live(changed, timeout=timeout, phase=phases(err))) if changed else []
            if reasons:
                raise ApplyError(
                    f"the saved plan {target} is stale, nothing was applied:\n"
                    + "\n".join(f"  {r}" for r in reasons)
                    + f"\nMake a new one: meshplan plan {plan.desired_dir or 'DIR'} --out {target}"
                )
        else:
            pki.ensure(load_and_parse(target), state_dir)
            plan = compute_plan(target, state_dir, selection=Selection(include, exclude), timeout=timeout,
                                phase=phases(err))
            render_plan(out, plan)
        if not plan.complete:
            names = ", ".join(p.name for p in plan.unreachable)
            raise ApplyError(f"the plan is incomplete ({names} could not be read): nothing was applied; "
                             "leave them out with --exclude-proxy to apply the rest")
        if not plan.has_changes:
            err.print("Nothing to apply.")
            return EXIT_OK
        if not saved and not auto_approve:
            answer = input("Do you want to perform these actions? Only 'yes' will be accepted: ")
            if answer.strip() != "yes":
                err.print("Apply cancelled.")
                return EXIT_ERROR
        _preflight(plan, err)
        total, done = len(plan.changed_proxies), [0]

        def progress(result: ProxyResult) -> None:
            done[0] += 1
            _progress(err, result, f"[{done[0]}/{total}] ")

        # State is written as each wave ends, not once at the end: an interrupted apply leaves a true record.
        serial = [state.read(state_dir).serial]

        def recorded(wave: list[ProxyResult]) -> None:
            serial[0] = record(state_dir, wave, plan).serial

        settled = unchanged(plan)
        if settled:  # first, so that an interruption leaves them recorded too
            serial[0] = record(state_dir, settled, plan).serial
        signals.delivering = True
        results = apply_plan(plan, state_dir, parallelism=parallelism, wait=wait, timeout=timeout,
                             stop_on_failure=stop_on_failure, progress=progress, on_wave=recorded,
                             interrupted=lambda: signals.received)
    code = _summary(err, results, serial[0])
    if signals.received:
        err.print(f"Interrupted by {signals.received}: the wave in flight was finished and recorded, the rest skipped; "
                  "the state lock is released.")
        return 128 + int(getattr(signal, signals.received))
    return code


class _Signals:
    """SIGINT and SIGTERM during an apply. Before delivery: stop at once (nothing was written). During delivery: the
    first lets the wave in flight finish (its snapshots are in the store already; its proxies are waited for,
    verified or rolled back, and recorded) and skips the waves after it; a second stops at once."""

    def __init__(self, err: Console) -> None:
        self.err = err
        self.delivering = False
        self.received = ""

    def handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if not self.delivering or self.received:
            raise ApplyError(f"interrupted by {name}" + (" again: stopped without waiting for the wave in flight; "
                             "`meshplan drift` says what each proxy runs" if self.received else
                             ": nothing was applied"))
        self.received = name
        self.err.print(f"{name}: finishing the wave in flight, then stopping (send it again to stop at once).")


@contextlib.contextmanager
def _signals(err: Console) -> Iterator[_Signals]:
    signals = _Signals(err)
    if threading.current_thread() is not threading.main_thread():
        yield signals  # signal handlers can only be set from the main thread (tests run commands elsewhere)
        return
    before = {s: signal.signal(s, signals.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _preflight(plan: Plan, err: Console) -> None:
    """Every proxy about to change must pass `envoy --mode validate`; one failure stops the apply, nothing written."""
    proxies = [p.config() for p in plan.proxies if p.changes]
    missing = sorted({path for proxy in proxies for path in _files(proxy.clusters + proxy.listeners) if not Path(path).exists()})
    if missing:
        raise ApplyError("files the configuration references do not exist (nothing was applied): " + ", ".join(missing))
    with tempfile.TemporaryDirectory(prefix="meshplan-preflight-") as tmp, \
            phases(err)("Pre-flight: envoy --mode validate", len(proxies)) as tick:
        verdicts = validate_configs(proxies, Path(tmp), on_done=tick)
    rejected = {name: message for name, message in verdicts.items() if message}
    if rejected:
        lines = [f"  {name}: {message}" for name, message in sorted(rejected.items())]
        raise ApplyError("pre-flight: Envoy rejects the configuration of "
                         f"{len(rejected)} prox{'y' if len(rejected) == 1 else 'ies'}; nothing was applied:\n" + "\n".join(lines))
    err.print(f"Pre-flight: Envoy accepts the configuration of all {len(proxies)} changed proxies.")


def _files(resources: Sequence[object]) -> list[str]:
    return [value for key, value in json_fields(list(resources)) if key == "filename" and isinstance(value, str)]


def _progress(err: Console, result: ProxyResult, counter: str = "") -> None:
    style = _STYLE.get(result.outcome, "red")
    detail = f": {result.detail}" if result.detail else ""
    err.print(f"  {counter}[{style}]{result.outcome.value}[/{style}] {markup_safe(result.name)} \\[{markup_safe(result.type)}] "
              f"({result.seconds * 1000:.0f} ms){markup_safe(detail)}", markup=True, highlight=False)


def _summary(err: Console, results: Sequence[ProxyResult], serial: int) -> int:
    counts: dict[Outcome, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    for r in results:
        if r.outcome is Outcome.SKIPPED:
            _progress(err, r)
    words = ", ".join(f"{n} {o.value}" for o, n in counts.items())
    bad = [r for r in results if not r.outcome.good]
    partial = [r for r in results if r.outcome in (Outcome.ROLLED_BACK, Outcome.SKIPPED)]
    head = "Apply complete" if not bad and not partial else "Apply finished with problems"
    err.print(f"{head}: {words}. State serial {serial}.")
    if bad:
        return EXIT_ERROR
    return EXIT_PARTIAL if partial else EXIT_OK
