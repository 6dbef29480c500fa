"""The plan as a pull-request comment (`plan -o markdown`): the summary line, the warnings, a table of the proxies
that change with what caused it, then each proxy's (or each group of identical proxies') diff, folded in a
`<details>` block. The diffs are the human view's text, so a reviewer reads the same thing in both places."""

from __future__ import annotations

import io

from rich.console import Console

from meshplan.compare.diff import Action
from meshplan.plan.model import Plan, ProxyPlan
from meshplan.present.human import (
    behaviour_delta,
    identical,
    render_group,
    summary_line,
)
from meshplan.present.text import printable

_FENCE = "```"


def render_markdown(plan: Plan) -> str:
    lines = [f"### meshplan: {summary_line(plan).removeprefix('Plan: ')}", ""]
    if not plan.complete:
        lines += ["**The plan is incomplete**: " + ", ".join(
            f"`{_cell(p.name)}` ({_cell(p.status)}{': ' + _cell(p.detail) if p.detail else ''})"
            for p in plan.unreachable) + " could not be read.", ""]
    lines += [f"> **Warning:** {_cell(w)}" for w in plan.warnings] + ([""] if plan.warnings else [])
    if plan.behaviour:
        lines += ["| client | destination | aspect | what changes | caused by |", "|---|---|---|---|---|"]
        for change in plan.behaviour:
            lines.append(f"| {_cell(change.client)} | {_cell(change.destination)} | {change.aspect} | "
                         f"{_cell(behaviour_delta(change.before, change.after))} | "
                         f"{_cell(', '.join(dict.fromkeys(o.split(' (', 1)[0] for o in change.origins)))} |")
        lines.append("")
    groups = identical(plan.changed_proxies)
    if not groups:
        return "\n".join(lines + ["No changes: every proxy runs the desired configuration.", ""])
    lines += ["| proxy | type | add | change | destroy | caused by |", "|---|---|---:|---:|---:|---|"]
    for group in groups:
        first = group[0]
        counts = [sum(1 for c in first.changes if c.action is action) for action in Action]
        causes = sorted({o.split(" (", 1)[0] for c in first.changes
                         for o in ((o for f in c.fields for o in f.origins) if c.fields else c.origins)})
        lines.append(f"| {_cell(', '.join(p.name for p in group))} | {first.type} | {counts[0]} | {counts[1]} | "
                     f"{counts[2]} | {_cell(', '.join(causes)) or 'base'} |")
    lines.append("")
    for group in groups:
        names = ", ".join(p.name for p in group)
        lines += [f"<details><summary>{_cell(names)} [{group[0].type}]: {_counts(group[0])}</summary>", "",
                  f"{_FENCE}diff", _text(group).rstrip("\n"), _FENCE, "", "</details>", ""]
    return "\n".join(lines)


def _text(group: list[ProxyPlan]) -> str:
    console = Console(record=True, width=200, color_system=None, force_terminal=False, soft_wrap=True,
                      file=io.StringIO())  # recorded, not printed
    render_group(console, group)
    text = console.export_text()
    return text.replace(_FENCE, "`` `")  # a value with a fence in it must not end the block


def _counts(proxy: ProxyPlan) -> str:
    words = {Action.CREATE: "to add", Action.UPDATE: "to change", Action.DELETE: "to destroy"}
    parts = [f"{n} {words[a]}" for a in Action if (n := sum(1 for c in proxy.changes if c.action is a))]
    return ", ".join(parts)


def _cell(text: str) -> str:
    """Safe in a table cell or a summary line: no control characters, no pipe, no HTML."""
    return printable(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
