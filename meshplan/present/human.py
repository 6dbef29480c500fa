"""The human view of a Plan, in Terraform's shape: per proxy, `+ ~ -` per resource, the changed fields with the
policy that caused each, and one summary line computed from the same Plan as the exit code."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from meshplan.compare.diff import Action
from meshplan.model import EGRESS, SIDECAR
from meshplan.plan.model import Plan, ProxyPlan, ResourcePlan
from meshplan.present.text import markup_safe as _safe

_STYLE = {Action.CREATE: "green", Action.UPDATE: "yellow", Action.DELETE: "red"}
_WORDS = {Action.CREATE: "will be created", Action.UPDATE: "will be updated in-place", Action.DELETE: "will be destroyed"}
_MAX_VALUE = 120


def value_text(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(", ", ": "))
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def summary_line(plan: Plan) -> str:
    changed = plan.changed_proxies
    sidecars = sum(1 for p in changed if p.type == SIDECAR)
    egresses = sum(1 for p in changed if p.type == EGRESS)
    return (
        f"Plan: {plan.count(Action.CREATE)} to add, {plan.count(Action.UPDATE)} to change, "
        f"{plan.count(Action.DELETE)} to destroy across {len(changed)} "
        f"prox{'y' if len(changed) == 1 else 'ies'} ({sidecars} sidecar{'' if sidecars == 1 else 's'}, {egresses} egress)."
    )


def _header(console: Console, proxy: ProxyPlan) -> None:
    mesh = f"mesh {proxy.mesh}, " if proxy.mesh else ""
    console.print(f"[bold]# {_safe(proxy.name)}[/bold] \\[{_safe(proxy.type)}] ({_safe(mesh + proxy.admin_url)})")


def _resource(console: Console, change: ResourcePlan) -> None:
    style = _STYLE[change.action]
    symbol = change.action.value
    title = f'{change.type} "{change.name}"'
    console.print(f"  [dim]# {_safe(title)} {_WORDS[change.action]}[/dim]")
    caused = f"  [dim]# {_safe(', '.join(change.origins))}[/dim]" if change.origins and change.action is not Action.DELETE else ""
    if change.action is not Action.UPDATE:
        console.print(f"  [{style}]{symbol}[/{style}] {_safe(title)}{caused}")
        return
    console.print(f"  [{style}]{symbol}[/{style}] {_safe(title)} {{")
    for f in change.fields:
        if f.before is None:
            line = f"[green]+[/green] {_safe(f.path)}: {_safe(value_text(f.after))}"
        elif f.after is None:
            line = f"[red]-[/red] {_safe(f.path)}: {_safe(value_text(f.before))}"
        else:
            line = f"[yellow]~[/yellow] {_safe(f.path)}: {_safe(value_text(f.before))} -> {_safe(value_text(f.after))}"
        console.print(f"      {line}  [dim]# {_safe(', '.join(f.origins))}[/dim]")
    console.print("    }")


def render_plan(console: Console, plan: Plan, *, summary: bool = False) -> None:
    for warning in plan.warnings:
        console.print(f"[yellow]Warning:[/yellow] {_safe(warning)}")
    if plan.warnings:
        console.print()
    if plan.has_changes and not summary:
        console.print("meshplan will perform the following actions:")
        console.print()
    for proxy in plan.proxies:
        for warning in proxy.warnings:
            console.print(f"[yellow]Warning:[/yellow] {_safe(proxy.name)}: {_safe(warning)}")
        if not proxy.changes:
            continue
        if summary:
            for change in proxy.changes:
                style = _STYLE[change.action]
                console.print(f"[{style}]{change.action.value}[/{style}] {_safe(proxy.name)} \\[{_safe(proxy.type)}] "
                              f'{_safe(change.type)} "{_safe(change.name)}"')
            continue
        _header(console, proxy)
        for change in proxy.changes:
            _resource(console, change)
        console.print()
    if plan.unreachable:
        console.print(f"[red]Warning: the plan is incomplete:[/red] {len(plan.unreachable)} "
                      f"prox{'y' if len(plan.unreachable) == 1 else 'ies'} could not be read:")
        for proxy in plan.unreachable:
            console.print(f"  [red]![/red] {_safe(proxy.name)} \\[{_safe(proxy.type)}] {_safe(proxy.admin_url)}: "
                          f"{_safe(proxy.status)}{': ' + _safe(proxy.detail) if proxy.detail else ''}")
    if not plan.has_changes and plan.complete:
        console.print("[green]No changes.[/green] Every proxy runs the desired configuration.")
    console.print(summary_line(plan) + (" (incomplete)" if not plan.complete else ""))
