"""MeshFaultInjection's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from meshplan.envoy.types import HTTP_FAULT
from meshplan.envoy.types import HTTP_FAULT_NAME as FILTER
from meshplan.policies.base import Json, ProxyBuild, hcm, insert_http_filter
from meshplan.policies.clients import first_match, http_filter_for, label, mesh_of, rule_clients
from meshplan.policies.conf import ConfReader
from meshplan.policies.fault_injection.api import KIND, Fault, parse

# --- rendering ------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    for point in build.inbounds:
        manager = hcm(point.chain)
        if manager is None:
            continue  # faults are HTTP only
        rules = build.match.from_(KIND, point.target)
        if not rules:
            continue
        who = first_match(rule_clients(build.desired, mesh_of(build.proxy, point.target), rules))
        for rule, clients in zip(rules, who, strict=True):
            faults = parse(ConfReader.of_merged(rule.merged)).http
            if faults is None:
                continue
            for i, fault in enumerate(faults.value):
                http_filter = http_filter_for(f"{FILTER}:{label(rule.client)}:{i}", _http_fault(fault), clients)
                if http_filter is not None:
                    build.mark(http_filter, "typed_config", faults.origins)
                    insert_http_filter(manager, http_filter)


def _http_fault(fault: Fault) -> Json:
    config: Json = {"@type": HTTP_FAULT}
    if fault.abort is not None:
        config["abort"] = {"http_status": fault.abort.http_status, "percentage": fault.abort.percentage.json()}
    if fault.delay is not None:
        config["delay"] = {"fixed_delay": fault.delay.fixed_delay, "percentage": fault.delay.percentage.json()}
    if fault.response_bandwidth is not None:
        bandwidth = fault.response_bandwidth
        config["response_rate_limit"] = {"fixed_limit": {"limit_kbps": bandwidth.limit_kbps},
                                         "percentage": bandwidth.percentage.json()}
    return config
