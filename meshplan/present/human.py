"""The human view of a Plan, in Terraform's shape: per proxy, `+ ~ -` per resource, the changed fields with the
policy that caused each, and one summary line computed from the same Plan as the exit code."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console

from meshplan.compare.canonical import CanonicalError, canonical_json
from meshplan.compare.diff import Action
from meshplan.match.behaviour import Change
from meshplan.model import EGRESS, SIDECAR
from meshplan.plan.model import Plan, ProxyPlan, ResourcePlan
from meshplan.present.nested import nested_diff, nested_diff_comments
from meshplan.present.text import markup_safe as _safe

_STYLE = {Action.CREATE: "green", Action.UPDATE: "yellow", Action.DELETE: "red"}
_WORDS = {Action.CREATE: "will be created", Action.UPDATE: "will be updated in-place", Action.DELETE: "will be destroyed"}
_OUTSIDE_WORDS = {Action.CREATE: "was added", Action.UPDATE: "was changed", Action.DELETE: "was removed"}
_ORIGIN = re.compile(r"(?P<who>.+) \((?P<file>.+):(?P<line>\d+)\)")


def origins_text(origins: Sequence[str]) -> str:
    """Origins as a reviewer reads them: one policy written on several lines of one file is named once, with its
    lines (`MeshTimeout/defaults (policies/timeout.yaml:12,13)`)."""
    return ", ".join(origins_parts(origins))


def origins_parts(origins: Sequence[str]) -> list[str]:
    """`origins_text`, one cause per item."""
    grouped: dict[tuple[str, str], list[str]] = {}
    plain: list[str] = []
    for origin in origins:
        found = _ORIGIN.fullmatch(origin)
        if found is None:
            plain.append(origin)
        else:
            grouped.setdefault((found["who"], found["file"]), []).append(found["line"])
    named = [f"{who} ({file}:{','.join(dict.fromkeys(lines))})" for (who, file), lines in grouped.items()]
    return plain + named


def behaviour_line(change: Change) -> str:
    """`admin → backend  permission: Allow → Deny`; for a conf of several fields, only those that change
    (`timeout: connectionTimeout 2s → 4s`)."""
    return f"{change.client} → {change.destination}  {change.aspect}: {behaviour_delta(change.before, change.after)}"


def behaviour_delta(before: Any, after: Any) -> str:
    if isinstance(before, dict) and isinstance(after, dict):
        old, new = _leaves(before), _leaves(after)
        changed = [key for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
        if len(old) == len(new) == 1 and old.keys() == new.keys():
            return f"{_meaning(before)} → {_meaning(after)}"
        return ", ".join(f"{key} {_meaning(old.get(key))} → {_meaning(new.get(key))}" for key in changed)
    return f"{_meaning(before)} → {_meaning(after)}"


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_leaves(inner, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _meaning(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    return json.dumps(value, sort_keys=True, separators=(", ", ": ")) if not isinstance(value, str) else value


def summary_line(plan: Plan) -> str:
    changed = plan.changed_proxies
    sidecars = sum(1 for p in changed if p.type == SIDECAR)
    egresses = sum(1 for p in changed if p.type == EGRESS)
    return (
        f"Plan: {plan.count(Action.CREATE)} to add, {plan.count(Action.UPDATE)} to change, "
        f"{plan.count(Action.DELETE)} to destroy across {len(changed)} "
        f"prox{'y' if len(changed) == 1 else 'ies'} ({sidecars} sidecar{'' if sidecars == 1 else 's'}, {egresses} egress)."
    )


def _header(console: Console, proxy: ProxyPlan, same: Sequence[ProxyPlan] = ()) -> None:
    mesh = f"mesh {proxy.mesh}, " if proxy.mesh else ""
    if not same:
        console.print(f"[bold]# {_safe(proxy.name)}[/bold] \\[{_safe(proxy.type)}] ({_safe(mesh + proxy.admin_url)})")
        return
    names = ", ".join(p.name for p in (proxy, *same))
    console.print(f"[bold]# {_safe(names)}[/bold] \\[{_safe(proxy.type)}] ({_safe(mesh)}{len(same) + 1} proxies, "
                  "the same changes)")


def _wrapped(console: Console, text: str, *, indent: int = 0) -> None:
    """Plain text broken at spaces to the console's width (a word longer than the width stays whole)."""
    room = max(console.width - indent, 20)
    for part in textwrap.wrap(text, room, break_long_words=False, break_on_hyphens=False) or [""]:
        console.print(" " * indent + _safe(part))


def render_group(console: Console, group: Sequence[ProxyPlan]) -> None:
    """One proxy's changes (or those of proxies whose changes are the same): its header, then each resource."""
    _header(console, group[0], group[1:])
    for change in group[0].changes:
        _resource(console, change, desired=_desired(group[0], change))


def _desired(proxy: ProxyPlan, change: ResourcePlan) -> dict[str, Any] | None:
    """The canonical desired form of a changed resource (the plan's paths are in its terms), if the plan has it."""
    if change.action is not Action.UPDATE:
        return None
    found = next((r for r in proxy.desired.get(f"{change.type}s", ()) if r.get("name") == change.name), None)
    if found is None:
        return None
    try:
        form = json.loads(canonical_json(found))
    except CanonicalError:
        return found
    return form if isinstance(form, dict) else None


def identical(proxies: Sequence[ProxyPlan]) -> list[list[ProxyPlan]]:
    """Proxies whose changes are the same, field for field and cause for cause (instances of one service, most
    often), together, in the order the first of each group comes."""
    groups: dict[str, list[ProxyPlan]] = {}
    for proxy in proxies:
        key = json.dumps([proxy.type, proxy.mesh, [dataclasses.asdict(c) for c in proxy.changes]], sort_keys=True,
                         default=str)
        groups.setdefault(key, []).append(proxy)
    return list(groups.values())


def _resource(console: Console, change: ResourcePlan, words: Mapping[Action, str] = _WORDS, *,
              desired: Mapping[str, Any] | None = None) -> None:
    """One resource: what happens to it, who caused it, and for an update its nested diff (present/nested.py)."""
    style = _STYLE[change.action]
    title = f'{change.type} "{change.name}"'
    console.print(f"  [dim]# {_safe(title)} {words[change.action]}[/dim]")
    if change.action is not Action.UPDATE:
        if change.origins and change.action is not Action.DELETE:
            for text, _ in nested_comments(change.origins, console.width):
                console.print(f"[dim]{_safe(text)}[/dim]")
        console.print(f'  [{style}]{change.action.value}[/{style}] resource "{_safe(change.type)}" "{_safe(change.name)}"')
        return
    lines = nested_diff(change.fields, desired, header=f'resource "{change.type}" "{change.name}"',
                        width=console.width, indent=2, origins=origins_parts)
    for text, marker in lines:
        body = text.lstrip(" ")
        pad = text[: len(text) - len(body)]
        if marker == "dim":
            console.print(f"{pad}[dim]{_safe(body)}[/dim]")
        elif marker:
            console.print(f"{pad}[{marker}]{_safe(body[:1])}[/{marker}]{_safe(body[1:])}")
        else:
            console.print(_safe(text))


def nested_comments(origins: Sequence[str], width: int) -> list[tuple[str, str]]:
    """The comment lines naming what caused a resource created, at the resource's indent."""
    return nested_diff_comments(origins, width, indent=2, origins=origins_parts)


def render_plan(console: Console, plan: Plan, *, summary: bool = False) -> None:
    for warning in plan.warnings:
        console.print(f"[yellow]Warning:[/yellow] {_safe(warning)}")
    if plan.warnings:
        console.print()
    changed_outside = [p for p in plan.proxies if p.outside]
    if changed_outside and not summary:
        _wrapped(console, "Changed outside meshplan: these proxies run something other than what meshplan "
                      "last delivered to them.")
        console.print()
        for proxy in changed_outside:
            _header(console, proxy)
            for change in proxy.outside:
                _resource(console, change, _OUTSIDE_WORDS)
            console.print()
    if plan.behaviour and not summary:
        console.print("[bold]What changes, per client and destination[/bold] (against the last apply):")
        for meaning in plan.behaviour:
            line, causes = behaviour_line(meaning), origins_text(meaning.origins)
            if 2 + len(line) + 4 + len(causes) <= console.width:
                console.print(f"  {_safe(line)}  [dim]# {_safe(causes)}[/dim]")
                continue
            _wrapped(console, line, indent=2)  # too wide: the causes go under it, one a line
            for text, _ in nested_diff_comments(meaning.origins, console.width, indent=4, origins=origins_parts):
                console.print(f"[dim]{_safe(text)}[/dim]")
        console.print()
    if plan.has_changes and not summary:
        console.print("meshplan will perform the following actions:")
        console.print()
    for proxy in plan.proxies:
        for warning in proxy.warnings:
            console.print(f"[yellow]Warning:[/yellow] {_safe(proxy.name)}: {_safe(warning)}")
    for group in identical(plan.changed_proxies):
        if summary:
            for member in group:
                for change in member.changes:
                    style = _STYLE[change.action]
                    console.print(f"[{style}]{change.action.value}[/{style}] {_safe(member.name)} "
                                  f'\\[{_safe(member.type)}] {_safe(change.type)} "{_safe(change.name)}"')
            continue
        render_group(console, group)
        console.print()
    if plan.unreachable:
        console.print(f"[red]Warning: the plan is incomplete:[/red] {len(plan.unreachable)} "
                      f"prox{'y' if len(plan.unreachable) == 1 else 'ies'} could not be read:")
        for proxy in plan.unreachable:
            console.print(f"  [red]![/red] {_safe(proxy.name)} \\[{_safe(proxy.type)}] {_safe(proxy.admin_url)}: "
                          f"{_safe(proxy.status)}{': ' + _safe(proxy.detail) if proxy.detail else ''}")
    if not plan.has_changes and plan.complete:
        console.print("[green]No changes.[/green] Every proxy runs the desired configuration.")
    _wrapped(console, summary_line(plan) + (" (incomplete)" if not plan.complete else ""))
