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

The conf: `parse` (policies/conf.py) is the one reader of these fields, for an item's `default` (validate) and for
what a rule's items merged to (render): the Envoy side reads its `Conf` dataclasses (durations, bandwidths and
percentages already in Envoy's form), never the raw dict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from meshplan.load.resources import PathKey
from meshplan.policies import EGRESS_FROM, FROM, placement_row
from meshplan.policies.base import Json
from meshplan.policies.conf import ConfReader, Setting
from meshplan.validate.check import FieldCheck, duration_json, parse_duration

KIND = "MeshFaultInjection"
PLACEMENT = placement_row(KIND, {FROM}, set(), True, EGRESS_FROM)  # the seed's placement table, for external services

FAULTS = ("abort", "delay", "responseBandwidth")
BANDWIDTH = re.compile(r"^(\d+)\s?(kbps|Mbps|Gbps)$")  # Kuma's units
KBPS = {"kbps": 1, "Mbps": 1_000, "Gbps": 1_000_000}
MAX_UINT64 = 2**64 - 1
# Envoy's FractionalPercent denominators, by the decimals a percentage has.
DENOMINATORS = ((0, "HUNDRED"), (2, "TEN_THOUSAND"), (4, "MILLION"))


# --- the conf -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Percent:
    """A percentage as Envoy's FractionalPercent, exactly."""

    numerator: int
    denominator: str  # HUNDRED | TEN_THOUSAND | MILLION

    def json(self) -> Json:
        return {"numerator": self.numerator, "denominator": self.denominator}


@dataclass(frozen=True)
class Abort:
    http_status: int
    percentage: Percent


@dataclass(frozen=True)
class Delay:
    fixed_delay: str  # as Envoy writes a Duration (`5s`, `0.500s`)
    percentage: Percent


@dataclass(frozen=True)
class Bandwidth:
    limit_kbps: int
    percentage: Percent


@dataclass(frozen=True)
class Fault:
    """One entry of `http`: one fault filter."""

    abort: Abort | None
    delay: Delay | None
    response_bandwidth: Bandwidth | None


@dataclass(frozen=True)
class Conf:
    http: Setting[tuple[Fault, ...]] | None  # a list is set as a whole: its origins are the list's


def parse(conf: ConfReader) -> Conf:
    """A `default` (or what several merged to)."""
    conf.unknown(("http",))
    return Conf(conf.entries("http", _parse_fault,
                             not_a_mapping="must be a mapping with `abort`, `delay` and/or `responseBandwidth`"))


def _parse_fault(fault: ConfReader) -> Fault:
    fault.unknown(FAULTS)
    if not any(fault.has(key) for key in FAULTS):
        fault.fail("needs at least one of `abort`, `delay`, `responseBandwidth`")
    return Fault(fault.section("abort", _parse_abort), fault.section("delay", _parse_delay),
                 fault.section("responseBandwidth", _parse_bandwidth))


def _parse_abort(abort: ConfReader) -> Abort | None:
    abort.unknown(("httpStatus", "percentage"))
    status = abort.status("httpStatus", range(200, 600), _wrong_status) if abort.required("httpStatus") else None
    percentage = _percentage(abort)
    return None if status is None or percentage is None else Abort(status.value, percentage)


def _wrong_status(status: int) -> str:
    return f"must be an HTTP status between 200 and 599, got {status}"


def _parse_delay(delay: ConfReader) -> Delay | None:
    delay.unknown(("value", "percentage"))
    value = delay.text("value") if delay.required("value") else None
    fixed = None
    if value is not None:
        seconds = parse_duration(value.value)
        if seconds is None:
            delay.fail(f"must be a duration like 500ms or 5s, got {value.value!r}", "value")
        elif seconds <= 0:
            delay.fail(f"must be greater than 0 (Envoy refuses a delay of 0), got {value.value!r}", "value")
        else:
            fixed = duration_json(seconds)
    percentage = _percentage(delay)
    return None if fixed is None or percentage is None else Delay(fixed, percentage)


def _parse_bandwidth(bandwidth: ConfReader) -> Bandwidth | None:
    bandwidth.unknown(("limit", "percentage"))
    limit = bandwidth.text("limit") if bandwidth.required("limit") else None
    kbps = None
    if limit is not None:
        kbps = limit_kbps(limit.value)
        if kbps is None:
            bandwidth.fail(f"must be a whole number with a unit kbps, Mbps or Gbps, got {limit.value!r}", "limit")
        elif not 1 <= kbps <= MAX_UINT64:
            bandwidth.fail(f"must be at least 1kbps, got {limit.value!r}", "limit")
            kbps = None
    percentage = _percentage(bandwidth)
    return None if kbps is None or percentage is None else Bandwidth(kbps, percentage)


def _percentage(fault: ConfReader) -> Percent | None:
    """A fault's required `percentage`, in Envoy's form."""
    percent = fault.percentage("percentage") if fault.required("percentage") else None
    if percent is None:
        return None
    fraction = fractional_percent(percent.value)
    if fraction is None:
        fault.fail(f"at most 4 decimals (Envoy counts in millionths), got {fault.raw['percentage']!r}", "percentage")
    return fraction


def fractional_percent(percent: Decimal) -> Percent | None:
    """A percentage as Envoy's FractionalPercent, exactly, or None when it needs more than 4 decimals."""
    for decimals, denominator in DENOMINATORS:
        numerator = percent * 10**decimals
        if numerator == numerator.to_integral_value():
            return Percent(int(numerator), denominator)
    return None


def limit_kbps(limit: str) -> int | None:
    m = BANDWIDTH.fullmatch(limit)
    return int(m.group(1)) * KBPS[m.group(2)] if m else None


# --- validation -----------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    parse(ConfReader(default, path, check))
