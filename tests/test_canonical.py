from __future__ import annotations

from typing import Any

import pytest

from meshplan.compare.canonical import (
    EXTENSION_MODULES,
    REDACTED,
    CanonicalError,
    canonical,
    fingerprint,
)

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


def tls_socket(private_key: str) -> dict[str, Any]:
    """The cluster's upstream TLS socket, whose private key file is named as given."""
    certificate = {"certificate_chain": {"filename": "/state/web.pem"}, "private_key": {"filename": private_key}}
    context = {"@type": TLS + "UpstreamTlsContext", "common_tls_context": {"tls_certificates": [certificate]}}
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


BACKEND = {"@type": CLUSTER, "name": "backend", "type": "STATIC"}  # what makes it the same cluster


def rendered_cluster() -> dict[str, Any]:
    return {
        **BACKEND,
        "connect_timeout": "0.25s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", "max_connections": 5, "track_remaining": False}]},
        "ring_hash_lb_config": {"minimum_ring_size": 1024},
        "transport_socket": tls_socket("/state/web.key"),
    }


def as_envoy_shows_it() -> dict[str, Any]:
    """The same cluster as Envoy's /config_dump writes it back (measured with Envoy 1.40)."""
    return {
        **BACKEND,
        "connect_timeout": "0.250s",
        "circuit_breakers": {"thresholds": [{"max_connections": 5}]},
        "ring_hash_lb_config": {"minimum_ring_size": "1024"},
        "transport_socket": tls_socket("[redacted]"),  # as Envoy writes it
    }


def test_a_rendered_resource_and_envoys_rendition_of_it_are_equal() -> None:
    assert rendered_cluster() != as_envoy_shows_it()
    assert canonical(rendered_cluster()) == canonical(as_envoy_shows_it())


def test_the_canonical_form() -> None:
    form = canonical(rendered_cluster())
    assert form["@type"] == CLUSTER
    assert form["connect_timeout"] == "0.250s"
    assert "lb_policy" not in form  # ROUND_ROBIN is the default
    assert form["circuit_breakers"] == {"thresholds": [{"max_connections": 5}]}
    assert form["ring_hash_lb_config"] == {"minimum_ring_size": "1024"}  # 64-bit integers are strings
    certificate = form["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]
    assert certificate == {"certificate_chain": {"filename": "/state/web.pem"}, "private_key": {"filename": REDACTED}}


def test_integer_enums_become_names_and_json_names_become_proto_names() -> None:
    spelled = {"@type": CLUSTER, "name": "c", "lbPolicy": 1, "connectTimeout": "2s"}
    assert canonical(spelled) == {"@type": CLUSTER, "name": "c", "lb_policy": "LEAST_REQUEST", "connect_timeout": "2s"}


def test_canonical_is_idempotent_and_returns_a_fresh_dict() -> None:
    form = canonical(rendered_cluster())
    assert canonical(form) == form
    form["name"] = "changed"
    assert canonical(rendered_cluster())["name"] == "backend"


def test_sensitive_fields_are_redacted_the_way_envoy_does() -> None:
    secret = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "s",
        "tls_certificate": {
            "certificate_chain": {"inline_string": "CERT"},
            "private_key": {"inline_bytes": "a2V5"},
            "password": {"inline_string": "hunter2"},
        },
    }
    form = canonical(secret)["tls_certificate"]
    assert form["certificate_chain"] == {"inline_string": "CERT"}  # a certificate is not secret
    assert form["private_key"] == {"inline_bytes": "W3JlZGFjdGVkXQ=="}  # base64 of "[redacted]"
    assert form["password"] == {"inline_string": REDACTED}


def test_every_extension_we_render_resolves() -> None:
    def typed(name: str, type_url: str, **config: Any) -> dict[str, Any]:
        return {"name": name, "typed_config": {"@type": "type.googleapis.com/" + type_url, **config}}

    hcm = typed(
        "envoy.filters.network.http_connection_manager",
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="x",
        route_config={"name": "r"},
        http_filters=[
            typed("rbac", "envoy.extensions.filters.http.rbac.v3.RBAC"),
            typed("fault", "envoy.extensions.filters.http.fault.v3.HTTPFault"),
            typed("rl", "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit", stat_prefix="rl"),
            typed("hc", "envoy.extensions.filters.http.health_check.v3.HealthCheck", pass_through_mode=False),
            typed("router", "envoy.extensions.filters.http.router.v3.Router"),
        ],
        access_log=[typed("stdout", "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog")],
    )
    listener = {
        "@type": LISTENER,
        "name": "l",
        "listener_filters": [
            typed("tls", "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"),
            typed("dst", "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"),
        ],
        "filter_chains": [
            {"filters": [
                typed("nrl", "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit", stat_prefix="n"),
                typed("nrbac", "envoy.extensions.filters.network.rbac.v3.RBAC", stat_prefix="n"),
                hcm,
            ]},
            {"filters": [typed("tcp", "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", stat_prefix="t",
                               cluster="c")],
             "transport_socket": typed("tls", "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")},
        ],
    }
    cluster = {
        "@type": CLUSTER,
        "name": "c",
        "load_balancing_policy": {"policies": [{"typed_extension_config": typed(
            "ring", "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash")}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"}},
        "health_checks": [{"timeout": "1s", "interval": "5s", "tcp_health_check": {}}],
    }
    assert canonical(canonical(listener)) == canonical(listener)
    assert canonical(cluster)["health_checks"] == [{"timeout": "1s", "interval": "5s", "tcp_health_check": {}}]
    assert len(EXTENSION_MODULES) == len(set(EXTENSION_MODULES))


def test_an_extension_outside_the_list_still_resolves() -> None:
    cors = {"@type": LISTENER, "name": "l", "filter_chains": [{"filters": [{
        "name": "hcm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                     ".HttpConnectionManager",
            "stat_prefix": "x",
            "http_filters": [{"name": "cors", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}],
        }}]}]}
    assert canonical(cors)["name"] == "l"


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        ({"name": "x"}, "has no @type"),
        ({"@type": "type.googleapis.com/envoy.config.cluster.v2.Nope", "name": "x"}, "unknown resource type"),
        ({"@type": CLUSTER, "name": "x", "connect_timeuot": "1s"}, "connect_timeuot"),
        ({"@type": CLUSTER, "name": "x", "lb_policy": "FASTEST"}, "FASTEST"),
        ({"@type": CLUSTER, "name": "x", "transport_socket": {"name": "t", "typed_config": {
            "@type": "type.googleapis.com/no.such.Type"}}}, "no.such.Type"),
    ],
)
def test_what_the_protos_cannot_read_is_an_error(resource: dict[str, Any], message: str) -> None:
    with pytest.raises(CanonicalError, match=message):
        canonical(resource)


def test_fingerprint() -> None:
    other = {"@type": CLUSTER, "name": "other", "connect_timeout": "1s"}
    print_ = fingerprint([rendered_cluster(), other])
    assert len(print_) == 64
    assert fingerprint([other, as_envoy_shows_it()]) == print_  # order and Envoy's spelling do not matter
    changed = rendered_cluster()
    changed["connect_timeout"] = "0.3s"
    assert fingerprint([changed, other]) != print_
    assert fingerprint([]) != print_
