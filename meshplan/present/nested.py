"""One resource's changes as a nested, Terraform-style diff, for people to review.

The plan's field paths (`filter_chains[0].filters["envoy.filters.network.http_connection_manager"].typed_config
.route_config.virtual_hosts["outbound:backend"].routes[0].route.timeout`) become blocks, one per step:

    ~ filter_chain "inbound:10.0.0.1:8080" {
        ~ filter "envoy.filters.network.http_connection_manager" {
            ~ route_config {
                ~ virtual_host "outbound:backend" {
                    ~ route "prefix /" {
                        ~ route {
                            # MeshTimeout/defaults (policies/timeout.yaml:12)
                            ~ timeout = "15s" -> "5s"
                              # (2 unchanged attributes hidden)
                          }
                      ...

- A list element is named as Envoy names it (filters, virtual hosts, named routes and filter chains), else by what it
  matches (`route "prefix /v2"`, `filter_chain "destination_port=8080"`), else by its position (`endpoint [0]`).
  The `typed_config` step every extension has is left out: its fields are the filter's.
- `+ ~ -` on every attribute and block; a block or value added or removed whole is shown whole, attribute by
  attribute. Every value is shown in full, never cut.
- Inside a changed block, what did not change is counted, not shown (`# (4 unchanged attributes hidden)`); the
  counts come from the desired resource, when the caller has it.
- Each change's origin is a comment line above it, or above the block when everything changed in it has the same
  origin; comments and values too long for the width are broken over lines (a single token stays whole).

Pure text: each line is (text, style of its marker); the human view colours and prints them.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshplan.plan.model import FieldPlan, path_steps

Line = tuple[str, str]  # the text, and the style of its marker ("" for none; "dim" for a comment)

_IDENT = re.compile(r"[A-Za-z_][\w]*")
_STYLES = {"+": "green", "~": "yellow", "-": "red"}
_STEP_INDENT = 4

# a list (or map) field's elements are called by the singular
_SINGULAR = {
    "filter_chains": "filter_chain", "filters": "filter", "http_filters": "http_filter",
    "virtual_hosts": "virtual_host", "routes": "route", "endpoints": "endpoint", "lb_endpoints": "lb_endpoint",
    "policies": "policy", "thresholds": "threshold", "access_log": "access_log", "clusters": "cluster",
    "permissions": "permission", "principals": "principal", "headers": "header", "domains": "domain",
    "request_headers_to_add": "request_header_to_add", "response_headers_to_add": "response_header_to_add",
    "retriable_status_codes": "retriable_status_code", "listener_filters": "listener_filter",
    "typed_extension_protocol_options": "typed_extension_protocol_options",
    "typed_per_filter_config": "typed_per_filter_config",
}
# proto map fields: in a value shown whole, their keys are element names, not fields
_MAPS = frozenset({"policies", "typed_extension_protocol_options", "typed_per_filter_config", "filter_metadata",
                   "typed_filter_metadata"})


@dataclass
class _Node:
    """A block: its label, the desired block it stands for (for counting what did not change), what changed in it."""

    label: str
    body: Any = None
    children: dict[str, _Node] = field(default_factory=dict)
    leaf: FieldPlan | None = None
    attribute: str = ""  # for a leaf: the attribute's name
    field_name: str = ""  # the field of the block above that holds it
    element: bool = False  # an element of a list or map (not a field)

    def leaves(self) -> list[FieldPlan]:
        own = [self.leaf] if self.leaf is not None else []
        return own + [f for child in self.children.values() for f in child.leaves()]


def _is_element(step: str | int) -> bool:
    return isinstance(step, int) or step.startswith('"')


def _element(body: Any, step: str | int) -> Any:
    if isinstance(step, int):
        return body[step] if isinstance(body, list) and step < len(body) else None
    key = json.loads(step)
    if isinstance(body, list):
        return next((e for e in body if isinstance(e, dict) and e.get("name") == key), None)
    return body.get(key) if isinstance(body, dict) else None


def element_label(list_field: str, element: Any, position: int | None) -> str:
    """How a reviewer knows an element of a list: its name, else what it matches, else its position."""
    if isinstance(element, dict):
        name = element.get("name")
        if isinstance(name, str) and name:
            return json.dumps(name, ensure_ascii=False)
        match = element.get("match") if list_field == "routes" else element.get("filter_chain_match")
        if list_field in ("routes", "filter_chains") and isinstance(match, dict):
            described = _route_match(match) if list_field == "routes" else _chain_match(match)
            if described:
                return json.dumps(described, ensure_ascii=False)
    return f"[{position}]" if position is not None else ""


def _route_match(match: Mapping[str, Any]) -> str:
    parts = []
    for kind in ("prefix", "path", "path_separated_prefix"):
        if isinstance(match.get(kind), str):
            parts.append(f"{kind} {match[kind]}")
    regex = match.get("safe_regex")
    if isinstance(regex, dict) and isinstance(regex.get("regex"), str):
        parts.append(f"regex {regex['regex']}")
    for key, word in (("headers", "header"), ("query_parameters", "query")):
        for item in match.get(key) or ():
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                parts.append(f"{word} {item['name']}")
    return ", ".join(parts)


def _chain_match(match: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value, separators=(',', ':')) if not isinstance(value, str) else value}"
                     for key, value in sorted(match.items()))


def _label(list_field: str, step: str | int, element: Any) -> str:
    singular = _SINGULAR.get(list_field, list_field)
    if isinstance(step, str):  # a name or a map key, as the path has it
        return f"{singular} {step}"
    return f"{singular} {element_label(list_field, element, step)}"


def _tree(fields: Sequence[FieldPlan], resource: Mapping[str, Any] | None) -> _Node:
    root = _Node("", resource)
    for change in fields:
        steps = path_steps(change.path)
        if not steps:
            steps = [change.path]
        node = root
        i = 0
        while i < len(steps):
            step = steps[i]
            start = i
            last = i == len(steps) - 1
            if isinstance(step, str) and not _is_element(step) and i + 1 < len(steps) and _is_element(steps[i + 1]):
                element_step = steps[i + 1]
                listed = node.body.get(step) if isinstance(node.body, dict) else None
                element = _element(listed, element_step)
                done = is_element = i + 2 >= len(steps)
                if done:  # changed whole: named by its value (the position of one removed is the live one's)
                    element = change.after if change.after is not None else change.before
                key = f"{step}{element_step!r}"
                label = _label(step, element_step, element)
                i += 2
            else:
                element = node.body.get(step) if isinstance(node.body, dict) and isinstance(step, str) else None
                key, label = repr(step), str(step)
                i += 1
                done = last
                is_element = False
            # the step every extension has: its fields are the filter's own
            if not done and i < len(steps) and steps[i] == "typed_config" and i + 1 < len(steps):
                element = element.get("typed_config") if isinstance(element, dict) else None
                i += 1
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node(label, element, field_name=str(steps[start]),
                                                       element=is_element)
            if done:
                child.leaf = change
                child.attribute = label
            node = child
    return root


def _sign(changes: Sequence[FieldPlan]) -> str:
    if all(c.before is None for c in changes):
        return "+"
    if all(c.after is None for c in changes):
        return "-"
    return "~"


class _Writer:
    def __init__(self, width: int, origins: Callable[[Sequence[str]], list[str]]) -> None:
        self.width = width
        self.origins = origins
        self.lines: list[Line] = []

    def comment(self, indent: int, text: str) -> None:
        room = max(self.width - indent - 2, 20)
        wrapped = textwrap.wrap(text, room, break_long_words=False, break_on_hyphens=False) or [text]
        for n, part in enumerate(wrapped):
            self.lines.append((" " * indent + ("# " if n == 0 else "#   ") + part, "dim"))

    def caused(self, indent: int, origins: Sequence[str]) -> None:
        for origin in self.origins(origins):
            self.comment(indent, origin)

    def line(self, indent: int, sign: str, text: str) -> None:
        self.lines.append((" " * indent + (sign + " " if sign else "  ") + text, _STYLES.get(sign, "")))

    def value_lines(self, indent: int, sign: str, value: Any) -> None:
        """A value as JSON under its attribute: compact when it fits, else indented; a JSON line too long for the
        width puts its value on a line of its own."""
        compact = json.dumps(value, sort_keys=True, separators=(", ", ": "), ensure_ascii=False)
        text = compact if indent + 2 + len(compact) <= self.width else json.dumps(
            value, sort_keys=True, indent=2, ensure_ascii=False)
        for raw in text.splitlines():
            stripped = raw.lstrip(" ")
            depth = indent + (len(raw) - len(stripped))
            key, sep, rest = stripped.partition('": ')
            if depth + 2 + len(stripped) > self.width and sep and key.startswith('"'):
                self.line(depth, sign, key + '":')
                self.line(depth + 2, sign, rest)
            else:
                self.line(depth, sign, stripped)

    def attribute(self, indent: int, sign: str, name: str, before: Any, after: Any) -> None:
        """One attribute that changed, its values in full."""
        def one(value: Any) -> str:
            return json.dumps(value, sort_keys=True, separators=(", ", ": "), ensure_ascii=False)

        shown = f"{name} = {one(after)}" if sign == "+" else f"{name} = {one(before)}" if sign == "-" else (
            f"{name} = {one(before)} -> {one(after)}")
        if indent + 2 + len(shown) <= self.width:
            self.line(indent, sign, shown)
            return
        self.line(indent, sign, f"{name} =")
        if sign == "~":
            self.value_lines(indent + 4, "-", before)
            self.value_lines(indent + 4, "+", after)
        else:
            self.value_lines(indent + 4, "", after if sign == "+" else before)

    def whole(self, indent: int, sign: str, label: str, value: Any) -> None:
        """A value added or removed whole: a message as a block, attribute by attribute; anything else as a value."""
        if not isinstance(value, dict) or not value:
            self.attribute(indent, sign, label, value if sign == "-" else None, value if sign != "-" else None)
            return
        self.line(indent, sign, f"{label} {{")
        body = dict(value)
        typed = body.pop("typed_config", None)
        if isinstance(typed, dict):  # the extension's fields are the filter's own
            body.update(typed)
        for key in sorted(body, key=lambda k: (isinstance(body[k], (dict, list)), k)):
            name = key if _IDENT.fullmatch(key) else json.dumps(key, ensure_ascii=False)
            self.whole_field(indent + _STEP_INDENT, sign, key, name, body[key])
        self.line(indent, "", "}")

    def whole_field(self, indent: int, sign: str, field_name: str, label: str, value: Any) -> None:
        """A field added or removed whole: a map of messages or a list of messages as one block per element."""
        if field_name in _MAPS and isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            for key in sorted(value):
                self.whole(indent, sign, f"{_SINGULAR.get(field_name, field_name)} {json.dumps(key, ensure_ascii=False)}",
                           value[key])
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for position, item in enumerate(value):
                self.whole(indent, sign, f"{_SINGULAR.get(field_name, field_name)} "
                           f"{element_label(field_name, item, position)}", item)
        else:
            self.whole(indent, sign, label, value)

    def node(self, node: _Node, indent: int, inherited: tuple[str, ...] | None) -> None:
        leaves = node.leaves()
        origins = {c.origins for c in leaves}
        uniform = next(iter(origins)) if len(origins) == 1 else None
        if uniform and uniform != inherited:
            self.caused(indent, uniform)
            inherited = uniform
        if node.leaf is not None:
            change = node.leaf
            sign = _sign([change])
            if sign != "~":
                self.whole_field(indent, sign, "" if node.element else node.field_name, node.attribute,
                                 change.after if sign == "+" else change.before)
            else:
                self.attribute(indent, sign, node.attribute, change.before, change.after)
            return
        self.line(indent, "~", f"{node.label} {{")  # a block that holds changes is there on both sides
        self.body(node, indent + _STEP_INDENT, inherited)
        self.line(indent, "", "}")

    def body(self, node: _Node, indent: int, inherited: tuple[str, ...] | None) -> None:
        children = sorted(node.children.values(), key=lambda c: c.leaf is None)  # attributes first, as Terraform
        for child in children:
            self.node(child, indent, inherited)
        self.hidden(node, indent)

    def hidden(self, node: _Node, indent: int) -> None:
        """What did not change in a changed block, counted."""
        if not isinstance(node.body, dict):
            return
        changed = {child.field_name for child in node.children.values()}
        attributes = blocks = 0
        for key, value in node.body.items():
            if key in changed and isinstance(value, list) and value and isinstance(value[0], dict):
                # the elements of a changed list that did not change (those shown are desired ones or removed ones)
                shown = sum(1 for c in node.children.values() if c.field_name == key and c.element
                            and not (c.leaf is not None and c.leaf.after is None))
                blocks += max(len(value) - shown, 0)
                continue
            if key in changed or key in ("@type", "name"):
                continue
            if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
                blocks += len(value) if isinstance(value, list) else 1
            else:
                attributes += 1
        for count, word in ((attributes, "attribute"), (blocks, "block")):
            if count:
                self.line(indent, "", f"# ({count} unchanged {word}{'' if count == 1 else 's'} hidden)")
                self.lines[-1] = (self.lines[-1][0], "dim")


def nested_diff(fields: Sequence[FieldPlan], resource: Mapping[str, Any] | None, *, header: str, width: int,
                indent: int, origins: Callable[[Sequence[str]], list[str]]) -> list[Line]:
    """The lines of one updated resource: `~ header {`, its changes as nested blocks, `}`. `resource` is its desired
    form (canonical), for names of list elements and the counts of what did not change; None when not known."""
    writer = _Writer(width, origins)
    root = _tree(fields, resource)
    leaves = root.leaves()
    uniform = {c.origins for c in leaves}
    inherited = next(iter(uniform)) if len(uniform) == 1 else None
    if inherited:
        writer.caused(indent, inherited)
    writer.line(indent, "~", f"{header} {{")
    writer.body(root, indent + _STEP_INDENT, inherited)
    writer.line(indent, "", "}")
    return writer.lines


def nested_diff_comments(causes: Sequence[str], width: int, *, indent: int,
                         origins: Callable[[Sequence[str]], list[str]]) -> list[Line]:
    """Comment lines naming causes, one a line, broken to the width."""
    writer = _Writer(width, origins)
    writer.caused(indent, causes)
    return writer.lines
