"""drift: for cron. Classify every proxy by comparing three fingerprints — what the desired directory renders to,
what meshplan last delivered (the state file), and what the Envoy runs (its admin API) — with what `meshplan serve`
says of it (the store's status), and say it with an exit code, JSON and Prometheus gauges. Reads state, never writes.

    in-sync      live = desired (whatever the state file says)
    pending      live = delivered, desired differs: a change waits for `meshplan apply`; or the server holds a
                 snapshot the proxy has not taken yet (it is not connected, or has not ACKed it yet)
    drifted      live differs from what was delivered, and the proxy took the server's latest snapshot: someone or
                 something changed the proxy (or the store) behind meshplan's back
    rejected     Envoy refused the server's latest snapshot, the last apply was rolled back or failed, or it reports
                 a listener in error
    unreachable  the admin API did not answer as this proxy, or answered with something meshplan cannot read
                 (`bad response` in the detail: an extension its protos do not know, say)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from meshplan.compare.canonical import CanonicalError, fingerprint
from meshplan.compare.diff import canonical_by_name
from meshplan.model import ProxyConfig
from meshplan.observe.live import LiveResult, Outcome
from meshplan.state import records as state
from meshplan.util.fsutil import write_atomic
from meshplan.xds.store import ProxyStatus, Store


class Status(str, Enum):
    IN_SYNC = "in-sync"
    PENDING = "pending"
    DRIFTED = "drifted"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"


# Exit codes, highest wins. 1 stays "meshplan itself failed" (bad input, no state lock...), as everywhere.
EXIT_CODES = {Status.IN_SYNC: 0, Status.PENDING: 2, Status.DRIFTED: 3, Status.REJECTED: 4, Status.UNREACHABLE: 4}
REJECTED_OUTCOMES = ("rolled back", "failed")


@dataclass(frozen=True)
class ProxyDrift:
    name: str
    type: str
    status: Status
    detail: str
    desired: str
    delivered: str | None
    live: str | None


def classify(
    proxies: list[ProxyConfig],
    recorded: state.State,
    results: Mapping[str, LiveResult],
    statuses: Mapping[str, ProxyStatus | None] | None = None,
    serving: Mapping[str, str | None] | None = None,
) -> list[ProxyDrift]:
    """`statuses` and `serving` are the server's: its status of each proxy, and the version of the snapshot it
    serves each (None: none)."""
    out = []
    for proxy in proxies:
        served = (statuses or {}).get(proxy.name)
        holds = (serving or {}).get(proxy.name)
        desired = fingerprint(proxy.clusters + proxy.listeners)
        record = recorded.proxies.get(proxy.name)
        delivered = (record.fingerprint or None) if record else None  # "": an attempt that wrote nothing
        result = results.get(proxy.name)
        if result is None or not result.ok or result.resources is None:
            detail = str(result) if result else "not fetched"
            out.append(ProxyDrift(proxy.name, proxy.type, Status.UNREACHABLE, detail, desired, delivered, None))
            continue
        try:
            running = fingerprint(result.resources.clusters + result.resources.listeners)
        except CanonicalError as exc:  # that proxy's problem alone: reported like an unreachable one
            detail = f"{result.proxy} ({result.admin_url}): {Outcome.BAD_RESPONSE.value}: its configuration cannot be read: {exc}"
            out.append(ProxyDrift(proxy.name, proxy.type, Status.UNREACHABLE, detail, desired, delivered, None))
            continue
        errored = "; ".join(f"listener {e.name}: {e.details}" for e in result.resources.errored_listeners)
        if errored:
            status, detail = Status.REJECTED, errored
        elif served is not None and served.nacked and served.nacked == holds:
            status, detail = Status.REJECTED, f"Envoy refused the {served.error_type}s of {served.nacked}: {served.error}"
        elif running == desired:
            # What it should run, whatever the state file says (an apply interrupted before it recorded, a proxy
            # that took its snapshot after apply stopped waiting): nothing to alarm anyone about.
            status = Status.IN_SYNC
            detail = "" if delivered in (None, desired) else "runs its desired configuration; the state file is behind"
        elif record is not None and record.outcome in REJECTED_OUTCOMES:
            status, detail = Status.REJECTED, f"the last apply was {record.outcome}: {record.detail}"
        elif delivered is None:
            status, detail = Status.PENDING, "never applied by meshplan"
        elif running != delivered and holds is not None and (served is None or served.acked != holds):
            status = Status.PENDING
            detail = (f"the server holds {holds}, not taken yet: "
                      + ("not connected to meshplan serve" if served is None or not served.connected else "no ACK yet"))
        elif running != delivered:
            status = Status.DRIFTED
            detail = "the running configuration is not what meshplan delivered" + _what_differs(record, result)
        else:  # runs what meshplan delivered, which is not what is desired now
            status, detail = Status.PENDING, "the desired directory changed since the last apply"
        out.append(ProxyDrift(proxy.name, proxy.type, status, detail, desired, delivered, running))
    return out


def server_view(store: Store, proxies: list[ProxyConfig]) -> tuple[dict[str, ProxyStatus | None], dict[str, str | None]]:
    """What `classify` needs of the server: its status of each proxy, and the version of the snapshot it serves it."""
    statuses = {p.name: store.read_status(p.name) for p in proxies}
    serving = {p.name: (snapshot.version if (snapshot := store.read_snapshot(p.name)) else None) for p in proxies}
    return statuses, serving


def _what_differs(record: state.ProxyRecord | None, result: LiveResult) -> str:
    """Which resources differ from what meshplan delivered (the state's record of them), as `: cluster "x", ...`;
    "" when the record holds none or a side cannot be read."""
    if record is None or not record.resources or result.resources is None:
        return ""
    differ: list[str] = []
    for kind, live in (("cluster", result.resources.clusters), ("listener", result.resources.listeners)):
        try:
            before = canonical_by_name(record.resources.get(f"{kind}s", []), "delivered")
            after = canonical_by_name(live, "live", expected=before)
        except CanonicalError:
            return ""
        differ += [f'{kind} "{name}"' for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)]
    return f": {', '.join(differ)}" if differ else ""


def exit_code(report: list[ProxyDrift]) -> int:
    return max((EXIT_CODES[d.status] for d in report), default=0)


def to_json(report: list[ProxyDrift]) -> dict[str, object]:
    counts = {s.value: sum(1 for d in report if d.status is s) for s in Status}
    return {
        "format_version": "1.0",
        "exit_code": exit_code(report),
        "counts": counts,
        "proxies": [
            {"name": d.name, "type": d.type, "status": d.status.value, "detail": d.detail,
             "fingerprints": {"desired": d.desired, "delivered": d.delivered, "live": d.live}}
            for d in report
        ],
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def textfile(report: list[ProxyDrift], now: float | None = None) -> str:
    """Prometheus text format for node_exporter's textfile collector: one gauge per proxy and status (1 for the
    proxy's status, 0 for the others, so alerts can match `== 1`), plus counts and the time of the run."""
    lines = [
        "# HELP meshplan_proxy_status 1 when the proxy is in this drift status, else 0.",
        "# TYPE meshplan_proxy_status gauge",
    ]
    for d in report:
        for s in Status:
            lines.append(f'meshplan_proxy_status{{proxy="{_label(d.name)}",type="{d.type}",status="{s.value}"}} '
                         f"{1 if d.status is s else 0}")
    lines += ["# HELP meshplan_proxies Proxies in each drift status.", "# TYPE meshplan_proxies gauge"]
    for s in Status:
        lines.append(f'meshplan_proxies{{status="{s.value}"}} {sum(1 for d in report if d.status is s)}')
    lines += [
        "# HELP meshplan_drift_exit_code The exit code of the last drift run.",
        "# TYPE meshplan_drift_exit_code gauge",
        f"meshplan_drift_exit_code {exit_code(report)}",
        "# HELP meshplan_drift_last_run_timestamp_seconds When drift last ran.",
        "# TYPE meshplan_drift_last_run_timestamp_seconds gauge",
        f"meshplan_drift_last_run_timestamp_seconds {now if now is not None else time.time():.3f}",
    ]
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, report: list[ProxyDrift]) -> None:
    # node_exporter reads *.prom files: the rename makes it see the old file or the new one, never half of one.
    write_atomic(path, textfile(report).encode())
