"""The nested diff of one resource (present/nested.py): blocks named as Envoy names them, `+ ~ -`, what did not
change counted, each cause a comment line above what it caused, and nothing wider than asked but a single token."""

from __future__ import annotations

from meshplan.plan.model import FieldPlan
from meshplan.present.human import origins_parts
from meshplan.present.nested import nested_diff

HCM = 'filter_chains[0].filters["envoy.filters.network.http_connection_manager"].typed_config'
TIMEOUT = "MeshTimeout/t (policies/timeout.yaml:12)"
ROUTE_RULES = "MeshHTTPRoute/backend-v2 (policies/http-route.yaml:15)"
LISTENER = {
    "name": "outbound:backend",
    "filter_chains": [{"filter_chain_match": {"destination_port": 8080}, "filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {"@type": "hcm", "stat_prefix": "out", "route_config": {"virtual_hosts": [{
            "name": "backend", "domains": ["*"], "routes": [
                {"match": {"prefix": "/v2", "headers": [{"name": "x-canary"}]},
                 "route": {"cluster": "backend-v2", "timeout": "15s", "idle_timeout": "60s"}},
                {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "15s"}},
            ]}]}}}]}],
}
VHOST = f'{HCM}.route_config.virtual_hosts["backend"]'


def _text(fields: list[FieldPlan], resource: dict[str, object] | None = LISTENER, width: int = 80) -> str:
    lines = nested_diff(fields, resource, header='resource "listener" "outbound:backend"', width=width, indent=2,
                        origins=origins_parts)
    return "\n".join(text for text, _ in lines)


def test_list_elements_are_named_by_name_or_by_match_never_by_position() -> None:
    text = _text([FieldPlan(f"{VHOST}.routes[0].route.timeout", "15s", "5s", (TIMEOUT,)),
                  FieldPlan(f"{VHOST}.routes[1].route.timeout", "15s", "5s", (TIMEOUT,))])
    assert '~ filter_chain "destination_port=8080" {' in text
    assert '~ filter "envoy.filters.network.http_connection_manager" {' in text
    assert '~ virtual_host "backend" {' in text
    assert '~ route "prefix /v2, header x-canary" {' in text
    assert '~ route "default" {' in text
    assert "[0]" not in text and "[1]" not in text and "typed_config" not in text
    assert '~ timeout = "15s" -> "5s"' in text


def test_unchanged_parts_of_a_changed_block_are_counted() -> None:
    text = _text([FieldPlan(f"{VHOST}.routes[0].route.timeout", "15s", "5s", (TIMEOUT,))])
    lines = text.splitlines()
    at = lines.index('                              ~ timeout = "15s" -> "5s"')
    assert lines[at + 1] == "                                # (2 unchanged attributes hidden)"  # cluster, idle_timeout
    assert "# (1 unchanged attribute hidden)" in text  # the virtual host's domains
    assert "# (1 unchanged block hidden)" in text  # the other route


def test_a_cause_is_a_comment_above_what_it_caused_once_for_a_block() -> None:
    text = _text([FieldPlan(f"{VHOST}.routes[0].route.timeout", "15s", "5s", (TIMEOUT,)),
                  FieldPlan(f"{VHOST}.routes[0].route.idle_timeout", "60s", "30s", (TIMEOUT,)),
                  FieldPlan(f"{VHOST}.routes[1].route.cluster", "backend", "backend-v1", (ROUTE_RULES,))])
    lines = text.splitlines()
    route_v2 = next(i for i, line in enumerate(lines) if 'route "prefix /v2' in line)
    assert lines[route_v2 - 1].strip() == f"# {TIMEOUT}"  # one comment for both of its changes
    route_default = next(i for i, line in enumerate(lines) if '~ route "default" {' in line)
    assert lines[route_default - 1].strip() == f"# {ROUTE_RULES}"
    assert text.count(ROUTE_RULES) == 1 and text.count(TIMEOUT) == 1
    assert not lines[0].lstrip().startswith("#")  # two causes: neither is said of the whole resource


def test_a_block_added_whole_is_shown_whole_and_fits_80_columns() -> None:
    long_name = "spiffe://default/" + "a-service-with-a-very-long-name-" * 3
    rule = {"Deny Mesh": {"permissions": [{"any": True}],
                          "principals": [{"authenticated": {"principal_name": {"exact": long_name}}}]}}
    path = f'{HCM}.http_filters["envoy.filters.http.rbac"].typed_config.rules.policies'
    text = _text([FieldPlan(path, None, rule, ("MeshTrafficPermission/deny (policies/tp.yaml:9)",))], None)
    assert '+ policy "Deny Mesh" {' in text
    assert "+ any = true" in text
    assert f'"{long_name}"' in text  # whole, on a line of its own
    for line in text.splitlines():
        assert len(line) <= 80 or line.strip().lstrip("+ ") == f'"{long_name}"', line


def test_a_removed_element_is_named_by_what_it_was() -> None:
    removed = {"match": {"path": "/old"}, "route": {"cluster": "legacy"}}
    text = _text([FieldPlan(f"{VHOST}.routes[2]", removed, None, ())])
    assert '- route "path /old" {' in text
    assert '- cluster = "legacy"' in text


def test_a_long_value_change_shows_both_values_whole() -> None:
    before = "gateway-error,connect-failure,refused-stream"
    after = "gateway-error,connect-failure,refused-stream,retriable-status-codes,reset"
    text = _text([FieldPlan(f"{VHOST}.routes[0].route.retry_policy.retry_on", before, after, ())])
    assert f'- "{before}"' in text and f'+ "{after}"' in text
    assert "~ retry_on =" in text
