"""The policy modules, in the order they run on every proxy: routes first (they shape the routes and clusters the
others then tune), then inbound filters, then the outbound settings. Adding a kind: its module here and its row in
`policies.KINDS`."""

from __future__ import annotations

from typing import cast

from meshplan.policies import (
    access_log,
    circuit_breaker,
    fault_injection,
    health_check,
    http_route,
    load_balancing,
    rate_limit,
    retry,
    tcp_route,
    timeout,
    traffic_permission,
)
from meshplan.policies.base import PolicyModule

MODULES: list[PolicyModule] = [
    cast(PolicyModule, module)
    for module in (
        http_route,
        tcp_route,
        traffic_permission,
        fault_injection,
        rate_limit,
        access_log,
        timeout,
        retry,
        circuit_breaker,
        health_check,
        load_balancing,
    )
]

BY_KIND: dict[str, PolicyModule] = {m.KIND: m for m in MODULES}
