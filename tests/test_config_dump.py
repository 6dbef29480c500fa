from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from meshplan.compare.canonical import canonical
from meshplan.envoy.config_dump import NotAConfigDump, managed_resources

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"


def config_dump() -> dict[str, Any]:
    cluster = {"@type": CLUSTER, "name": "backend"}

    def listener(name: str) -> dict[str, Any]:
        return {"@type": LISTENER, "name": name}

    return {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
         "bootstrap": {"node": {"id": "web-1", "extensions": ["..."]}}},
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
         "static_clusters": [{"cluster": {"@type": CLUSTER, "name": "admin"}}],
         "dynamic_active_clusters": [{"version_info": "3", "cluster": cluster, "last_updated": "2026-01-01T00:00:00Z"}],
         "dynamic_warming_clusters": [{"version_info": "4", "cluster": cluster | {"name": "new"}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
         "static_listeners": [{"listener": listener("static")}],
         "dynamic_listeners": [
             {"name": "a", "active_state": {"version_info": "1", "listener": listener("a")}},
             {"name": "b", "active_state": {"listener": listener("b")}, "warming_state": {"listener": listener("b")},
              "error_state": {"failed_configuration": listener("b"), "details": "cannot bind"}},
             {"error_state": {"failed_configuration": listener("b"), "details": "cannot bind"}},
             {"name": "c", "warming_state": {"listener": listener("c")}},
             {"name": "d", "draining_state": {"listener": listener("d")}},
         ]},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "static_route_configs": []},
    ]}


def test_managed_resources_are_the_dynamic_ones() -> None:
    found = managed_resources(config_dump())
    assert [c["name"] for c in found.clusters] == ["backend"]
    assert [listener["name"] for listener in found.listeners] == ["a", "b"]
    assert found.warming_clusters == ("new",)
    assert found.warming_listeners == ("b", "c")
    assert [(e.name, e.details) for e in found.errored_listeners] == [("b", "cannot bind")]
    assert found.node_id == "web-1"


def test_an_empty_config_dump_has_nothing_managed() -> None:
    found = managed_resources({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"}]})
    assert (found.clusters, found.listeners, found.node_id) == ((), (), None)


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"configs": "x"},
        {"configs": [1]},
        {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                      "dynamic_active_clusters": {"x": 1}}]},
    ],
)
def test_what_is_not_a_config_dump_is_an_error(document: dict[str, Any]) -> None:
    with pytest.raises(NotAConfigDump, match="not an Envoy config dump"):
        managed_resources(document)


def test_the_live_dump_is_not_changed_by_reading_it() -> None:
    document = config_dump()
    before = copy.deepcopy(document)
    for resource in managed_resources(document).clusters:
        canonical(resource)
    assert json.dumps(document, sort_keys=True) == json.dumps(before, sort_keys=True)
