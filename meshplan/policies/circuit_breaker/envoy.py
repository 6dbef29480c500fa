"""MeshCircuitBreaker's Envoy side: what the typed conf (api.py, whose docstring maps each field to Envoy's) becomes in
the proxy's resources."""

from __future__ import annotations

from meshplan.policies.base import Json, ProxyBuild
from meshplan.policies.circuit_breaker.api import ENFORCED, KIND, Detectors, OutlierDetection, Pool, parse
from meshplan.policies.conf import Setting

# --- rendering ------------------------------------------------------------------------------------------------


def apply(build: ProxyBuild) -> None:
    # Merged in the seed's spelling (match.spelling); for an external service only on the egress (the seed).
    for out, conf in build.outbound_confs(KIND, parse):
        if conf.pool is not None:
            _thresholds(build, conf.pool, out.cluster)
        if conf.outlier_detection is not None:
            _outlier_detection(build, conf.outlier_detection, out.cluster)
    # Kuma's plugin tracks the remaining resources of every cluster of every proxy, whether or not a
    # MeshCircuitBreaker applies (its `applyTrackRemaining`): the stats `remaining_*` then exist everywhere.
    for cluster in build.clusters.values():
        _default_thresholds(cluster).setdefault("track_remaining", True)


def _default_thresholds(cluster: Json) -> Json:
    """The cluster's circuit-breaker thresholds of priority DEFAULT, created if need be."""
    thresholds: list[Json] = cluster.setdefault("circuit_breakers", {}).setdefault("thresholds", [])
    default = next((t for t in thresholds if t.get("priority", "DEFAULT") == "DEFAULT"), None)
    if default is None:
        default = {"priority": "DEFAULT"}
        thresholds.append(default)
    return default


def _thresholds(build: ProxyBuild, pool: Pool, cluster: Json) -> None:
    default = _default_thresholds(cluster)
    written = list(pool.written_by)
    for setting, envoy_key, fallback in ((pool.max_connections, "max_connections", 1024),
                                         (pool.max_pending_requests, "max_pending_requests", 1024),
                                         (pool.max_requests, "max_requests", 1024),
                                         (pool.max_retries, "max_retries", 3),
                                         (pool.max_connection_pools, "max_connection_pools", None)):
        if setting is not None:
            _set(build, default, envoy_key, setting)
        elif fallback is not None:
            build.set(default, envoy_key, fallback, written)  # the seed's default, there because a pool was written
    build.set(default, "track_remaining", True, written)


def _outlier_detection(build: ProxyBuild, conf: OutlierDetection, cluster: Json) -> None:
    if conf.disabled is not None and conf.disabled.value:
        cluster.pop("outlier_detection", None)
        return
    detection: Json = {}
    cluster["outlier_detection"] = detection
    for envoy_key, setting in (("interval", conf.interval), ("base_ejection_time", conf.base_ejection_time)):
        if setting is not None:
            _set(build, detection, envoy_key, setting)
    if conf.max_ejection_percent is not None:
        _set(build, detection, "max_ejection_percent", conf.max_ejection_percent)
    if conf.split_external_and_local_errors is not None:
        _set(build, detection, "split_external_local_origin_errors", conf.split_external_and_local_errors)
    detectors = conf.detectors or Detectors(None, None, None, None, None)
    # A detector the conf does not name is switched off: the policies that wrote the outlier detection decided that.
    everyone = list(conf.written_by)
    for count, envoy_key, enforcing in (
        (detectors.total_failures, "consecutive_5xx", "enforcing_consecutive_5xx"),
        (detectors.gateway_failures, "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure"),
        (detectors.local_origin_failures, "consecutive_local_origin_failure",
         "enforcing_consecutive_local_origin_failure"),
    ):
        if count is not None:
            _set(build, detection, envoy_key, count)
            build.set(detection, enforcing, ENFORCED, list(count.origins))
        else:
            build.set(detection, enforcing, 0, everyone)
    rate = detectors.success_rate
    _enforcing(build, detection, ("enforcing_success_rate", "enforcing_local_origin_success_rate"),
               None if rate is None else rate.origins, everyone)
    if rate is not None:
        for envoy_key, value in (("success_rate_minimum_hosts", rate.value.minimum_hosts),
                                 ("success_rate_request_volume", rate.value.request_volume),
                                 ("success_rate_stdev_factor", rate.value.stdev_factor)):
            if value is not None:
                _set(build, detection, envoy_key, value)
    percentage = detectors.failure_percentage
    _enforcing(build, detection, ("enforcing_failure_percentage", "enforcing_failure_percentage_local_origin"),
               None if percentage is None else percentage.origins, everyone)
    if percentage is not None:
        for envoy_key, value in (("failure_percentage_minimum_hosts", percentage.value.minimum_hosts),
                                 ("failure_percentage_request_volume", percentage.value.request_volume),
                                 ("failure_percentage_threshold", percentage.value.threshold)):
            if value is not None:
                _set(build, detection, envoy_key, value)
    if conf.healthy_panic_threshold is not None:
        lb_config = cluster.setdefault("common_lb_config", {})
        build.set(lb_config, "healthy_panic_threshold", {"value": conf.healthy_panic_threshold.value},
                  list(conf.healthy_panic_threshold.origins))


def _enforcing(build: ProxyBuild, detection: Json, keys: tuple[str, ...], set_by: tuple[str, ...] | None,
               everyone: list[str]) -> None:
    """A rate detector's enforcing fields: on, by whoever set it, or off (`set_by` None), by whoever wrote the
    outlier detection."""
    for key in keys:
        if set_by is None:
            build.set(detection, key, 0, everyone)
        else:
            build.set(detection, key, ENFORCED, list(set_by))


def _set(build: ProxyBuild, node: Json, envoy_key: str, setting: Setting[int] | Setting[str] | Setting[bool]) -> None:
    build.set(node, envoy_key, setting.value, list(setting.origins))
