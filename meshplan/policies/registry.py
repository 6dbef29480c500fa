"""The policy kinds, as one typed registry: each kind is a package `policies/<kind>/` whose `__init__` mypy checks
against `PolicyModule` (no cast). Adding a kind: its package (api.py, envoy.py, `__init__` with KIND, ORDER,
PLACEMENT, validate, apply, check_references) and one line in `_ALL`. The placement table (`KINDS`) and the
reference checks (`REFERENCES`) are derived from the kinds; the kinds run on every proxy in their `ORDER`."""

from __future__ import annotations

from collections.abc import Callable

from meshplan.model import Desired, Policy
from meshplan.policies import (
    PolicyKind,
    access_log,
    circuit_breaker,
    fault_injection,
    health_check,
    http_route,
    load_balancing,
    metric,
    proxy_patch,
    rate_limit,
    retry,
    tcp_route,
    timeout,
    trace,
    traffic_permission,
)
from meshplan.policies.base import PolicyModule
from meshplan.validate.check import FieldCheck

# In the placement table's order (explain lists kinds in it).
_ALL: tuple[PolicyModule, ...] = (
    access_log,
    circuit_breaker,
    fault_injection,
    health_check,
    metric,
    proxy_patch,
    rate_limit,
    retry,
    timeout,
    trace,
    traffic_permission,
    load_balancing,
    tcp_route,
    http_route,
)

MODULES: tuple[PolicyModule, ...] = tuple(sorted(_ALL, key=lambda module: module.ORDER))
BY_KIND: dict[str, PolicyModule] = {module.KIND: module for module in MODULES}

# The seed's placement table: every kind's own row, in `_ALL`'s order.
KINDS: dict[str, PolicyKind] = {module.KIND: module.PLACEMENT for module in _ALL}

# A kind's checks of what it names in other resources (a route's backendRefs), run once every resource is known.
REFERENCES: dict[str, Callable[[Policy, Desired, FieldCheck], None]] = {
    module.KIND: module.check_references for module in MODULES if module.check_references is not None
}


def _check() -> None:
    orders = [module.ORDER for module in MODULES]
    if len(set(orders)) != len(orders):
        raise ValueError(f"two policy modules declare one ORDER: {orders}")
    wrong = [module.KIND for module in MODULES if module.PLACEMENT.name != module.KIND]
    if wrong:
        raise ValueError(f"policy modules whose placement row names another kind: {wrong}")
    if len(KINDS) != len(_ALL):
        raise ValueError("two policy packages declare one KIND")


_check()
