"""The policy modules, as one typed registry: each module is checked by mypy against `PolicyModule` (no cast), and
runs on every proxy in the order its own `ORDER` declares. Adding a kind: its module (with KIND, ORDER, validate,
apply), one line in `_ALL`, its placement row in `policies.KINDS`; if it references other resources, one line in
`REFERENCES`."""

from __future__ import annotations

from collections.abc import Callable

from meshplan.model import Desired, Policy
from meshplan.policies import (
    KINDS,
    access_log,
    circuit_breaker,
    fault_injection,
    health_check,
    http_route,
    load_balancing,
    metric,
    rate_limit,
    retry,
    tcp_route,
    timeout,
    trace,
    traffic_permission,
)
from meshplan.policies.base import PolicyModule
from meshplan.validate.check import FieldCheck

_ALL: tuple[PolicyModule, ...] = (
    access_log,
    circuit_breaker,
    fault_injection,
    health_check,
    http_route,
    load_balancing,
    metric,
    rate_limit,
    retry,
    tcp_route,
    timeout,
    trace,
    traffic_permission,
)

MODULES: tuple[PolicyModule, ...] = tuple(sorted(_ALL, key=lambda module: module.ORDER))
BY_KIND: dict[str, PolicyModule] = {module.KIND: module for module in MODULES}

# A kind's checks of what it names in other resources (a route's backendRefs), run once every resource is known.
REFERENCES: dict[str, Callable[[Policy, Desired, FieldCheck], None]] = {
    http_route.KIND: http_route.check_references,
    tcp_route.KIND: tcp_route.check_references,
}


def _check() -> None:
    orders = [module.ORDER for module in MODULES]
    if len(set(orders)) != len(orders):
        raise ValueError(f"two policy modules declare one ORDER: {orders}")
    unknown = [module.KIND for module in MODULES if module.KIND not in KINDS]
    if unknown:
        raise ValueError(f"policy modules of kinds with no placement row in policies.KINDS: {unknown}")


_check()
