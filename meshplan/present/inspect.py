"""The table view of `meshplan inspect`: one rich table per section, from the rows observe/inspect.py made.

Every cell is a proxy's own text (names, domains, regexes), so each goes in as plain `Text` through `printable`:
no markup is read from it and no control character reaches the terminal. Long names fold rather than being cut,
so that what a table names can be searched for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from meshplan.observe.inspect import (
    Inspection,
    cluster_rows,
    listener_rows,
    route_rows,
    secret_rows,
)
from meshplan.present.text import printable


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _table(title: str, headers: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    table = Table(title=Text(printable(title)), title_justify="left", show_lines=False)
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(Text(printable(cell)) for cell in row))
    return table


def clusters_table(inspection: Inspection) -> Table:
    return _table(
        f"Clusters of {inspection.proxy}",
        ("NAME", "TYPE", "CONNECT TIMEOUT", "ENDPOINTS", "CIRCUIT BREAKERS", "OUTLIER DETECTION", "TLS"),
        ((r.name, r.type, r.connect_timeout, r.endpoints, _yes(r.circuit_breakers), _yes(r.outlier_detection), r.tls)
         for r in cluster_rows(inspection)),
    )


def listeners_table(inspection: Inspection) -> Table:
    return _table(
        f"Listeners of {inspection.proxy}",
        ("NAME", "ADDRESS", "FILTER CHAINS", "NETWORK FILTERS"),
        ((r.name, r.address, str(r.filter_chains), ", ".join(r.filters)) for r in listener_rows(inspection)),
    )


def routes_table(inspection: Inspection) -> Table:
    return _table(
        f"Routes of {inspection.proxy}",
        ("LISTENER", "ROUTE CONFIG", "VIRTUAL HOST", "DOMAINS", "MATCH", "ACTION", "TIMEOUT", "RETRY"),
        ((r.listener, r.route_config, r.virtual_host, ", ".join(r.domains), r.match, r.action, r.timeout, r.retry)
         for r in route_rows(inspection)),
    )


def secrets_table(inspection: Inspection) -> Table:
    return _table(
        f"Secrets of {inspection.proxy}",
        ("NAME", "TYPE", "NOT BEFORE", "NOT AFTER", "SUBJECT", "SANS"),
        ((r.name, r.type, r.not_before, r.not_after, r.subject, ", ".join(r.sans)) for r in secret_rows(inspection)),
    )


TABLES = {"clusters": clusters_table, "listeners": listeners_table, "routes": routes_table, "secrets": secrets_table}


def render_inspection(console: Console, inspection: Inspection, sections: Sequence[str]) -> None:
    console.print(Text(printable(f"# {inspection.proxy} ({inspection.admin_url})"), style="bold"))
    for warming in inspection.warming:
        console.print(Text(printable(f"Warning: {warming} is warming (received, not serving yet)"), style="yellow"))
    for section in sections:
        console.print(TABLES[section](inspection))
