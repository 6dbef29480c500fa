"""MeshFaultInjection (`from`): aborts, delays and response bandwidth limits injected on an HTTP inbound, for the
clients the `from` items name.

Where: every HTTP (http, http2, grpc) sidecar inbound the top-level targetRef selects, and on the egress the filter
chain of one HTTP external service (top-level `kind: MeshExternalService`, `proxyType: ["Egress"]`: the seed's
placement table). Envoy's fault filter works on HTTP only, so a TCP inbound gets nothing (as in Kuma).

Fields of `from[].default` (as Kuma's MeshFaultInjection):
    http:                                   a list; each entry is one fault filter, applied in order
      - abort:             {httpStatus, percentage}      httpStatus 200..599 (Envoy's range), required
        delay:             {value, percentage}           value a Go duration > 0 (Envoy refuses 0), required
        responseBandwidth: {limit, percentage}           limit `<n>kbps|Mbps|Gbps`, n >= 1, required
    percentage: 0..100, an integer or a decimal (as a string, like Kuma, or a YAML number) with at most 4 decimals;
    required in each fault. An entry needs at least one of abort, delay, responseBandwidth. No `http`: no fault.
    Lists are not merged: the most specific rule's `http` list replaces the others (RFC 7396, DESIGN.md).

Envoy: each entry is an `envoy.filters.http.fault` filter (HTTPFault) in the inbound's HTTP connection manager,
before the router: `abort {http_status, percentage}`, `delay {fixed_delay, percentage}`,
`response_rate_limit {fixed_limit {limit_kbps}, percentage}`; a percentage is a FractionalPercent over HUNDRED
(integers), TEN_THOUSAND (up to 2 decimals) or MILLION (up to 4). Stats `http.<hcm stat prefix>.fault.*`.

Clients: a fault filter has no notion of a client identity of its own (its `downstream_nodes` is the
x-envoy-downstream-service-node header and `headers` are request headers, both set by the client, so neither can be
trusted), so each filter of a rule for some clients is wrapped in an ExtensionWithMatcher that skips it for every
client the rule is not the first match for, on the URI SANs of the peer certificate (policies/clients.py) — the way
Kuma restricts MeshFaultInjection to its sources. A rule for every client (kind Mesh) is not wrapped.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from meshplan.envoy.types import HTTP_FAULT
from meshplan.envoy.types import HTTP_FAULT_NAME as FILTER
from meshplan.load.resources import PathKey
from meshplan.policies.base import Json, ProxyBuild, hcm, insert_http_filter, origins_of
from meshplan.policies.clients import (
    first_match,
    http_filter_for,
    label,
    mesh_of,
    rule_clients,
)
from meshplan.validate.check import FieldCheck, duration_json, parse_duration

KIND = "MeshFaultInjection"
ORDER = 40  # run order on a proxy (registry.py): after RBAC: faults only for clients that are let in

FAULTS = ("abort", "delay", "responseBandwidth")
BANDWIDTH = re.compile(r"^(\d+)\s?(kbps|Mbps|Gbps)$")  # Kuma's units
KBPS = {"kbps": 1, "Mbps": 1_000, "Gbps": 1_000_000}
MAX_UINT64 = 2**64 - 1
# Envoy's FractionalPercent denominators, by the decimals a percentage has.
DENOMINATORS = ((0, "HUNDRED"), (2, "TEN_THOUSAND"), (4, "MILLION"))


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    check.unknown(default, path, ("http",))
    faults = check.field(default, path, "http", list, default=[])
    for i, fault in enumerate(faults):
        fp = path + ("http", i)
        if not isinstance(fault, dict):
            check.fail(fp, "must be a mapping with `abort`, `delay` and/or `responseBandwidth`")
            continue
        check.unknown(fault, fp, FAULTS)
        if all(fault.get(k) is None for k in FAULTS):
            check.fail(fp, "needs at least one of `abort`, `delay`, `responseBandwidth`")
        abort = check.field(fault, fp, "abort", dict)
        if abort is not None:
            ap = fp + ("abort",)
            check.unknown(abort, ap, ("httpStatus", "percentage"))
            status = check.field(abort, ap, "httpStatus", int, required=True)
            if status is not None and not 200 <= status <= 599:
                check.fail(ap + ("httpStatus",), f"must be an HTTP status between 200 and 599, got {status}")
            _validate_percentage(abort, ap, check)
        delay = check.field(fault, fp, "delay", dict)
        if delay is not None:
            dp = fp + ("delay",)
            check.unknown(delay, dp, ("value", "percentage"))
            value = check.field(delay, dp, "value", str, required=True)
            if value is not None:
                seconds = parse_duration(value)
                if seconds is None:
                    check.fail(dp + ("value",), f"must be a duration like 500ms or 5s, got {value!r}")
                elif seconds <= 0:
                    check.fail(dp + ("value",), f"must be greater than 0 (Envoy refuses a delay of 0), got {value!r}")
            _validate_percentage(delay, dp, check)
        bandwidth = check.field(fault, fp, "responseBandwidth", dict)
        if bandwidth is not None:
            bp = fp + ("responseBandwidth",)
            check.unknown(bandwidth, bp, ("limit", "percentage"))
            limit = check.field(bandwidth, bp, "limit", str, required=True)
            if limit is not None:
                kbps = limit_kbps(limit)
                if kbps is None:
                    check.fail(bp + ("limit",), f"must be a whole number with a unit kbps, Mbps or Gbps, got {limit!r}")
                elif not 1 <= kbps <= MAX_UINT64:
                    check.fail(bp + ("limit",), f"must be at least 1kbps, got {limit!r}")
            _validate_percentage(bandwidth, bp, check)


def _validate_percentage(obj: Json, path: PathKey, check: FieldCheck) -> None:
    value = check.field(obj, path, "percentage", (int, str, float), required=True)
    if value is None:
        return
    percent = parse_percentage(value)
    if percent is None:
        check.fail(path + ("percentage",), f"must be a number between 0 and 100, got {value!r}")
    elif not 0 <= percent <= 100:
        check.fail(path + ("percentage",), f"must be between 0 and 100, got {value!r}")
    elif fractional_percent(percent) is None:
        check.fail(path + ("percentage",), f"at most 4 decimals (Envoy counts in millionths), got {value!r}")


def parse_percentage(value: Any) -> Decimal | None:
    try:
        # str() first: a YAML float like 0.1 becomes Decimal("0.1"), not its binary approximation.
        percent = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return percent if percent.is_finite() else None


def fractional_percent(percent: Decimal) -> Json | None:
    """A percentage as Envoy's FractionalPercent, exactly, or None when it needs more than 4 decimals."""
    for decimals, denominator in DENOMINATORS:
        numerator = percent * 10**decimals
        if numerator == numerator.to_integral_value():
            return {"numerator": int(numerator), "denominator": denominator}
    return None


def limit_kbps(limit: str) -> int | None:
    m = BANDWIDTH.fullmatch(limit)
    return int(m.group(1)) * KBPS[m.group(2)] if m else None


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
            origins = origins_of(rule.merged, "http")
            for i, fault in enumerate(rule.merged.conf.get("http") or []):
                http_filter = http_filter_for(f"{FILTER}:{label(rule.client)}:{i}", _http_fault(fault), clients)
                if http_filter is not None:
                    build.mark(http_filter, "typed_config", origins)
                    insert_http_filter(manager, http_filter)


def _http_fault(fault: Json) -> Json:
    config: Json = {"@type": HTTP_FAULT}
    abort = fault.get("abort")
    if abort is not None:
        config["abort"] = {"http_status": abort["httpStatus"], "percentage": _percentage(abort)}
    delay = fault.get("delay")
    if delay is not None:
        seconds = parse_duration(delay["value"])
        assert seconds is not None  # validated
        config["delay"] = {"fixed_delay": duration_json(seconds), "percentage": _percentage(delay)}
    bandwidth = fault.get("responseBandwidth")
    if bandwidth is not None:
        kbps = limit_kbps(bandwidth["limit"])
        assert kbps is not None  # validated
        config["response_rate_limit"] = {"fixed_limit": {"limit_kbps": kbps}, "percentage": _percentage(bandwidth)}
    return config


def _percentage(fault: Json) -> Json:
    percent = parse_percentage(fault["percentage"])
    assert percent is not None  # validated
    fraction = fractional_percent(percent)
    assert fraction is not None  # validated
    return fraction
