"""MeshFaultInjection: validation, fault filter rendering (per client, on sidecars and on the egress per external
service), `envoy --mode validate`, and real requests: the named client gets the fault, the others do not."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Loopback

from meshplan.model import ProxyConfig
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    Service,
    assert_violations_start_with,
    running_mesh,
    stats,
    stats_by_suffix,
    table_cases,
    the_listener,
    violations,
    write_mesh,
)
from tests.policy_render import envoy_validates

CALLS = ("backend", "reports", "ledger", "mes:httpbin", "mes:quiet")
SERVICES = [
    Service("web", calls=CALLS),
    Service("admin", calls=CALLS),
    Service("backend"),
    Service("reports"),
    Service("ledger", protocol="tcp"),
]
EXTERNALS = {"httpbin": "http", "quiet": "http"}
DELAY = 0.3  # seconds, the delay on reports

POLICIES = """\
    type: MeshFaultInjection
    name: backend
    mesh: default
    spec:
      targetRef:
        kind: MeshService
        name: backend
      from:
        - targetRef:
            kind: MeshService
            name: admin
          default:
            http:
              - abort:
                  httpStatus: 418
                  percentage: 100
    ---
    type: MeshFaultInjection
    name: reports
    mesh: default
    spec:
      targetRef:
        kind: MeshService
        name: reports
      from:
        - targetRef:
            kind: Mesh
          default:
            http:
              - delay:
                  value: 300ms
                  percentage: 100
    ---
    type: MeshFaultInjection
    name: ledger
    mesh: default
    spec:
      targetRef:
        kind: MeshService
        name: ledger
      from:
        - targetRef:
            kind: Mesh
          default:
            http:
              - abort:
                  httpStatus: 500
                  percentage: 100
    ---
    type: MeshFaultInjection
    name: httpbin
    mesh: default
    spec:
      targetRef:
        kind: MeshExternalService
        name: httpbin
        proxyType: ["Egress"]
      from:
        - targetRef:
            kind: MeshService
            name: web
          default:
            http:
              - abort:
                  httpStatus: 503
                  percentage: 100
    """


def demo_mesh(root: Path, addresses: Addresses, policies: str = POLICIES) -> MeshFiles:
    return write_mesh(root, addresses, SERVICES, externals=EXTERNALS, policies=policies)


def policy(body: str, name: str = "p") -> str:
    return f"type: MeshFaultInjection\nmesh: default\nname: {name}\nspec:\n" + body


def proxies_of(root: Path, policies: str = POLICIES) -> dict[str, ProxyConfig]:
    return demo_mesh(root, FixedAddresses(first_port=20001), policies).proxies()


def http_filters(proxy: ProxyConfig) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = the_listener(proxy)["filter_chains"][0]["filters"][-1]["typed_config"]["http_filters"]
    return filters


# --- validation -------------------------------------------------------------------------------------------------

HEAD = "  targetRef:\n    kind: MeshService\n    name: backend\n  from:\n    - targetRef:\n        kind: Mesh\n      default:\n"


def faults(text: str) -> str:
    return HEAD + "        http:\n" + "".join(f"          {line}\n" for line in text.splitlines())


GOOD = {
    "every fault": faults("- abort: {httpStatus: 503, percentage: 50}\n  delay: {value: 1s, percentage: '12.5'}\n"
                          "  responseBandwidth: {limit: 10kbps, percentage: 0.0001}\n- delay: {value: 250ms, percentage: 0}\n"),
    "bandwidth units": faults("- responseBandwidth: {limit: 2 Mbps, percentage: 100}\n"
                              "- responseBandwidth: {limit: 1Gbps, percentage: 1}"),
    "no faults": HEAD.replace("      default:\n", "      default: {}\n"),
}

BAD: list[tuple[str, str, list[str]]] = [
    ("abort status", faults("- abort: {httpStatus: 100, percentage: 100}"),
     ["policies.yaml:13: spec.from[0].default.http[0].abort.httpStatus: must be an HTTP status between 200 and 599, got 100"]),
    ("percentage missing", faults("- abort: {httpStatus: 500}"),
     ["policies.yaml:13: spec.from[0].default.http[0].abort: `percentage` is required"]),
    ("percentage above 100", faults("- delay: {value: 1s, percentage: 101}"),
     ["policies.yaml:13: spec.from[0].default.http[0].delay.percentage: must be between 0 and 100, got 101"]),
    ("percentage not a number", faults("- delay: {value: 1s, percentage: half}"),
     ["policies.yaml:13: spec.from[0].default.http[0].delay.percentage: must be a number between 0 and 100, got 'half'"]),
    ("percentage too fine", faults("- delay: {value: 1s, percentage: '0.00001'}"),
     ["policies.yaml:13: spec.from[0].default.http[0].delay.percentage: at most 4 decimals "
      "(Envoy counts in millionths), got '0.00001'"]),
    ("delay of zero", faults("- delay: {value: 0s, percentage: 10}"),
     ["policies.yaml:13: spec.from[0].default.http[0].delay.value: must be greater than 0 "
      "(Envoy refuses a delay of 0), got '0s'"]),
    ("delay not a duration", faults("- delay: {value: 1 second, percentage: 10}"),
     ["policies.yaml:13: spec.from[0].default.http[0].delay.value: must be a duration like 500ms or 5s, got '1 second'"]),
    ("bandwidth unit", faults("- responseBandwidth: {limit: 10mbps, percentage: 10}"),
     ["policies.yaml:13: spec.from[0].default.http[0].responseBandwidth.limit: must be a whole number with a unit kbps, "
      "Mbps or Gbps, got '10mbps'"]),
    ("bandwidth zero", faults("- responseBandwidth: {limit: 0kbps, percentage: 10}"),
     ["policies.yaml:13: spec.from[0].default.http[0].responseBandwidth.limit: must be at least 1kbps, got '0kbps'"]),
    ("empty fault", faults("- {}"),
     ["policies.yaml:13: spec.from[0].default.http[0]: needs at least one of `abort`, `delay`, `responseBandwidth`"]),
    ("http not a list", HEAD + "        http:\n          abort: {httpStatus: 500, percentage: 1}\n",
     ["policies.yaml:12: spec.from[0].default.http: must be a list, got a mapping"]),
    ("every violation at once", faults("- abort: {httpStatus: '503', percentage: 100, grpcStatus: 14}\n"
                                       "- delay: {percentage: -1}\n  reset: true"),
     ["policies.yaml:13: spec.from[0].default.http[0].abort.grpcStatus: unknown field (expected one of: httpStatus, percentage)",
      "policies.yaml:13: spec.from[0].default.http[0].abort.httpStatus: must be an integer, got a string",
      "policies.yaml:14: spec.from[0].default.http[1].delay: `value` is required",
      "policies.yaml:14: spec.from[0].default.http[1].delay.percentage: must be between 0 and 100, got -1",
      "policies.yaml:15: spec.from[0].default.http[1].reset: unknown field (expected one of: abort, delay, responseBandwidth)"]),
]


@pytest.mark.parametrize("body", GOOD.values(), ids=GOOD.keys())
def test_good_specs_pass(tmp_path: Path, body: str) -> None:
    demo_mesh(tmp_path, FixedAddresses(first_port=20001), policy(body))
    assert violations(tmp_path) == []


@pytest.mark.parametrize(("body", "expected"), table_cases(BAD))
def test_bad_specs_report_each_violation_with_file_line_and_path(tmp_path: Path, body: str, expected: list[str]) -> None:
    demo_mesh(tmp_path, FixedAddresses(first_port=20001), policy(body))
    assert_violations_start_with(violations(tmp_path), expected)


# --- render -----------------------------------------------------------------------------------------------------


def test_every_proxy_passes_envoy_validate(tmp_path: Path) -> None:
    more = textwrap.dedent(POLICIES) + "---\n" + policy(GOOD["every fault"], "more")
    desired = demo_mesh(tmp_path / "desired", FixedAddresses(first_port=20001), more).load()
    assert envoy_validates(desired, tmp_path / "state") == dict.fromkeys(
        ["admin", "backend", "ledger", "reports", "web", "egress"]
    )


def test_each_fault_is_a_filter_with_exact_percentages(tmp_path: Path) -> None:
    filters = http_filters(proxies_of(tmp_path, policy(GOOD["every fault"]))["backend"])
    assert [f["name"] for f in filters] == ["envoy.filters.http.fault:Mesh:0", "envoy.filters.http.fault:Mesh:1",
                                            "envoy.filters.http.router"]
    assert filters[0]["typed_config"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "abort": {"http_status": 503, "percentage": {"numerator": 50, "denominator": "HUNDRED"}},
        "delay": {"fixed_delay": "1s", "percentage": {"numerator": 1250, "denominator": "TEN_THOUSAND"}},
        "response_rate_limit": {"fixed_limit": {"limit_kbps": 10}, "percentage": {"numerator": 1, "denominator": "MILLION"}},
    }
    assert filters[1]["typed_config"]["delay"] == {
        "fixed_delay": "0.250s",
        "percentage": {"numerator": 0, "denominator": "HUNDRED"},
    }


def test_a_fault_for_one_client_is_skipped_for_the_others(tmp_path: Path) -> None:
    (fault, _router) = http_filters(proxies_of(tmp_path)["backend"])
    assert fault["name"] == "envoy.filters.http.fault:MeshService:admin:0"
    wrapper = fault["typed_config"]
    assert wrapper["@type"] == "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
    assert wrapper["extension_config"]["typed_config"]["abort"]["http_status"] == 418
    (matcher,) = wrapper["xds_matcher"]["matcher_list"]["matchers"]
    single = matcher["predicate"]["not_matcher"]["single_predicate"]
    assert single["input"]["name"] == "envoy.matching.inputs.uri_san"
    assert single["value_match"]["safe_regex"]["regex"] == "(.*,)?spiffe://default/admin(,.*)?"


def test_a_tcp_inbound_gets_no_fault(tmp_path: Path) -> None:
    ledger = proxies_of(tmp_path)["ledger"]
    assert "envoy.filters.http.fault" not in str(ledger.listeners)


def test_most_specific_list_replaces_the_broader_one(tmp_path: Path) -> None:
    body = faults("- abort: {httpStatus: 500, percentage: 1}\n- delay: {value: 1s, percentage: 1}") + (
        "    - targetRef:\n        kind: MeshService\n        name: web\n      default:\n"
        "        http:\n          - delay: {value: 2s, percentage: 100}\n")
    filters = http_filters(proxies_of(tmp_path, policy(body))["backend"])
    names = [f["name"] for f in filters]
    assert names == ["envoy.filters.http.fault:MeshService:web:0", "envoy.filters.http.fault:Mesh:0",
                     "envoy.filters.http.fault:Mesh:1", "envoy.filters.http.router"]
    assert filters[0]["typed_config"]["extension_config"]["typed_config"]["delay"]["fixed_delay"] == "2s"


# --- real traffic -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, loopback: Loopback) -> Iterator[MeshFiles]:
    yield from running_mesh(tmp_path_factory.mktemp("fault_injection"), lambda desired: demo_mesh(desired, loopback))


def fault_stats(http: httpx.Client, admin: str) -> dict[str, int]:
    return stats_by_suffix(http, admin, r"^http\..*\.fault\.(aborts|delays)_injected$")


@pytest.mark.envoy
def test_an_abort_reaches_the_named_client_only(running: MeshFiles, http: httpx.Client) -> None:
    before = fault_stats(http, running.admin["backend"])
    aborted = [http.get(running.url("admin", "backend", "/")) for _ in range(3)]
    assert [(a.status_code, a.text) for a in aborted] == [(418, "fault filter abort")] * 3
    served = http.get(running.url("web", "backend", "/hello"))
    assert (served.status_code, served.json()["service"], served.json()["path"]) == (200, "backend", "/hello")
    after = fault_stats(http, running.admin["backend"])
    assert after["aborts_injected"] - before["aborts_injected"] == 3


@pytest.mark.envoy
def test_a_delay_makes_requests_take_at_least_the_delay(running: MeshFiles, http: httpx.Client) -> None:
    http.get(running.url("web", "backend", "/"))  # a warm connection, so the time below is the delay's
    for client in ("web", "admin"):
        began = time.monotonic()
        answer = http.get(running.url(client, "reports", "/"))
        took = time.monotonic() - began
        assert answer.status_code == 200 and answer.json()["service"] == "reports"
        assert took >= DELAY, f"{client}: {took:.3f}s"
    before = fault_stats(http, running.admin["backend"])["delays_injected"]
    http.get(running.url("web", "backend", "/"))
    assert fault_stats(http, running.admin["backend"])["delays_injected"] == before  # no delay where none is asked
    assert fault_stats(http, running.admin["reports"])["delays_injected"] >= 2


@pytest.mark.envoy
def test_on_the_egress_for_one_external_service(running: MeshFiles, http: httpx.Client) -> None:
    aborted = http.get(running.url("web", "mes:httpbin", "/anything"))
    assert (aborted.status_code, aborted.text) == (503, "fault filter abort")
    served = http.get(running.url("admin", "mes:httpbin", "/anything"))
    assert (served.status_code, served.json()["service"]) == (200, "httpbin")
    other = http.get(running.url("web", "mes:quiet", "/anything"))
    assert (other.status_code, other.json()["service"]) == (200, "quiet")
    assert stats(http, running.admin["egress"], r"^http\.mes_default_httpbin\.fault\.aborts_injected$") == {
        "http.mes_default_httpbin.fault.aborts_injected": 1
    }
