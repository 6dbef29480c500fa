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
(Envoy's own defaults too, so only the plan changes) — and `track_remaining: true` as Kuma does, so that Envoy
publishes the `remaining_*` gauges; maxConnectionPools has no default (unlimited). An outlier detection enforces
exactly the detectors the merged conf names: as in Kuma, every other detector gets `enforcing_* 0` (Envoy would
otherwise enforce consecutive 5xx and success rate by default). Envoy's defaults hold for interval (10s), base
ejection time (30s) and max ejection percent (10%).

Validation (as Kuma, where the seed is silent): a `default` has connectionPool or outlierDetection; limits and
detector counts are greater than zero; percentages (maxEjectionPercent, failurePercentage.threshold,
healthyPanicThreshold) are 0-100; interval and baseEjectionTime are greater than zero; standardDeviationFactor is a
number (or a decimal string) greater than zero; `detectors`, when written, names at least one detector, and a nested
detector has `consecutive`. Unlike Kuma, `detectors` may be left out of one item, so that a more specific policy can
change only, say, the interval.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from meshplan.load.resources import PathKey
from meshplan.match.matcher import Merged
from meshplan.match.spelling import DETECTOR_ALIASES, POOL, POOL_ALIAS
from meshplan.policies.base import Json, ProxyBuild, origins_of
from meshplan.validate.check import FieldCheck, proto_duration

KIND = "MeshCircuitBreaker"
ORDER = 90  # run order on a proxy (registry.py): before MeshHealthCheck, whose deprecated healthyPanicThreshold wins where both set it

POOL_FIELDS = {  # policy field -> (Envoy threshold field, the seed's default)
    "maxConnections": ("max_connections", 1024),
    "maxPendingRequests": ("max_pending_requests", 1024),
    "maxRequests": ("max_requests", 1024),
    "maxRetries": ("max_retries", 3),
    "maxConnectionPools": ("max_connection_pools", None),
}
OUTLIER_FIELDS = ("disabled", "interval", "baseEjectionTime", "maxEjectionPercent", "splitExternalAndLocalErrors",
                  "detectors", "healthyPanicThreshold")
CONSECUTIVE_DETECTORS = {  # flat detector -> (Envoy count field, its enforcing field)
    "consecutiveTotalFailures": ("consecutive_5xx", "enforcing_consecutive_5xx"),
    "consecutiveGatewayFailures": ("consecutive_gateway_failure", "enforcing_consecutive_gateway_failure"),
    "consecutiveLocalOriginFailures": ("consecutive_local_origin_failure",
                                       "enforcing_consecutive_local_origin_failure"),
}
RATE_DETECTORS = {  # detector -> its fields -> Envoy fields, and its enforcing fields
    "successRate": ({"minimumHosts": "success_rate_minimum_hosts", "requestVolume": "success_rate_request_volume",
                     "standardDeviationFactor": "success_rate_stdev_factor"},
                    ("enforcing_success_rate", "enforcing_local_origin_success_rate")),
    "failurePercentage": ({"minimumHosts": "failure_percentage_minimum_hosts",
                           "requestVolume": "failure_percentage_request_volume",
                           "threshold": "failure_percentage_threshold"},
                          ("enforcing_failure_percentage", "enforcing_failure_percentage_local_origin")),
}
DETECTORS = tuple(CONSECUTIVE_DETECTORS) + tuple(DETECTOR_ALIASES) + tuple(RATE_DETECTORS)
ENFORCED = 100
UINT32_MAX = 2**32 - 1


# --- validation -----------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    check.unknown(default, path, (POOL, POOL_ALIAS, "outlierDetection"))
    _one_spelling(check, default, path, POOL, POOL_ALIAS)
    if not any(default.get(key) is not None for key in (POOL, POOL_ALIAS, "outlierDetection")):
        check.fail(path, f"at least one of `{POOL}` (or `{POOL_ALIAS}`) or `outlierDetection` should be configured")
        return
    for key in (POOL, POOL_ALIAS):
        pool = check.field(default, path, key, dict)
        if pool is not None:
            check.unknown(pool, path + (key,), tuple(POOL_FIELDS))
            for field in POOL_FIELDS:
                _uint(check, pool, path + (key,), field, minimum=1)
    outlier = check.field(default, path, "outlierDetection", dict)
    if outlier is not None:
        _check_outlier(check, outlier, path + ("outlierDetection",))


def _check_outlier(check: FieldCheck, outlier: Json, path: PathKey) -> None:
    check.unknown(outlier, path, OUTLIER_FIELDS)
    check.field(outlier, path, "disabled", bool)
    check.duration(outlier, path, "interval", positive=True)
    check.duration(outlier, path, "baseEjectionTime", positive=True)
    _uint(check, outlier, path, "maxEjectionPercent", maximum=100)
    check.field(outlier, path, "splitExternalAndLocalErrors", bool)
    _decimal(check, outlier, path, "healthyPanicThreshold", minimum=Decimal(0), maximum=Decimal(100))
    detectors = check.field(outlier, path, "detectors", dict)
    if detectors is None:
        return
    dpath = path + ("detectors",)
    check.unknown(detectors, dpath, DETECTORS)
    if not any(detectors.get(key) is not None for key in DETECTORS):
        check.fail(dpath, f"must have at least one of: {', '.join(DETECTORS)}")
    for nested, flat in DETECTOR_ALIASES.items():
        _one_spelling(check, detectors, dpath, flat, nested)
        _uint(check, detectors, dpath, flat, minimum=1)
        written = check.field(detectors, dpath, nested, dict)
        if written is not None:
            check.unknown(written, dpath + (nested,), ("consecutive",))
            if written.get("consecutive") is None:
                check.fail(dpath + (nested,), f"`consecutive` is required (or write `{flat}: N`)")
            _uint(check, written, dpath + (nested,), "consecutive", minimum=1)
    rate = check.field(detectors, dpath, "successRate", dict)
    if rate is not None:
        rpath = dpath + ("successRate",)
        check.unknown(rate, rpath, tuple(RATE_DETECTORS["successRate"][0]))
        _uint(check, rate, rpath, "minimumHosts", minimum=1)
        _uint(check, rate, rpath, "requestVolume", minimum=1)
        factor = _decimal(check, rate, rpath, "standardDeviationFactor", minimum=Decimal(0), exclusive=True,
                          maximum=Decimal(UINT32_MAX) / 1000)
        if factor is not None and factor * 1000 < 1:
            check.fail(rpath + ("standardDeviationFactor",), "must be at least 0.001 (Envoy counts thousandths)")
    percentage = check.field(detectors, dpath, "failurePercentage", dict)
    if percentage is not None:
        fpath = dpath + ("failurePercentage",)
        check.unknown(percentage, fpath, tuple(RATE_DETECTORS["failurePercentage"][0]))
        _uint(check, percentage, fpath, "minimumHosts", minimum=1)
        _uint(check, percentage, fpath, "requestVolume", minimum=1)
        _uint(check, percentage, fpath, "threshold", maximum=100)


def _one_spelling(check: FieldCheck, obj: Json, path: PathKey, key: str, alias: str) -> None:
    if key in obj and alias in obj:
        check.fail(path + (alias,), f"`{key}` and `{alias}` are two spellings of one field: set only one")


def _uint(check: FieldCheck, obj: Json, path: PathKey, key: str, *, minimum: int = 0,
          maximum: int = UINT32_MAX) -> int | None:
    value = check.field(obj, path, key, int)
    if value is not None and not minimum <= value <= maximum:
        check.fail(path + (key,), f"must be between {minimum} and {maximum}, got {value}")
        return None
    return value  # type: ignore[no-any-return]


def _decimal(check: FieldCheck, obj: Json, path: PathKey, key: str, *, minimum: Decimal, maximum: Decimal,
             exclusive: bool = False) -> Decimal | None:
    """A number, or a decimal written as a string (Kuma's int-or-string), within bounds."""
    value = check.field(obj, path, key, (int, float, str))
    if value is None:
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite():
        check.fail(path + (key,), f"must be a number, got {value!r}")
        return None
    if number < minimum or (exclusive and number == minimum) or number > maximum:
        low = f"greater than {minimum}" if exclusive else f"at least {minimum}"
        check.fail(path + (key,), f"must be {low} and at most {maximum}, got {value!r}")
        return None
    return number


# --- rendering ------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    for out in build.outbounds:
        # Merged in the seed's spelling (match.spelling); for an external service only on the egress (the seed).
        merged = build.match.to(KIND, out.destination)
        if merged.empty:
            continue
        if merged.conf.get(POOL) is not None:
            _thresholds(build, merged, out.cluster)
        if merged.conf.get("outlierDetection") is not None:
            _outlier_detection(build, merged, out.cluster)


def _thresholds(build: ProxyBuild, merged: Merged, cluster: Json) -> None:
    pool: dict[str, Any] = merged.conf[POOL]
    thresholds: list[Json] = cluster.setdefault("circuit_breakers", {}).setdefault("thresholds", [])
    default = next((t for t in thresholds if t.get("priority", "DEFAULT") == "DEFAULT"), None)
    if default is None:
        default = {"priority": "DEFAULT"}
        thresholds.append(default)
    written = _written_by(merged, POOL)
    for key, (envoy_key, fallback) in POOL_FIELDS.items():
        if key in pool:
            build.set(default, envoy_key, pool[key], origins_of(merged, f"{POOL}.{key}"))
        elif fallback is not None:
            build.set(default, envoy_key, fallback, written)  # the seed's default, there because a pool was written
    build.set(default, "track_remaining", True, written)


def _written_by(merged: Merged, key: str) -> list[str]:
    """The policies that wrote a block of the conf (at the block's line): for what its presence alone decides."""
    return sorted({str(c.origin((key,))) for c in merged.contributions if c.item.default.get(key) is not None})


def _outlier_detection(build: ProxyBuild, merged: Merged, cluster: Json) -> None:
    conf: dict[str, Any] = merged.conf["outlierDetection"]

    def origins(key: str) -> list[str]:
        return origins_of(merged, f"outlierDetection.{key}")

    if conf.get("disabled") is True:
        cluster.pop("outlier_detection", None)
        return
    detection: Json = {}
    cluster["outlier_detection"] = detection
    for key, envoy_key in (("interval", "interval"), ("baseEjectionTime", "base_ejection_time")):
        if key in conf:
            build.set(detection, envoy_key, proto_duration(conf[key]), origins(key))
    if "maxEjectionPercent" in conf:
        build.set(detection, "max_ejection_percent", conf["maxEjectionPercent"], origins("maxEjectionPercent"))
    if "splitExternalAndLocalErrors" in conf:
        build.set(detection, "split_external_local_origin_errors", conf["splitExternalAndLocalErrors"],
                  origins("splitExternalAndLocalErrors"))
    detectors: dict[str, Any] = conf.get("detectors") or {}
    # A detector the conf does not name is switched off: the policies that wrote the outlier detection decided that.
    everyone = _written_by(merged, "outlierDetection")
    for key, (envoy_key, enforcing) in CONSECUTIVE_DETECTORS.items():
        if key in detectors:
            build.set(detection, envoy_key, detectors[key], origins(f"detectors.{key}"))
            build.set(detection, enforcing, ENFORCED, origins(f"detectors.{key}"))
        else:
            build.set(detection, enforcing, 0, everyone)
    for key, (fields, enforcing_keys) in RATE_DETECTORS.items():
        detector = detectors.get(key)
        for enforcing in enforcing_keys:
            build.set(detection, enforcing, 0 if detector is None else ENFORCED,
                      everyone if detector is None else origins(f"detectors.{key}"))
        for field, envoy_key in fields.items():
            if detector is not None and field in detector:
                value = detector[field]
                if field == "standardDeviationFactor":
                    # Envoy reads the factor in thousandths: 1.9 -> 1900.
                    value = int(Decimal(str(value).strip()) * 1000)
                build.set(detection, envoy_key, value, origins(f"detectors.{key}.{field}"))
    if "healthyPanicThreshold" in conf:
        lb_config = cluster.setdefault("common_lb_config", {})
        build.set(lb_config, "healthy_panic_threshold", {"value": float(Decimal(str(conf["healthyPanicThreshold"])))},
                  origins("healthyPanicThreshold"))
