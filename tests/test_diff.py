from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from meshplan.compare.diff import (
    Action,
    FieldChange,
    ResourceChange,
    diff_fields,
    diff_resources,
)

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
HCM = "envoy.filters.network.http_connection_manager"
HCM_PATH = f'filter_chains[0].filters["{HCM}"].typed_config'


def cluster(name: str = "backend", **fields: Any) -> dict[str, Any]:
    return {"@type": CLUSTER, "name": name, "connect_timeout": "5s", **fields}


def http_filter(name: str, type_name: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": f"type.googleapis.com/envoy.extensions.filters.http.{type_name}",
                                           **config}}


ROUTER = http_filter("envoy.filters.http.router", "router.v3.Router")
RATE_LIMIT = http_filter("envoy.filters.http.local_ratelimit", "local_ratelimit.v3.LocalRateLimit", stat_prefix="rl")
FAULT = http_filter("envoy.filters.http.fault", "fault.v3.HTTPFault", abort={"http_status": 503})


def listener(http_filters: list[dict[str, Any]] | None = None, **chain: Any) -> dict[str, Any]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "out",
        "route_config": {"virtual_hosts": [
            {"name": "backend", "domains": ["*"],
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "15s"}}]},
            {"name": "web", "domains": ["web"],
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "web"}}]},
        ]},
        "http_filters": http_filters if http_filters is not None else [RATE_LIMIT, ROUTER],
    }
    return {"@type": LISTENER, "name": "outbound:10.0.0.1:80",
            "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}], **chain}]}


def only_update(desired: dict[str, Any], live: dict[str, Any], kind: Any = "cluster") -> tuple[FieldChange, ...]:
    [change] = diff_resources([desired], [live], kind)
    assert change.action is Action.UPDATE
    return change.fields


def test_same_resources_give_no_changes() -> None:
    assert diff_resources([cluster()], [cluster(connect_timeout="5.000s")], "cluster") == []
    assert diff_resources([], [], "listener") == []


def test_create_update_delete_in_name_order() -> None:
    changes = diff_resources([cluster("b"), cluster("c", connect_timeout="1s")],
                             [cluster("a"), cluster("c")], "cluster")
    assert [(c.name, c.action) for c in changes] == [("a", Action.DELETE), ("b", Action.CREATE), ("c", Action.UPDATE)]
    deleted, created, updated = changes
    assert (deleted.before, deleted.after) == ({"@type": CLUSTER, "name": "a", "connect_timeout": "5s"}, None)
    assert (created.before, created.after) == (None, {"@type": CLUSTER, "name": "b", "connect_timeout": "5s"})
    assert updated == ResourceChange("cluster", "c", Action.UPDATE, cluster("c"), cluster("c", connect_timeout="1s"),
                                     (FieldChange("connect_timeout", "5s", "1s"),))
    assert Action.CREATE.value == "+" and Action.UPDATE.value == "~" and Action.DELETE.value == "-"


def test_before_is_live_and_after_is_desired() -> None:
    assert only_update(cluster(connect_timeout="2s"), cluster()) == (FieldChange("connect_timeout", "5s", "2s"),)


def test_a_nested_field_path() -> None:
    live = cluster(circuit_breakers={"thresholds": [{"max_connections": 5, "max_requests": 9}]})
    desired = cluster(circuit_breakers={"thresholds": [{"max_connections": 7, "max_requests": 9}]})
    assert only_update(desired, live) == (FieldChange("circuit_breakers.thresholds[0].max_connections", 5, 7),)


def test_a_scalar_at_its_default_shows_the_default() -> None:
    assert only_update(cluster(lb_policy="LEAST_REQUEST"), cluster()) == (
        FieldChange("lb_policy", "ROUND_ROBIN", "LEAST_REQUEST"),)
    assert only_update(cluster(), cluster(respect_dns_ttl=True)) == (FieldChange("respect_dns_ttl", True, False),)
    assert only_update(cluster(per_connection_buffer_limit_bytes=1), cluster()) == (
        FieldChange("per_connection_buffer_limit_bytes", None, 1),)  # a wrapper: not set is not 0


def test_a_field_set_or_unset_is_none_on_the_other_side() -> None:
    breakers = {"thresholds": [{"max_connections": 5}]}
    assert only_update(cluster(circuit_breakers=breakers), cluster()) == (
        FieldChange("circuit_breakers", None, breakers),)
    assert only_update(cluster(), cluster(circuit_breakers=breakers)) == (
        FieldChange("circuit_breakers", breakers, None),)


def test_a_map_entry_is_addressed_by_its_key() -> None:
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

    def options(config: dict[str, Any]) -> dict[str, Any]:
        return {key: {"@type": f"type.googleapis.com/{key}", "explicit_http_config": config}}

    live = cluster(typed_extension_protocol_options=options({"http_protocol_options": {}}))
    desired = cluster(typed_extension_protocol_options=options({"http2_protocol_options": {}}))
    assert only_update(desired, live) == (
        FieldChange(f'typed_extension_protocol_options["{key}"].explicit_http_config.http2_protocol_options',
                    None, {}),
        FieldChange(f'typed_extension_protocol_options["{key}"].explicit_http_config.http_protocol_options',
                    {}, None),
    )


def test_an_inserted_http_filter_is_one_change_not_every_later_filter() -> None:
    fields = only_update(listener([RATE_LIMIT, FAULT, ROUTER]), listener(), "listener")
    assert fields == (
        FieldChange(f'{HCM_PATH}.http_filters["envoy.filters.http.fault"]', None,
                    {"name": "envoy.filters.http.fault", "typed_config": FAULT["typed_config"]}),
    )


def test_a_removed_http_filter() -> None:
    fields = only_update(listener([ROUTER]), listener(), "listener")
    assert [(f.path, f.before is not None, f.after) for f in fields] == [
        (f'{HCM_PATH}.http_filters["envoy.filters.http.local_ratelimit"]', True, None)]


def test_reordered_http_filters_compare_by_position() -> None:
    # the order of HTTP filters matters; a move shows as removed from its old place, added at its new one
    fields = only_update(listener([ROUTER, RATE_LIMIT]), listener(), "listener")
    assert fields == (
        FieldChange(f"{HCM_PATH}.http_filters[0]", None, ROUTER),
        FieldChange(f"{HCM_PATH}.http_filters[1]", ROUTER, None),
    )


def test_an_endpoint_inserted_in_an_unnamed_list_is_one_change() -> None:
    def endpoints(*ports: int) -> dict[str, Any]:
        return {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": p}}}} for p in ports]}]}

    def lb_endpoint(port: int) -> dict[str, Any]:
        return {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": port}}}}

    path = "load_assignment.endpoints[0].lb_endpoints"
    live = cluster(load_assignment=endpoints(1, 2, 3))
    assert only_update(cluster(load_assignment=endpoints(1, 9, 2, 3)), live) == (
        FieldChange(f"{path}[1]", None, lb_endpoint(9)),)
    assert only_update(cluster(load_assignment=endpoints(1, 3)), live) == (
        FieldChange(f"{path}[1]", lb_endpoint(2), None),)
    # a changed element is still compared field by field
    assert only_update(cluster(load_assignment=endpoints(1, 7, 3)), live) == (
        FieldChange(f"{path}[1].endpoint.address.socket_address.port_value", 2, 7),)


def test_a_named_virtual_host_and_a_route_by_position() -> None:
    desired = listener()
    desired["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0][
        "route"]["timeout"] = "2s"
    assert only_update(desired, listener(), "listener") == (
        FieldChange(f'{HCM_PATH}.route_config.virtual_hosts["backend"].routes[0].route.timeout', "15s", "2s"),)


def test_filter_chains_with_names_are_addressed_by_name() -> None:
    def chain(name: str, host: str) -> dict[str, Any]:
        return {"name": name, "filter_chain_match": {"server_names": [host]}, "filters": [
            {"name": "tcp", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": name, "cluster": name}}]}

    base = {"@type": LISTENER, "name": "egress"}
    live = base | {"filter_chains": [chain("a", "a.example.com"), chain("c", "c.example.com")]}
    desired = base | {"filter_chains": [chain("a", "a.example.com"), chain("b", "b.example.com"),
                                        chain("c", "c2.example.com")]}
    fields = only_update(desired, live, "listener")
    assert [(f.path, f.before, f.after if not isinstance(f.after, dict) else "{...}") for f in fields] == [
        ('filter_chains["b"]', None, "{...}"),
        ('filter_chains["c"].filter_chain_match.server_names[0]', "c.example.com", "c2.example.com"),
    ]


def test_an_added_list_comes_back_as_a_list() -> None:
    tls_inspector = {"name": "tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}
    desired = listener() | {"listener_filters": [tls_inspector]}
    assert only_update(desired, listener(), "listener") == (FieldChange("listener_filters", None, [tls_inspector]),)


def test_an_unnamed_list_item_added() -> None:
    def endpoints(*ports: int) -> dict[str, Any]:
        return {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": p}}}} for p in ports]}]}

    fields = only_update(cluster(load_assignment=endpoints(80, 81)), cluster(load_assignment=endpoints(80)))
    assert fields == (FieldChange(
        "load_assignment.endpoints[0].lb_endpoints[1]", None,
        {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 81}}}}),)


def test_a_typed_config_of_another_type() -> None:
    def socket(type_name: str) -> dict[str, Any]:
        return {"name": "t", "typed_config": {
            "@type": f"type.googleapis.com/envoy.extensions.transport_sockets.{type_name}"}}

    fields = only_update(cluster(transport_socket=socket("tls.v3.UpstreamTlsContext") | {}),
                         cluster(transport_socket=socket("raw_buffer.v3.RawBuffer")))
    assert fields == (FieldChange(
        "transport_socket.typed_config.@type",
        "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),)


def test_diff_fields_leaves_its_inputs_alone() -> None:
    desired, live = listener([RATE_LIMIT, FAULT, ROUTER]), listener()
    copies = copy.deepcopy((desired, live))
    diff_fields(live, desired)
    assert (desired, live) == copies


def test_duplicate_names_are_an_error() -> None:
    with pytest.raises(ValueError, match="two desired resources are named 'a'"):
        diff_resources([cluster("a"), cluster("a")], [], "cluster")


_SWAP_SCRIPT = """
import json
from meshplan.compare.diff import diff_fields
L = "type.googleapis.com/envoy.config.listener.v3.Listener"
def listener(filters): return {"@type": L, "name": "l", "filter_chains": [{"filters": filters}]}
tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "x", "cluster": "c"}}
hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "stat_prefix": "x", "route_config": {"name": "r"}}}
changes = diff_fields(listener([hcm]), listener([tcp])) + diff_fields(listener([tcp]), listener([hcm]))
print(json.dumps([[c.path, c.before is None, c.after is None] for c in changes]))
"""


def test_changes_at_one_place_come_in_one_order_whatever_the_hash_seed() -> None:
    """A filter swapped for another at one position is a removal and an addition with one sort key; deepdiff lists
    them in set order, which follows PYTHONHASHSEED. The plan must not change from run to run."""
    outputs = {
        subprocess.run([sys.executable, "-c", _SWAP_SCRIPT], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)}, timeout=60).stdout
        for seed in range(6)
    }
    assert len(outputs) == 1, outputs
    (only,) = outputs
    assert len(json.loads(only)) == 4
