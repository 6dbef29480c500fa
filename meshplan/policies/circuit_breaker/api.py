"""MeshCircuitBreaker: connection limits and outlier detection on the cluster of an outbound (`to` only).

Where (the seed's placement table): on sidecars for mesh services; for an external service on the egress only
(`proxyType: ["egress"]`), on its cluster towards the service's endpoints. A sidecar's cluster to an external
service (which leads to the egress) never takes one, even from a `to: Mesh` item: the seed wants one breaker per
external service, not one per client in front of the egress.

Both of the seed's spellings are accepted and normalised, before merging, to the seed's own specification:
`connectionLimits` -> `connectionPool`; `detectors.totalFailures: {consecutive: N}` -> `consecutiveTotalFailures: N`,
and likewise `gatewayFailures` -> `consecutiveGatewayFailures`, `localOriginFailures` ->
`consecutiveLocalOriginFailures`. Policies may then mix spellings and still merge field by field; the origin of a
normalised field is the line it was written on. One item that writes a field both ways is a validation error.

Policy field -> Envoy field (proto names) on the cluster:

    connectionPool.maxConnections          circuit_breakers.thresholds[priority DEFAULT].max_connections
    connectionPool.maxPendingRequests      ... .max_pending_requests
    connectionPool.maxRequests             ... .max_requests
    connectionPool.maxRetries              ... .max_retries
    connectionPool.maxConnectionPools      ... .max_connection_pools
    outlierDetection.disabled: true        removes outlier_detection
    outlierDetection.interval              outlier_detection.interval
    outlierDetection.baseEjectionTime      outlier_detection.base_ejection_time
    outlierDetection.maxEjectionPercent    outlier_detection.max_ejection_percent
    outlierDetection.splitExternalAndLocalErrors   outlier_detection.split_external_local_origin_errors
    outlierDetection.healthyPanicThreshold cluster.common_lb_config.healthy_panic_threshold.value
    detectors.consecutiveTotalFailures     consecutive_5xx, enforcing_consecutive_5xx 100
    detectors.consecutiveGatewayFailures   consecutive_gateway_failure, enforcing_consecutive_gateway_failure 100
    detectors.consecutiveLocalOriginFailures   consecutive_local_origin_failure,
                                           enforcing_consecutive_local_origin_failure 100
    detectors.successRate                  success_rate_minimum_hosts, success_rate_request_volume,
                                           success_rate_stdev_factor (standardDeviationFactor x 1000),
                                           enforcing_success_rate 100, enforcing_local_origin_success_rate 100
    detectors.failurePercentage            failure_percentage_minimum_hosts, failure_percentage_request_volume,
                                           failure_percentage_threshold, enforcing_failure_percentage 100,
                                           enforcing_failure_percentage_local_origin 100

Defaults: a `connectionPool` (even `{}`, the seed's minimal policy) renders the DEFAULT threshold with the seed's
defaults for what it does not set — maxConnections 1024, maxPendingRequests 1024, maxRequests 1024, maxRetries 3
(Envoy's own defaults too, so only the plan changes). Every cluster of every proxy, a MeshCircuitBreaker or not,
gets `track_remaining: true` in that threshold as Kuma's plugin does, so that Envoy publishes the `remaining_*` gauges; maxConnectionPools has no default (unlimited). An outlier detection enforces
exactly the detectors the merged conf names: as in Kuma, every other detector gets `enforcing_* 0` (Envoy would
otherwise enforce consecutive 5xx and success rate by default). Envoy's defaults hold for interval (10s), base
ejection time (30s) and max ejection percent (10%).

Validation (as Kuma, where the seed is silent): a `default` has connectionPool or outlierDetection; limits and
detector counts are greater than zero; percentages (maxEjectionPercent, failurePercentage.threshold,
healthyPanicThreshold) are 0-100; interval and baseEjectionTime are greater than zero; standardDeviationFactor is a
number (or a decimal string) greater than zero; an outlierDetection has `detectors` (as Kuma; the seed is silent),
which names at least one detector, and a nested detector has `consecutive`.

One `parse(reader)` reads a `default` (both spellings, for `validate`) and a merged conf (normalised) alike, into
the frozen `Conf` dataclasses; rendering reads those, with the policies that set each value, never the raw dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from meshplan.load.resources import PathKey
from meshplan.match.spelling import DETECTOR_ALIASES, POOL, POOL_ALIAS
from meshplan.policies import EGRESS_TO, TO, placement_row
from meshplan.policies.base import Json
from meshplan.policies.conf import ConfReader, Setting
from meshplan.validate.check import FieldCheck

KIND = "MeshCircuitBreaker"
PLACEMENT = placement_row(KIND, {TO}, {"egress"}, False, EGRESS_TO)  # the seed's placement table, for external services

ENFORCED = 100
UINT32_MAX = 2**32 - 1


# --- the conf -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    max_connections: Setting[int] | None
    max_pending_requests: Setting[int] | None
    max_requests: Setting[int] | None
    max_retries: Setting[int] | None
    max_connection_pools: Setting[int] | None
    written_by: tuple[str, ...]  # the policies that wrote a pool (even `{}`): the seed's defaults are theirs


@dataclass(frozen=True)
class SuccessRate:
    minimum_hosts: Setting[int] | None
    request_volume: Setting[int] | None
    stdev_factor: Setting[int] | None  # in thousandths, as Envoy reads it: 1.9 -> 1900


@dataclass(frozen=True)
class FailurePercentage:
    minimum_hosts: Setting[int] | None
    request_volume: Setting[int] | None
    threshold: Setting[int] | None


@dataclass(frozen=True)
class Detectors:
    total_failures: Setting[int] | None  # the consecutive counts, whichever spelling an item used
    gateway_failures: Setting[int] | None
    local_origin_failures: Setting[int] | None
    success_rate: Setting[SuccessRate] | None  # origins: whoever set anything in it, `{}` included
    failure_percentage: Setting[FailurePercentage] | None


@dataclass(frozen=True)
class OutlierDetection:
    disabled: Setting[bool] | None
    interval: Setting[str] | None  # the durations as Envoy writes them
    base_ejection_time: Setting[str] | None
    max_ejection_percent: Setting[int] | None
    split_external_and_local_errors: Setting[bool] | None
    healthy_panic_threshold: Setting[float] | None
    detectors: Detectors | None
    written_by: tuple[str, ...]  # the policies that wrote an outlier detection: the detectors it leaves off are theirs


@dataclass(frozen=True)
class Conf:
    pool: Pool | None
    outlier_detection: OutlierDetection | None


_FIELDS = (POOL, POOL_ALIAS, "outlierDetection")
_POOL_FIELDS = ("maxConnections", "maxPendingRequests", "maxRequests", "maxRetries", "maxConnectionPools")
_OUTLIER_FIELDS = ("disabled", "interval", "baseEjectionTime", "maxEjectionPercent", "splitExternalAndLocalErrors",
                   "detectors", "healthyPanicThreshold")
_CONSECUTIVE = ("consecutiveTotalFailures", "consecutiveGatewayFailures", "consecutiveLocalOriginFailures")
_RATE_FIELDS = ("minimumHosts", "requestVolume")
_DETECTORS = _CONSECUTIVE + tuple(DETECTOR_ALIASES) + ("successRate", "failurePercentage")


def parse(conf: ConfReader) -> Conf | None:
    """A `default`, in either spelling (or what several merged to, in the seed's): None, with a violation, when it
    has neither a pool nor an outlier detection."""
    conf.unknown(_FIELDS)
    _one_spelling(conf, POOL, POOL_ALIAS)
    if not any(conf.has(key) for key in _FIELDS):
        conf.fail(f"at least one of `{POOL}` (or `{POOL_ALIAS}`) or `outlierDetection` should be configured")
        return None
    pool = conf.section(POOL, _parse_pool)
    alias = conf.section(POOL_ALIAS, _parse_pool)  # only on an item: a merged conf is in the seed's spelling
    return Conf(pool if pool is not None else alias, conf.section("outlierDetection", _parse_outlier))


def _parse_pool(pool: ConfReader) -> Pool:
    pool.unknown(_POOL_FIELDS)
    connections, pending, requests, retries, pools = (_uint(pool, key, minimum=1) for key in _POOL_FIELDS)
    return Pool(connections, pending, requests, retries, pools, pool.written_by())


def _parse_outlier(outlier: ConfReader) -> OutlierDetection:
    outlier.unknown(_OUTLIER_FIELDS)
    disabled = outlier.boolean("disabled")
    interval = outlier.duration("interval", positive=True)
    base_ejection_time = outlier.duration("baseEjectionTime", positive=True)
    max_ejection_percent = _uint(outlier, "maxEjectionPercent", maximum=100)
    split = outlier.boolean("splitExternalAndLocalErrors")
    panic = outlier.decimal("healthyPanicThreshold", minimum=Decimal(0), maximum=Decimal(100))
    return OutlierDetection(disabled, interval, base_ejection_time, max_ejection_percent, split,
                            None if panic is None else Setting(float(panic.value), panic.origins),
                            outlier.section("detectors", _parse_detectors), outlier.written_by())


def _parse_detectors(detectors: ConfReader) -> Detectors:
    detectors.unknown(_DETECTORS)
    if not any(detectors.has(key) for key in _DETECTORS):
        detectors.fail(f"must have at least one of: {', '.join(_DETECTORS)}")
    consecutive: list[Setting[int] | None] = []
    for nested, flat in DETECTOR_ALIASES.items():
        _one_spelling(detectors, flat, nested)
        count = _uint(detectors, flat, minimum=1)

        def read_nested(written: ConfReader, flat: str = flat) -> Setting[int] | None:
            written.unknown(("consecutive",))
            if not written.has("consecutive"):
                written.fail(f"`consecutive` is required (or write `{flat}: N`)")
            return _uint(written, "consecutive", minimum=1)

        count_nested = detectors.section(nested, read_nested)  # only on an item: a merged conf has the flat one
        consecutive.append(count if count is not None else count_nested)
    total, gateway, local_origin = consecutive
    return Detectors(total, gateway, local_origin, detectors.section_setting("successRate", _parse_success_rate),
                     detectors.section_setting("failurePercentage", _parse_failure_percentage))


def _parse_success_rate(rate: ConfReader) -> SuccessRate:
    rate.unknown(_RATE_FIELDS + ("standardDeviationFactor",))
    minimum_hosts, request_volume = (_uint(rate, key, minimum=1) for key in _RATE_FIELDS)
    factor = rate.decimal("standardDeviationFactor", minimum=Decimal(0), exclusive=True,
                          maximum=Decimal(UINT32_MAX) / 1000)
    if factor is not None and factor.value * 1000 < 1:
        rate.fail("must be at least 0.001 (Envoy counts thousandths)", "standardDeviationFactor")
        factor = None
    thousandths = None if factor is None else Setting(int(factor.value * 1000), factor.origins)
    return SuccessRate(minimum_hosts, request_volume, thousandths)


def _parse_failure_percentage(percentage: ConfReader) -> FailurePercentage:
    percentage.unknown(_RATE_FIELDS + ("threshold",))
    minimum_hosts, request_volume = (_uint(percentage, key, minimum=1) for key in _RATE_FIELDS)
    return FailurePercentage(minimum_hosts, request_volume, _uint(percentage, "threshold", maximum=100))


def _one_spelling(conf: ConfReader, key: str, alias: str) -> None:
    if key in conf.raw and alias in conf.raw:
        conf.fail(f"`{key}` and `{alias}` are two spellings of one field: set only one", alias)


def _uint(conf: ConfReader, key: str, *, minimum: int = 0, maximum: int = UINT32_MAX) -> Setting[int] | None:
    return conf.integer(key, minimum=minimum, maximum=maximum)


# --- validation -----------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    parse(ConfReader(default, path, check))
    outlier = default.get("outlierDetection")
    if isinstance(outlier, dict) and "detectors" not in outlier:
        # As Kuma: an outlier detection says what ejects a host; the seed is silent here.
        check.fail(path + ("outlierDetection", "detectors"), "must be defined (an outlier detection names the "
                   "detectors that eject a host: one of " + ", ".join(_DETECTORS) + ")")
