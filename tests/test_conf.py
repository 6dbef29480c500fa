"""A kind's typed conf (meshplan/policies/conf.py), shown on the kinds converted to it: one parse for an item's
`default` (violations at their paths) and for what several items merged to (typed values with the policies that set
them)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from meshplan.errors import Source
from meshplan.load.resources import PathKey
from meshplan.match.matcher import FieldOrigin, Merged, Origin
from meshplan.match.result import match_proxy
from meshplan.policies.access_log import api as access_log
from meshplan.policies.backend_refs import Backend
from meshplan.policies.circuit_breaker import api as circuit_breaker
from meshplan.policies.conf import ConfReader, Header, HeaderMatch, MergedConfError, Setting
from meshplan.policies.fault_injection import api as fault_injection
from meshplan.policies.health_check import api as health_check
from meshplan.policies.http_route import api as http_route_api
from meshplan.policies.load_balancing import api as load_balancing
from meshplan.policies.rate_limit import api as rate_limit
from meshplan.policies.registry import KINDS
from meshplan.policies.retry import api as retry
from meshplan.policies.tcp_route import api as tcp_route
from meshplan.policies.timeout import api as timeout
from meshplan.policies.traffic_permission import api as traffic_permission
from meshplan.validate.check import FieldCheck
from meshplan.validate.resources import load_and_parse
from tests.builders import violations
from tests.policy_tables import policy_file

DEMO = Path(__file__).parent.parent / "examples" / "demo"


def _write(tmp_path: Path, default: str) -> Path:
    (tmp_path / "mesh.yaml").write_text("type: Mesh\nname: default\n")
    (tmp_path / "timeout.yaml").write_text(policy_file("MeshTimeout", default))
    return tmp_path


def _merged_to(directory: Path, kind: str, destination: str) -> Merged:
    """What the `kind` policies of the desired directory merge to for web's outbound to `destination`."""
    desired = load_and_parse(directory)
    web = next(dp for dp in desired.dataplanes if dp.name == "web")
    found = match_proxy(desired, web, KINDS)
    return next(found.to(kind, d.destination) for d in found.destinations if d.destination.name == destination)


def test_one_item_is_checked_field_by_field(tmp_path: Path) -> None:
    found = violations(_write(tmp_path, "        connectionTimeout: 0s\n        http:\n          requestTimeot: 5s\n"))
    assert sorted(v.split(": ", 2)[1:] for v in found) == sorted([
        ["spec.to[0].default.connectionTimeout", "must be greater than 0, got '0s'"],
        ["spec.to[0].default.http.requestTimeot", "unknown field (expected one of: requestTimeout, streamIdleTimeout, "
         "maxStreamDuration, maxConnectionDuration, requestHeadersTimeout)"],
        ["spec.to[0].default.http", "at least one timeout in this section should be configured (one of: "
         "requestTimeout, streamIdleTimeout, maxStreamDuration, maxConnectionDuration, requestHeadersTimeout)"],
    ])


def test_a_merged_conf_reads_as_typed_values_with_their_origins() -> None:
    desired = load_and_parse(DEMO)
    web = next(dp for dp in desired.dataplanes if dp.name == "web")
    found = match_proxy(desired, web, KINDS)
    merged = next(found.to(timeout.KIND, d.destination) for d in found.destinations
                  if not found.to(timeout.KIND, d.destination).empty)
    conf = timeout.parse(ConfReader.of_merged(merged))
    assert conf is not None
    assert conf.connection_timeout is not None
    assert conf.connection_timeout.value.endswith("s")  # Envoy's form, converted once
    assert conf.connection_timeout.origins and all(o.startswith("MeshTimeout/") for o in conf.connection_timeout.origins)


def test_a_merged_conf_that_parse_refuses_is_a_bug_not_a_violation() -> None:
    broken = Merged({"connectionTimeout": "soon"}, {}, ())
    with pytest.raises(MergedConfError, match="connectionTimeout"):
        timeout.parse(ConfReader.of_merged(broken))


def test_a_retry_back_off_merged_from_two_items_is_rendered_as_it_is() -> None:
    # maxInterval below baseInterval is refused in one item; two items may still merge to it (as before the typed conf).
    merged = Merged({"http": {"backOff": {"baseInterval": "1s", "maxInterval": "100ms"}}}, {}, ())
    conf = retry.parse(ConfReader.of_merged(merged))
    assert conf is not None and conf.http is not None and conf.http.back_off is not None
    assert conf.http.back_off.base_interval is not None and conf.http.back_off.base_interval.value == "1s"
    assert conf.http.back_off.max_interval is not None and conf.http.back_off.max_interval.value == "0.100s"


def test_retry_lists_read_as_typed_items() -> None:
    merged = Merged({"http": {"retryOn": ["5XX", 503, "HttpMethodGet"],
                              "retriableResponseHeaders": [{"name": "x-a", "type": "Prefix", "value": "y"}],
                              "hostSelection": [{"predicate": "OmitHostsWithTags", "tags": {"version": "v1"}}]}},
                    {}, ())
    conf = retry.parse(ConfReader.of_merged(merged))
    assert conf is not None and conf.http is not None
    assert conf.http.retry_on is not None
    assert conf.http.retry_on.value == (("on", "5xx"), ("status", "503"), ("method", "GET"))
    assert conf.http.retriable_response_headers is not None
    assert conf.http.retriable_response_headers.value == (HeaderMatch("x-a", "Prefix", "y"),)
    assert conf.http.host_selection is not None
    assert conf.http.host_selection.value == (retry.HostPredicate("OmitHostsWithTags", {"version": "v1"}, None),)


def test_a_merged_retry_conf_that_parse_refuses_is_a_bug() -> None:
    with pytest.raises(MergedConfError, match="http.retryOn.0"):
        retry.parse(ConfReader.of_merged(Merged({"http": {"retryOn": ["Sometimes"]}}, {}, ())))


def test_a_load_balancer_merged_from_two_items_is_rendered_as_it_is() -> None:
    # One item's block of another type, hashPolicies at both levels and a ring of min above max are refused in one
    # item; items may still merge to them: the type's own block and the top-level hashPolicies count.
    merged = Merged({"hashPolicies": [{"type": "SourceIP", "connection": {}}],
                     "loadBalancer": {"type": "LeastRequest", "leastRequest": {"activeRequestBias": "1.5"},
                                      "ringHash": {"minRingSize": 2048, "maxRingSize": 1024,
                                                   "hashPolicies": [{"type": "Header", "header": {"name": "x-a"}}]}}},
                    {}, ())
    conf = load_balancing.parse(ConfReader.of_merged(merged))
    assert conf.load_balancer is not None and conf.load_balancer.lb_policy is not None
    assert conf.load_balancer.lb_policy.value == "LEAST_REQUEST"
    assert conf.load_balancer.least_request is not None
    assert conf.load_balancer.least_request.active_request_bias is not None
    assert conf.load_balancer.least_request.active_request_bias.value == Decimal("1.5")
    assert conf.hash_policies is not None
    assert conf.hash_policies.value == (load_balancing.HashPolicy("SourceIP", None, None, None, True, False),)


def test_a_merged_load_balancer_that_parse_refuses_is_a_bug() -> None:
    with pytest.raises(MergedConfError, match="hashPolicies.0.cookie.ttl"):
        load_balancing.parse(ConfReader.of_merged(Merged(
            {"hashPolicies": [{"type": "Cookie", "cookie": {"name": "s", "ttl": "forever"}}]}, {}, ())))


# --- the inbound kinds: MeshRateLimit, MeshFaultInjection, MeshTrafficPermission -------------------------------


def _origin(name: str, line: int) -> FieldOrigin:
    return FieldOrigin(Origin("Kind", name, Source("p.yaml", line)))


def test_a_rate_limit_reads_typed_with_the_origins_of_each_part() -> None:
    conf = {"local": {"http": {"requestRate": {"num": 5, "interval": "1m30s"},
                               "onRateLimit": {"status": 503, "headers": {"add": [{"name": "x-a", "value": "1"}]}}},
                      "tcp": {"disabled": True}}}
    merged = Merged(conf, {"local.http.requestRate": _origin("a", 1), "local.http.onRateLimit.status": _origin("b", 2),
                           "local.http.onRateLimit.headers.add": _origin("c", 3), "local.tcp.disabled": _origin("d", 4)},
                    ())
    parsed = rate_limit.parse(ConfReader.of_merged(merged))
    assert parsed is not None and parsed.local.http is not None and parsed.local.tcp is not None
    http = parsed.local.http
    assert http.request_rate == Setting(rate_limit.Rate(5, "90s"), ("Kind/a (p.yaml:1)",))  # Envoy's Duration
    assert http.origins == ("Kind/a (p.yaml:1)", "Kind/b (p.yaml:2)", "Kind/c (p.yaml:3)")
    assert http.on_rate_limit is not None and http.on_rate_limit.status == Setting(503, ("Kind/b (p.yaml:2)",))
    headers = http.on_rate_limit.headers
    assert headers is not None and headers.add == (rate_limit.Header("x-a", "1"),) and headers.set == ()
    assert parsed.local.tcp.disabled == Setting(True, ("Kind/d (p.yaml:4)",)) and parsed.local.tcp.origins == (
        "Kind/d (p.yaml:4)",)


def test_a_fault_list_reads_typed_in_envoys_units() -> None:
    merged = Merged({"http": [{"abort": {"httpStatus": 503, "percentage": "12.5"}},
                              {"delay": {"value": "500ms", "percentage": 0.1},
                               "responseBandwidth": {"limit": "2Mbps", "percentage": 100}}]},
                    {"http": _origin("f", 7)}, ())
    faults = fault_injection.parse(ConfReader.of_merged(merged)).http
    assert faults is not None and faults.origins == ("Kind/f (p.yaml:7)",)
    first, second = faults.value
    assert first.abort == fault_injection.Abort(503, fault_injection.Percent(1250, "TEN_THOUSAND"))
    assert second.delay == fault_injection.Delay("0.500s", fault_injection.Percent(10, "TEN_THOUSAND"))
    assert second.response_bandwidth == fault_injection.Bandwidth(2000, fault_injection.Percent(100, "HUNDRED"))


def test_a_permission_reads_its_action_with_its_origin() -> None:
    merged = Merged({"action": "Deny"}, {"action": _origin("t", 9)}, ())
    assert traffic_permission.parse(ConfReader.of_merged(merged)) == traffic_permission.Conf(
        Setting("Deny", ("Kind/t (p.yaml:9)",)))


@pytest.mark.parametrize(("module", "conf", "where"), [
    (rate_limit, {"local": {"http": {"requestRate": {"num": 1, "interval": "10ms"}}}}, "local.http.requestRate.interval"),
    (rate_limit, {"local": {"http": {"onRateLimit": {"headers": {"set": ["x"]}}}}},
     r"local.http.onRateLimit.headers.set.0"),
    (fault_injection, {"http": [{"abort": {"httpStatus": 503, "percentage": "0.00001"}}]}, r"http.0.abort.percentage"),
    (traffic_permission, {"action": "Maybe"}, "action"),
    (traffic_permission, {}, "merged conf at : `action` is required"),
])
def test_the_inbound_kinds_refuse_a_bad_merged_conf_as_a_bug(module: Any, conf: dict[str, Any], where: str) -> None:
    with pytest.raises(MergedConfError, match=where):
        module.parse(ConfReader.of_merged(Merged(conf, {}, ())))


CIRCUIT_BREAKER = Path(__file__).parent / "testdata" / "circuit_breaker.input"


def test_a_merged_circuit_breaker_reads_both_spellings_as_one_typed_conf() -> None:
    # `other`: the Mesh-wide policy in the seed's spelling, then kuma-spelling's connectionLimits and nested detectors.
    merged = _merged_to(CIRCUIT_BREAKER, circuit_breaker.KIND, "other")
    conf = circuit_breaker.parse(ConfReader.of_merged(merged))
    assert conf is not None and conf.pool is not None and conf.outlier_detection is not None
    assert conf.pool.max_connections is not None and conf.pool.max_connections.value == 5
    assert [o.split(" ")[0] for o in conf.pool.max_connections.origins] == ["MeshCircuitBreaker/kuma-spelling"]
    # Both policies wrote a pool: the seed's defaults for what neither set are theirs.
    assert [o.split(" ")[0] for o in conf.pool.written_by] == ["MeshCircuitBreaker/default-circuit-breaker",
                                                               "MeshCircuitBreaker/kuma-spelling"]
    detectors = conf.outlier_detection.detectors
    assert detectors is not None and detectors.total_failures is not None
    assert detectors.total_failures.value == 3  # `totalFailures: {consecutive: 3}`, over the flat 5
    assert detectors.gateway_failures is None and detectors.success_rate is None
    assert conf.outlier_detection.healthy_panic_threshold is not None
    assert conf.outlier_detection.healthy_panic_threshold.value == 0.0


def test_a_circuit_breaker_item_is_checked_in_either_spelling() -> None:
    reader_violations: list[str] = []

    class Recorder(FieldCheck):
        def __init__(self) -> None:
            self.out = []

        def fail(self, path: PathKey, message: str) -> None:
            reader_violations.append(f"{'.'.join(map(str, path))}: {message}")

    default = {"connectionLimits": {"maxConnections": 0},
               "outlierDetection": {"detectors": {"gatewayFailures": {},
                                                  "successRate": {"standardDeviationFactor": "0.0001"}}}}
    assert circuit_breaker.parse(ConfReader(default, ("default",), Recorder())) is not None
    assert reader_violations == [
        "default.connectionLimits.maxConnections: must be between 1 and 4294967295, got 0",
        ("default.outlierDetection.detectors.gatewayFailures: `consecutive` is required (or write "
         "`consecutiveGatewayFailures: N`)"),
        ("default.outlierDetection.detectors.successRate.standardDeviationFactor: must be at least 0.001 (Envoy "
         "counts thousandths)"),
    ]


HEALTH_CHECK = Path(__file__).parent / "testdata" / "health_check.input"


def test_a_merged_health_check_converts_once_with_origins() -> None:
    # web -> backend: hc for everyone, web-override (more specific) for web's http path and timeout.
    merged = _merged_to(HEALTH_CHECK, health_check.KIND, "backend")
    conf = health_check.parse(ConfReader.of_merged(merged))
    assert conf.timeout is not None and conf.timeout.value == "1s"
    assert [o.split(" ")[0] for o in conf.timeout.origins] == ["MeshHealthCheck/web-override"]
    assert conf.http is not None and conf.http.value.path is not None and conf.http.value.path.value == "/ready"
    # The section's origins: both policies set something in `http`.
    assert {o.split(" ")[0] for o in conf.http.origins} == {"MeshHealthCheck/hc", "MeshHealthCheck/web-override"}
    assert conf.http.value.add_headers is not None
    assert conf.http.value.add_headers.value == (health_check.Header("x-probe", "meshplan"),)
    assert conf.tcp is not None and conf.tcp.value.send is not None
    assert conf.tcp.value.send.value == b"hello".hex().upper()  # base64 decoded, then hex, once
    assert conf.healthy_panic_threshold is not None and conf.healthy_panic_threshold.value == 0.0
    assert len(conf.written_by) == 2


def test_a_merged_health_check_may_have_lost_its_checkers_to_nulls() -> None:
    # An item may write `http: null` alone (it names a checker); what it merges to then sets only the panic settings.
    merged = Merged({"failTrafficOnPanic": True}, {}, ())
    conf = health_check.parse(ConfReader.of_merged(merged))
    assert conf.http is None and conf.tcp is None and conf.grpc is None
    assert conf.fail_traffic_on_panic is not None and conf.fail_traffic_on_panic.value is True


# --- MeshAccessLog ------------------------------------------------------------------------------------------------


def test_merged_access_log_backends_read_typed_with_the_lists_origins() -> None:
    merged = Merged({"backends": [{"file": {"path": "/var/log/a.log"}},
                                  {"type": "File", "file": {"path": "/var/log/b.log", "format": {
                                      "type": "Json", "omitEmptyValues": True,
                                      "json": [{"key": "path", "value": "%REQ(:PATH)%"}]}}}]},
                    {"backends": _origin("log", 5)}, ())
    conf = access_log.parse(ConfReader.of_merged(merged))
    assert conf is not None and conf.backends.origins == ("Kind/log (p.yaml:5)",)
    assert conf.backends.value == (
        access_log.FileBackend("/var/log/a.log", None),
        access_log.FileBackend("/var/log/b.log", access_log.Format(
            None, (access_log.JsonField("path", "%REQ(:PATH)%"),), True)),
    )
    off = access_log.parse(ConfReader.of_merged(Merged({"backends": []}, {"backends": _origin("off", 1)}, ())))
    assert off == access_log.Conf(Setting((), ("Kind/off (p.yaml:1)",)))  # a more specific policy turns the log off


@pytest.mark.parametrize(("conf", "where"), [
    ({"backends": [{"file": {"path": "relative.log"}}]}, "backends.0.file.path: must be an absolute file path"),
    ({"backends": [{"file": {"path": "/a", "format": {"plain": "%KUMA_REGION%"}}}]}, "backends.0.file.format.plain"),
    ({}, "merged conf at : `backends` is required"),
])
def test_a_merged_access_log_that_parse_refuses_is_a_bug(conf: dict[str, Any], where: str) -> None:
    with pytest.raises(MergedConfError, match=where):
        access_log.parse(ConfReader.of_merged(Merged(conf, {}, ())))


# --- MeshTCPRoute ---------------------------------------------------------------------------------------------------


def test_a_merged_tcp_route_reads_its_backends_typed_with_the_rules_origins() -> None:
    # A merged conf has no top-level targetRef: a MeshExternalService backend's placement was checked in its item.
    merged = Merged({"rules": [{"default": {"backendRefs": [
        {"kind": "MeshServiceSubset", "name": "db", "tags": {"version": "v1", "kuma.io/service": "db"}, "weight": 90},
        {"kind": "MeshService", "name": "db", "port": 5432, "weight": 0},
        {"kind": "MeshExternalService", "name": "pg"}]}}]},
        {"rules": _origin("route", 3)}, ())
    conf = tcp_route.parse(ConfReader.of_merged(merged))
    assert conf is not None and conf.rules.origins == ("Kind/route (p.yaml:3)",)
    assert conf.rules.value == (tcp_route.Rule((
        Backend("MeshServiceSubset", "db", {"version": "v1"}, None, 90),
        Backend("MeshService", "db", {}, 5432, 0),
        Backend("MeshExternalService", "pg", {}, None, 1),
    )),)
    no_rules = tcp_route.parse(ConfReader.of_merged(Merged({"rules": []}, {"rules": _origin("r", 1)}, ())))
    assert no_rules == tcp_route.Conf(Setting((), ("Kind/r (p.yaml:1)",)))  # the `to` destination itself


@pytest.mark.parametrize(("conf", "where"), [
    ({"rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "db", "weight": 0}]}}]},
     "rules.0.default.backendRefs: every backendRef has weight 0"),
    ({"rules": [{"default": {"backendRefs": [{"kind": "Dataplane", "name": "db"}]}}]},
     "rules.0.default.backendRefs.0.kind"),
    ({"rules": [{"default": {}}]}, "rules.0.default.backendRefs: `backendRefs` is required"),
    ({"rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "a"}]}}, {"default": {}}]},
     "rules: takes at most one rule"),
])
def test_a_merged_tcp_route_that_parse_refuses_is_a_bug(conf: dict[str, Any], where: str) -> None:
    with pytest.raises(MergedConfError, match=where):
        tcp_route.parse(ConfReader.of_merged(Merged(conf, {}, ())))


# --- MeshHTTPRoute: a rule's `default` ---------------------------------------------------------------------------


def test_a_merged_http_route_rule_reads_its_default_typed() -> None:
    default = {"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 0},
                               {"kind": "MeshService", "name": "other"}],
               "filters": [{"type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"set": [{"name": "x-a", "value": "b"}], "remove": ["x-c"]}},
                           {"type": "URLRewrite",
                            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                           {"type": "RequestMirror",
                            "requestMirror": {"backendRef": {"kind": "MeshService", "name": "shadow"},
                                              "percentage": "12.5"}}]}
    conf = http_route_api.parse_default(ConfReader.of_merged(Merged(default, {}, ())), True)
    assert conf.backend_refs == (Backend("MeshServiceSubset", "backend", {"version": "v2"}, None, 0),
                                 Backend("MeshService", "other"))
    assert conf.filters.request_headers == http_route_api.HeaderModifier(
        (Header("x-a", "b"),), (), ("x-c",))
    assert conf.filters.rewrite == http_route_api.Rewrite(
        None, http_route_api.PathRewrite("ReplacePrefixMatch", "/v2"))
    assert conf.filters.mirrors == (http_route_api.Mirror(Backend("MeshService", "shadow"), Decimal("12.5")),)
    assert conf.filters.redirect is None and conf.filters.response_headers is None


def test_a_merged_http_route_rule_may_redirect_beside_backend_refs() -> None:
    # One item's redirect beside its backendRefs is refused; two items with equal matches may merge to both: the
    # redirect wins in render. A wrong field in the merged conf is a bug.
    default = {"backendRefs": [{"kind": "MeshService", "name": "other"}],
               "filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}]}
    conf = http_route_api.parse_default(ConfReader.of_merged(Merged(default, {}, ())), False)
    assert conf.filters.redirect == http_route_api.Redirect(None, None, None, None, 301)
    with pytest.raises(MergedConfError, match="filters.0.requestRedirect.statusCode"):
        http_route_api.parse_default(ConfReader.of_merged(Merged(
            {"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 200}}]}, {}, ())), False)
