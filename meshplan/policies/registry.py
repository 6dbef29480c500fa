"""The policy modules, in the order they run on every proxy: routes first (they shape the routes and clusters the
others then tune), then the rest. Adding a kind: its module here and its row in `policies.KINDS`."""

from __future__ import annotations

from meshplan.policies.base import PolicyModule

MODULES: list[PolicyModule] = []

BY_KIND: dict[str, PolicyModule] = {m.KIND: m for m in MODULES}
