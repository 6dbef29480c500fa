"""MeshTimeout: connection, idle and HTTP timeouts, outbound (`to`) and inbound (`from`).

Where (the seed's placement table): `to` on sidecars, and on the egress (`proxyType: ["egress"]`) for external
services, where the egress's cluster and filter chain for that service take the `to` settings. `from` applies to
sidecar inbounds only: the egress's inbound for an external service is not a MeshTimeout placement.

Policy field -> Envoy field (proto names), on the outbound's cluster and filter chain, or for `from` on the local
cluster (`local:<address>:<port>`) and the inbound's filter chain:

    connectionTimeout           cluster.connect_timeout
    idleTimeout                 HTTP: cluster typed_extension_protocol_options
                                      [envoy.extensions.upstreams.http.v3.HttpProtocolOptions]
                                      .common_http_protocol_options.idle_timeout
                                TCP:  tcp_proxy.idle_timeout
    http.requestTimeout         route.timeout        (every route of the chain that forwards: `route` action)
    http.streamIdleTimeout      route.idle_timeout   (likewise)
    http.maxStreamDuration      ...common_http_protocol_options.max_stream_duration
    http.maxConnectionDuration  ...common_http_protocol_options.max_connection_duration
    http.requestHeadersTimeout  http_connection_manager.request_headers_timeout

The HttpProtocolOptions keep any `explicit_http_config` already there (HTTP/2 for http2 and gRPC); for plain HTTP
one is added as `explicit_http_config: {http_protocol_options: {}}` (HTTP/1.1, what the cluster spoke before),
since Envoy requires one. The `http` section does nothing on TCP traffic.

Defaults (as Kuma's plugin): wherever a MeshTimeout applies, what no policy set is filled with Kuma's default, the
filled fields' origin being the MeshTimeouts that apply there: connect_timeout 5s, the cluster idle_timeout 3600s,
max_stream_duration and max_connection_duration 0s, route timeout 15s and idle_timeout 1800s, the connection
manager's request_headers_timeout 0s, tcp_proxy idle_timeout 3600s; and the connection manager's
common_http_protocol_options.idle_timeout (the downstream connection idle timeout) is always 0s (off). Kuma's initial
policy `mesh-timeout-all-<mesh>` (validate/initial_policies.py) makes that everywhere unless the mesh skips it.
Kuma writes no cluster HTTP options for gRPC; meshplan does (docs/policies.md "Kuma's defaults").

Validation (as Kuma): a `default` sets at least one timeout, and an `http` section at least one of its own;
connectionTimeout is greater than zero; every other timeout is zero (disabled) or more; `from` items select every
client (`targetRef.kind: Mesh`), since Envoy's inbound settings cannot depend on the client. Unlike Kuma,
requestHeadersTimeout alone makes a valid `http` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshplan.load.resources import PathKey
from meshplan.policies import BOTH_TO, FROM, TO, placement_row
from meshplan.policies.base import Json
from meshplan.policies.conf import ConfReader, Setting
from meshplan.validate.check import FieldCheck

KIND = "MeshTimeout"
PLACEMENT = placement_row(KIND, {TO, FROM}, {"sidecar", "egress"}, False, BOTH_TO)  # the seed's placement table, for external services

HTTP_PROTOCOLS = ("http", "http2", "grpc")


# --- the conf -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpTimeouts:
    request_timeout: Setting[str] | None  # the durations as Envoy writes them (`15s`, `0.250s`)
    stream_idle_timeout: Setting[str] | None
    max_stream_duration: Setting[str] | None
    max_connection_duration: Setting[str] | None
    request_headers_timeout: Setting[str] | None


@dataclass(frozen=True)
class Conf:
    connection_timeout: Setting[str] | None
    idle_timeout: Setting[str] | None
    http: HttpTimeouts | None


_FIELDS = ("connectionTimeout", "idleTimeout", "http")
_HTTP_FIELDS = ("requestTimeout", "streamIdleTimeout", "maxStreamDuration", "maxConnectionDuration",
                "requestHeadersTimeout")


def parse(conf: ConfReader) -> Conf | None:
    """A `default` (or what several merged to): None, with a violation, when it sets no timeout."""
    conf.unknown(_FIELDS)
    if not any(conf.has(key) for key in _FIELDS):
        conf.fail(f"at least one timeout should be configured (one of: {', '.join(_FIELDS)})")
        return None
    return Conf(conf.duration("connectionTimeout", positive=True), conf.duration("idleTimeout"),
                conf.section("http", _parse_http))


def _parse_http(http: ConfReader) -> HttpTimeouts:
    http.unknown(_HTTP_FIELDS)
    if not any(http.has(key) for key in _HTTP_FIELDS):
        http.fail(f"at least one timeout in this section should be configured (one of: {', '.join(_HTTP_FIELDS)})")
    return HttpTimeouts(*(http.duration(key) for key in _HTTP_FIELDS))


# --- validation -----------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    if section == "from":
        _check_from_kind(check, path)
    parse(ConfReader(default, path, check))


def _check_from_kind(check: FieldCheck, path: PathKey) -> None:
    # The item's own targetRef: Envoy's inbound timeouts are per listener, not per client.
    item: Any = check.res.body
    for key in path[:-1]:
        try:
            item = item[key]
        except (KeyError, IndexError, TypeError):
            return
    ref = item.get("targetRef") if isinstance(item, dict) else None
    kind = ref.get("kind") if isinstance(ref, dict) else None
    if isinstance(kind, str) and kind != "Mesh":
        check.fail(path[:-1] + ("targetRef", "kind"),
                   f"MeshTimeout `from` items must target kind Mesh, got {kind!r}: inbound timeouts apply to every "
                   "client of the inbound")
