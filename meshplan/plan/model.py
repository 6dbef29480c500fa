"""The Plan: plain data saying, per proxy, which resources and fields applying would change, and which policy
caused each change. Presenters and `apply` read it; nothing downstream recomputes it.

JSON form (docs/plan-json.md) carries `format_version`; `from_json(to_json(plan)) == plan`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshplan.compare.canonical import CanonicalError, fingerprint_canonical
from meshplan.compare.diff import (
    Action,
    FieldChange,
    ResourceChange,
    canonical_by_name,
    diff_canonical,
)
from meshplan.errors import MeshplanError
from meshplan.match.behaviour import Change, Fact
from meshplan.match.behaviour import changes as behaviour_changes
from meshplan.model import EGRESS, SIDECAR, ProxyConfig
from meshplan.observe.live import LiveResult, Outcome
from meshplan.util import jsonlimits

FORMAT_VERSION = "1.1"  # 1.1: top-level `warnings`
BASE = "base"  # the origin of whatever no policy set: the mesh's structure
OUTSIDE = "reverts a change made outside meshplan"  # a plan field that puts back what meshplan last delivered

OK = "ok"


@dataclass(frozen=True)
class FieldPlan:
    path: str
    before: Any
    after: Any
    origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResourcePlan:
    type: str  # cluster | listener
    name: str
    action: Action
    fields: tuple[FieldPlan, ...] = ()  # for an update
    origins: tuple[str, ...] = ()  # every policy that set something in this resource (desired side)


@dataclass(frozen=True)
class ProxyPlan:
    name: str
    type: str  # sidecar | egress
    mesh: str | None
    admin_url: str
    status: str  # ok, or why the live side is unknown: unreachable, timeout, bad response, wrong proxy
    detail: str = ""
    desired_fingerprint: str = ""
    live_fingerprint: str | None = None  # None when the live side is unknown
    changes: tuple[ResourcePlan, ...] = ()
    warnings: tuple[str, ...] = ()
    desired: Mapping[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)  # what apply delivers
    # what the proxy runs that differs from what meshplan last delivered to it (before: delivered, after: live)
    outside: tuple[ResourcePlan, ...] = ()
    facts: tuple[dict[str, Any], ...] = ()  # what its desired policies mean (match/behaviour.py), for the state

    @property
    def reachable(self) -> bool:
        return self.status == OK

    def config(self) -> ProxyConfig:
        """The desired configuration as a ProxyConfig (for validation and delivery)."""
        url = urlsplit(self.admin_url)
        return ProxyConfig(self.name, self.type, self.mesh, url.hostname or "", url.port or 0,
                           tuple(self.desired.get("clusters", ())), tuple(self.desired.get("listeners", ())))


@dataclass(frozen=True)
class Plan:
    proxies: tuple[ProxyPlan, ...]
    created_at: str = ""
    desired_dir: str = ""
    format_version: str = FORMAT_VERSION
    state_serial: int = 0  # the state file this plan was made against (a saved plan is stale once it moves on)
    state_lineage: str = ""
    warnings: tuple[str, ...] = ()  # about the desired directory: a policy that selects nothing, a name nothing has
    behaviour: tuple[Change, ...] = ()  # what the change means, per client and destination, against the last apply

    @property
    def complete(self) -> bool:
        return all(p.reachable for p in self.proxies)

    @property
    def unreachable(self) -> list[ProxyPlan]:
        return [p for p in self.proxies if not p.reachable]

    def count(self, action: Action) -> int:
        return sum(1 for p in self.proxies for c in p.changes if c.action is action)

    @property
    def changed_proxies(self) -> list[ProxyPlan]:
        return [p for p in self.proxies if p.changes]

    @property
    def has_changes(self) -> bool:
        return bool(self.changed_proxies)


DesiredForms = Mapping[str, Mapping[str, str]]  # "cluster"|"listener" -> resource name -> canonical JSON text


def desired_forms(proxy: ProxyConfig) -> DesiredForms:
    """The canonical form of every resource a proxy should run (what `make_plan` compares the live side with)."""
    return {"cluster": canonical_by_name(proxy.clusters, "desired"), "listener": canonical_by_name(proxy.listeners, "desired")}


def make_plan(
    proxies: list[ProxyConfig], live: Mapping[str, LiveResult], *, desired_dir: str = "", state_serial: int = 0,
    state_lineage: str = "", forms: Mapping[str, DesiredForms] | None = None, directory_warnings: Sequence[str] = (),
    delivered: Mapping[str, tuple[str, Mapping[str, Sequence[Mapping[str, Any]]]]] | None = None,
    applied_facts: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Plan:
    """Compare every proxy's desired resources with what its Envoy reported. `forms` (by proxy name) are the desired
    canonical forms when the caller already has them (`desired_forms`). `delivered` (by proxy name: its fingerprint,
    and its "clusters" and "listeners") is what meshplan last delivered and the proxy took, from the state: what the proxy runs beside it
    was changed outside meshplan, and is shown apart."""
    plans = []
    for proxy in proxies:
        desired = {"clusters": proxy.clusters, "listeners": proxy.listeners}
        wanted_forms = forms[proxy.name] if forms is not None and proxy.name in forms else desired_forms(proxy)
        desired_fp = fingerprint_canonical([t for texts in wanted_forms.values() for t in texts.values()])
        base = dict(name=proxy.name, type=proxy.type, mesh=proxy.mesh, admin_url=proxy.admin_url,
                    desired_fingerprint=desired_fp, desired=desired, facts=proxy.behaviour)
        result = live.get(proxy.name)
        if result is None or not result.ok or result.resources is None:
            status = result.outcome.value if result is not None else "not fetched"
            plans.append(ProxyPlan(status=status, detail=result.detail if result else "", **base))  # type: ignore[arg-type]
            continue
        running = result.resources
        changes = []
        outside: list[ResourcePlan] = []
        try:
            running_forms: dict[str, dict[str, str]] = {}
            for kind, have in (("cluster", running.clusters), ("listener", running.listeners)):
                running_forms[kind] = canonical_by_name(have, "live", expected=wanted_forms[kind])
            for kind, running_texts in running_forms.items():
                for change in diff_canonical(wanted_forms[kind], running_texts, kind):  # type: ignore[arg-type]
                    changes.append(_resource_plan(proxy, change))
            live_fp = fingerprint_canonical(t for texts in running_forms.values() for t in texts.values())
            last = (delivered or {}).get(proxy.name)
            if last is not None and last[0] != live_fp:  # it runs something else than meshplan delivered
                for kind, running_texts in running_forms.items():
                    # what was delivered is, most often, what is desired now: its canonical forms are known
                    before = wanted_forms[kind] if last[0] == desired_fp else canonical_by_name(
                        last[1].get(f"{kind}s", ()), "delivered", expected=wanted_forms[kind])
                    outside += [_outside_plan(c) for c in diff_canonical(running_texts, before, kind)]  # type: ignore[arg-type]
                changes = [_reverting(change, outside) for change in changes]
        except CanonicalError as exc:
            # One proxy running what meshplan cannot read (an extension its protos do not know, say) is that
            # proxy's problem, reported like an unreachable one; the others are planned.
            plans.append(ProxyPlan(status=Outcome.BAD_RESPONSE.value, detail=unreadable(kind, exc), **base))  # type: ignore[arg-type]
            continue
        warnings = [f'cluster "{n}" is warming' for n in running.warming_clusters]
        warnings += [f'listener "{n}" is warming' for n in running.warming_listeners]
        warnings += [f'listener "{e.name}" was rejected by Envoy: {e.details}' for e in running.errored_listeners]
        plans.append(ProxyPlan(status=OK, live_fingerprint=live_fp,
                               changes=tuple(changes), warnings=tuple(warnings), outside=tuple(outside),
                               **base))  # type: ignore[arg-type]
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # Against the last apply: only proxies the state has facts of (a proxy never applied has nothing to compare).
    recorded = {name: facts for name, facts in (applied_facts or {}).items() if facts}
    applied_before = [Fact.from_json(f) for p in plans for f in recorded.get(p.name, ())]
    after = [Fact.from_json(f) for p in plans if p.name in recorded for f in p.facts]
    return Plan(tuple(plans), created_at=created, desired_dir=desired_dir, state_serial=state_serial,
                state_lineage=state_lineage, warnings=tuple(directory_warnings),
                behaviour=tuple(behaviour_changes(applied_before, after)))


def _outside_plan(change: ResourceChange) -> ResourcePlan:
    """A difference between what meshplan delivered (before) and what the proxy runs (after)."""
    fields = tuple(FieldPlan(f.path, f.before, f.after) for f in change.fields)
    return ResourcePlan(change.kind, change.name, change.action, fields)


def _reverting(change: ResourcePlan, outside: Sequence[ResourcePlan]) -> ResourcePlan:
    """A planned change that only puts back what meshplan delivered (the desired value is the delivered one) is
    caused by whoever changed the proxy, not by the policy that set the value: said so, in place of its origins."""
    found = next((o for o in outside if (o.type, o.name) == (change.type, change.name)), None)
    if found is None:
        return change
    if found.action is not Action.UPDATE:  # added or removed outside: the whole planned change puts it back
        return dataclasses.replace(change, origins=(OUTSIDE,))
    delivered = {f.path: f.before for f in found.fields}
    fields = tuple(dataclasses.replace(f, origins=(OUTSIDE,))
                   if f.path in delivered and delivered[f.path] == f.after else f for f in change.fields)
    return dataclasses.replace(change, fields=fields)


def unreadable(kind: str, exc: CanonicalError) -> str:
    """Why a proxy's live side cannot be compared: a resource of `kind` it runs that meshplan cannot read."""
    return f"its {kind}s cannot be read: {exc}"


def _resource_plan(proxy: ProxyConfig, change: ResourceChange) -> ResourcePlan:
    recorded = proxy.origins.get(change.kind, {}).get(change.name, {})
    # Per resource, who touched it: the policies by kind/name (each field line says file:line).
    everyone = tuple(sorted({o.split(" (", 1)[0] for origins in recorded.values() for o in origins}))
    made = proxy.structure.get(change.kind, {}).get(change.name, {})
    if not everyone and () in made:  # no policy touched it: what made it (a Dataplane, a MeshExternalService ...)
        everyone = (made[()].split(" (", 1)[0],)
    fields = tuple(
        FieldPlan(f.path, f.before, f.after, _field_origins(f, change.after, recorded, made)) for f in change.fields
    )
    return ResourcePlan(change.kind, change.name, change.action, fields, everyone)


_STEP = re.compile(r'\.?([A-Za-z_@][\w@]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def path_steps(path: str) -> list[str | int] | None:
    """A plan path's steps: a field name, a position (int), or a quoted name or map key (kept quoted, as JSON)."""
    steps: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            return None
        pos = m.end()
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)) if m.group(2) is not None else m.group(3))
    return steps


def steps_of(path: str, resource: Mapping[str, Any] | None) -> tuple[str | int, ...] | None:
    """A diff path (`filter_chains["inbound:..."].filters[0]`) as keys and positions in `resource`: a `["name"]`
    step names a list element by its `name` (or a map key)."""
    written = path_steps(path)
    if written is None:
        return None
    node: Any = resource
    steps: list[str | int] = []
    for step in written:
        if isinstance(step, str) and step.startswith('"'):
            key = json.loads(step)
            step = key
            if isinstance(node, list):
                index = next((i for i, item in enumerate(node) if isinstance(item, dict) and item.get("name") == key), None)
                if index is None:
                    return None
                step = index
        steps.append(step)
        try:
            node = node[step] if node is not None else None
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(steps)


def _field_origins(
    change: FieldChange, after: Mapping[str, Any] | None, recorded: Mapping[tuple[str | int, ...], list[str]],
    made: Mapping[tuple[str | int, ...], str],
) -> tuple[str, ...]:
    """Who set a changed field: the policy that set it or a field above it, else the policies that set fields inside
    it; else the desired resource that made the part it is in (a Dataplane, a MeshExternalService, the ZoneEgress,
    the Mesh), or the ones that made the parts inside it; else the mesh's structure (`base`)."""
    steps = steps_of(change.path, after)
    if steps is None:
        return (BASE,)
    above = [o for path, origins in recorded.items() if steps[: len(path)] == path for o in origins]
    if above:
        return tuple(sorted(set(above)))
    below = [o for path, origins in recorded.items() if path[: len(steps)] == steps for o in origins]
    if below:
        return tuple(sorted(set(below)))
    enclosing = [path for path in made if steps[: len(path)] == path]
    if enclosing:
        return (made[max(enclosing, key=len)],)
    inside = sorted({origin for path, origin in made.items() if path[: len(steps)] == steps})
    return tuple(inside) or (BASE,)


# --- JSON ------------------------------------------------------------------------------------------------------


def to_json(plan: Plan) -> dict[str, Any]:
    sidecars = sum(1 for p in plan.changed_proxies if p.type == SIDECAR)
    egresses = sum(1 for p in plan.changed_proxies if p.type == EGRESS)
    return {
        "format_version": plan.format_version,
        "created_at": plan.created_at,
        "desired_dir": plan.desired_dir,
        "state": {"serial": plan.state_serial, "lineage": plan.state_lineage},
        "complete": plan.complete,
        "warnings": list(plan.warnings),
        "behaviour": [
            {"client": c.client, "destination": c.destination, "aspect": c.aspect, "before": c.before,
             "after": c.after, "origins": list(c.origins)}
            for c in plan.behaviour
        ],
        "summary": {
            "add": plan.count(Action.CREATE),
            "change": plan.count(Action.UPDATE),
            "destroy": plan.count(Action.DELETE),
            "proxies_changed": len(plan.changed_proxies),
            "sidecars_changed": sidecars,
            "egresses_changed": egresses,
            "unreachable": [p.name for p in plan.unreachable],
        },
        "proxies": [
            {
                "name": p.name,
                "type": p.type,
                "mesh": p.mesh,
                "admin_url": p.admin_url,
                "status": p.status,
                "detail": p.detail,
                "desired_fingerprint": p.desired_fingerprint,
                "live_fingerprint": p.live_fingerprint,
                "warnings": list(p.warnings),
                "facts": list(p.facts),
                "outside": [
                    {"type": c.type, "name": c.name, "action": _ACTION_WORDS[c.action],
                     "fields": [{"path": f.path, "before": f.before, "after": f.after} for f in c.fields]}
                    for c in p.outside
                ],
                "changes": [
                    {
                        "type": c.type,
                        "name": c.name,
                        "action": _ACTION_WORDS[c.action],
                        "origins": list(c.origins),
                        "fields": [
                            {"path": f.path, "before": f.before, "after": f.after, "origins": list(f.origins)}
                            for f in c.fields
                        ],
                    }
                    for c in p.changes
                ],
                "desired": {k: list(v) for k, v in p.desired.items()},
            }
            for p in plan.proxies
        ],
    }


_ACTION_WORDS = {Action.CREATE: "create", Action.UPDATE: "update", Action.DELETE: "delete"}
_WORD_ACTIONS = {v: k for k, v in _ACTION_WORDS.items()}


def from_json(document: Mapping[str, Any]) -> Plan:
    version = str(document.get("format_version", ""))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise ValueError(f"plan format_version {version!r} is not supported (this meshplan writes {FORMAT_VERSION})")
    proxies = []
    for p in document["proxies"]:
        changes = tuple(
            ResourcePlan(
                c["type"], c["name"], _WORD_ACTIONS[c["action"]],
                tuple(FieldPlan(f["path"], f["before"], f["after"], tuple(f["origins"])) for f in c["fields"]),
                tuple(c["origins"]),
            )
            for c in p["changes"]
        )
        proxies.append(ProxyPlan(
            name=p["name"], type=p["type"], mesh=p["mesh"], admin_url=p["admin_url"], status=p["status"],
            detail=p["detail"], desired_fingerprint=p["desired_fingerprint"], live_fingerprint=p["live_fingerprint"],
            changes=changes, warnings=tuple(p["warnings"]),
            desired={k: tuple(v) for k, v in p["desired"].items()},
            facts=tuple(p.get("facts", ())),
            outside=tuple(ResourcePlan(c["type"], c["name"], _WORD_ACTIONS[c["action"]],
                                       tuple(FieldPlan(f["path"], f["before"], f["after"]) for f in c["fields"]))
                          for c in p.get("outside", ())),
        ))
    recorded = document.get("state", {})
    return Plan(tuple(proxies), created_at=document.get("created_at", ""), desired_dir=document.get("desired_dir", ""),
                format_version=version, state_serial=int(recorded.get("serial", 0)),
                state_lineage=str(recorded.get("lineage", "")), warnings=tuple(document.get("warnings", ())),
                behaviour=tuple(Change(c["client"], c["destination"], c["aspect"], c["before"], c["after"],
                                       tuple(c["origins"])) for c in document.get("behaviour", ())))


def read_plan_file(path: Path) -> Plan:
    """A plan saved with `plan --out`; MeshplanError for any file that is not one (missing, not JSON, too deep,
    another JSON document, another format version)."""
    try:
        document = jsonlimits.loads(path.read_bytes())
        if not isinstance(document, dict) or "proxies" not in document:
            raise ValueError("no plan in it")
        return from_json(document)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise MeshplanError(f"{path}: not a meshplan plan file: {reason}") from e
