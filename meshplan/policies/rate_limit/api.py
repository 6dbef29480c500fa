"""MeshRateLimit (`from`): a local token bucket on an inbound, for HTTP requests and for TCP connections.

Where: every sidecar inbound the top-level targetRef selects, and on the egress the filter chain of one external
service (top-level `kind: MeshExternalService`, `proxyType: ["Egress"]`: the seed's placement table, chosen so that
the limit does not multiply with the number of client instances: on the egress one bucket serves every client).

Fields of `from[].default` (as Kuma's MeshRateLimit):
    local:                                   required; `http`, `tcp` or both
      http:                                  at least one of disabled, requestRate, onRateLimit
        disabled: bool                       default false; true removes the limit for these clients
        requestRate: {num, interval}         num 1..4294967295 requests per interval (> 50ms, Go duration)
        onRateLimit:
          status: int                        default 429 (Envoy's); 400..599, one of Envoy's StatusCode values
          headers: {set: [{name, value}], add: [{name, value}]}   at most 16 each, names lower-case tokens
      tcp:
        disabled: bool                       default false
        connectionRate: {num, interval}      connections per interval

Envoy: `local.http` becomes `envoy.filters.http.local_ratelimit` in the inbound's HTTP connection manager, before
the router: `token_bucket {max_tokens: num, tokens_per_fill: num, fill_interval: interval}`, `filter_enabled` and
`filter_enforced` 100%, `status {code}`, `response_headers_to_add` (`set`: OVERWRITE_IF_EXISTS_OR_ADD, `add`:
APPEND_IF_EXISTS_OR_ADD), stats under `<inbound>.rate_limit.<clients>.http_local_rate_limit.*`. A rule without a
`requestRate`, or with `disabled: true`, sets no limit. `local.tcp` becomes `envoy.filters.network.local_ratelimit`
before the chain's terminal filter, on HTTP and TCP inbounds alike (a connection is a connection), stats under
`<inbound>.tcp_rate_limit`.

Clients: as Kuma v2.14.3, a `from` item selects every client (`targetRef.kind: Mesh`; any other kind is refused at
`from[i].targetRef.kind`), so each inbound (or external service on the egress) has one bucket that all its clients
share; top-level `rules` are read as such an item (a rule with `matches` is refused, policy_rules.py). The Envoy side
goes through the same per-rule machinery as the other inbound kinds (policies/clients.py), which for a rule for
every client puts the filter in place unwrapped. A TCP connection is counted when it is accepted, before the TLS
handshake that names its client; with one rule for every client, `local.tcp` is that rule's.

The conf: `parse` (policies/conf.py) is the one reader of these fields, for an item's `default` (validate) and for
what a rule's items merged to (render): the Envoy side reads its `Conf` dataclasses (the interval already in Envoy's
Duration form), never the raw dict.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from meshplan.load.resources import PathKey
from meshplan.policies import EGRESS_FROM, FROM, placement_row
from meshplan.policies.base import Json
from meshplan.policies.conf import ConfReader, Header, Setting
from meshplan.validate.check import FieldCheck, duration_json, parse_duration

KIND = "MeshRateLimit"
PLACEMENT = placement_row(KIND, {FROM}, set(), True, EGRESS_FROM)  # the seed's placement table, for external services

MIN_INTERVAL = Decimal("0.05")  # Kuma: an interval must be greater than 50ms (Envoy refuses a fill below 50ms)
MAX_UINT32 = 2**32 - 1
# As Kuma v2.14.3: a `from` item takes kind Mesh only. The targetRef kinds meshplan reads besides Mesh are refused
# here (one not known at all is reported where the targetRef is read, validate/policy_rules.py).
REFUSED_FROM_KINDS = ("MeshSubset", "MeshService", "MeshServiceSubset", "Dataplane", "MeshExternalService")
MAX_HEADERS = 16  # Kuma's limit per list
# Envoy's envoy.type.v3.StatusCode values from 400 on: `status.code` must be one of them, and Envoy answers 429 in
# place of anything below 400.
STATUS_CODES = frozenset(
    [*range(400, 418), 421, 422, 423, 424, 426, 428, 429, 431, *range(500, 509), 510, 511]
)
HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+\-.^_`|~]+$")  # Kuma's HeaderName: an RFC 7230 token, lower case
SET_ACTION = "OVERWRITE_IF_EXISTS_OR_ADD"
ADD_ACTION = "APPEND_IF_EXISTS_OR_ADD"


# --- the conf -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    num: int  # requests (or connections) per interval
    interval: str  # as Envoy writes a Duration (`1s`, `0.051s`)


@dataclass(frozen=True)
class Headers:
    set: tuple[Header, ...]
    add: tuple[Header, ...]
    origins: tuple[str, ...]  # who set `headers` (or anything below it)


@dataclass(frozen=True)
class OnRateLimit:
    status: Setting[int] | None
    headers: Headers | None


@dataclass(frozen=True)
class HttpLimit:
    disabled: Setting[bool] | None
    request_rate: Setting[Rate] | None
    on_rate_limit: OnRateLimit | None
    origins: tuple[str, ...]  # who set `local.http` (or anything below it)


@dataclass(frozen=True)
class TcpLimit:
    disabled: Setting[bool] | None
    connection_rate: Setting[Rate] | None
    origins: tuple[str, ...]  # who set `local.tcp` (or anything below it)


@dataclass(frozen=True)
class Local:
    http: HttpLimit | None
    tcp: TcpLimit | None


@dataclass(frozen=True)
class Conf:
    local: Local


_HTTP_FIELDS = ("disabled", "requestRate", "onRateLimit")


def parse(conf: ConfReader) -> Conf | None:
    """A `default` (or what several merged to): None, with a violation, when it has no `local`."""
    conf.unknown(("local",))
    if not conf.required("local"):
        return None
    local = conf.section("local", _parse_local)
    return None if local is None else Conf(local)


def _parse_local(local: ConfReader) -> Local:
    local.unknown(("http", "tcp"))
    if not local.has("http") and not local.has("tcp"):
        local.fail("needs `http`, `tcp` or both")
    return Local(local.section("http", lambda http: _parse_http(http, local.origins("http"))),
                 local.section("tcp", lambda tcp: _parse_tcp(tcp, local.origins("tcp"))))


def _parse_http(http: ConfReader, origins: tuple[str, ...]) -> HttpLimit:
    http.unknown(_HTTP_FIELDS)
    if not any(http.has(key) for key in _HTTP_FIELDS):
        http.fail("needs at least one of `disabled`, `requestRate`, `onRateLimit`")
    return HttpLimit(http.boolean("disabled"), _rate(http, "requestRate"), http.section("onRateLimit", _parse_on),
                     origins)


def _parse_tcp(tcp: ConfReader, origins: tuple[str, ...]) -> TcpLimit:
    tcp.unknown(("disabled", "connectionRate"))
    if not tcp.has("disabled") and not tcp.has("connectionRate"):
        tcp.fail("needs at least one of `disabled`, `connectionRate`")
    return TcpLimit(tcp.boolean("disabled"), _rate(tcp, "connectionRate"), origins)


def _rate(conf: ConfReader, key: str) -> Setting[Rate] | None:
    rate = conf.section(key, _parse_rate)
    return None if rate is None else Setting(rate, conf.origins(key))


def _parse_rate(rate: ConfReader) -> Rate | None:
    rate.unknown(("num", "interval"))
    num = rate.integer("num", minimum=1, maximum=MAX_UINT32) if rate.required("num") else None
    interval = rate.text("interval") if rate.required("interval") else None
    fill = None
    if interval is not None:
        seconds = parse_duration(interval.value)
        if seconds is None:
            rate.fail(f"must be a duration like 500ms, 1s or 1m, got {interval.value!r}", "interval")
        elif seconds <= MIN_INTERVAL:
            rate.fail(f"must be greater than 50ms, got {interval.value!r}", "interval")
        else:
            fill = duration_json(seconds)
    return None if num is None or fill is None else Rate(num.value, fill)


def _parse_on(on: ConfReader) -> OnRateLimit:
    on.unknown(("status", "headers"))
    return OnRateLimit(on.status("status", STATUS_CODES, _wrong_status),
                       on.section("headers", lambda headers: _parse_headers(headers, on.origins("headers"))))


def _wrong_status(status: int) -> str:
    why = "Envoy answers 429 for any status below 400" if status < 400 else "Envoy knows no such status code"
    return f"must be an HTTP error status between 400 and 599 ({why}), got {status}"


def _parse_headers(headers: ConfReader, origins: tuple[str, ...]) -> Headers:
    headers.unknown(("set", "add"))
    lists: list[tuple[Header, ...]] = []
    for key in ("set", "add"):
        found = headers.entries(key, _header_reader(key), not_a_mapping="must be a mapping with `name` and `value`",
                                at_most=(MAX_HEADERS, "headers"))
        lists.append(() if found is None else found.value)
    return Headers(lists[0], lists[1], origins)


def _header_reader(key: str) -> Callable[[ConfReader], Header | None]:
    """Reads the entries of the list `key` in order: a name listed twice in it is a violation."""
    seen: set[str] = set()

    def read(item: ConfReader) -> Header | None:
        item.unknown(("name", "value"))
        name = item.text("name") if item.required("name") else None
        value = item.text("value") if item.required("value") else None
        good = name is not None and value is not None
        if name is not None:
            if not HEADER_NAME.fullmatch(name.value):
                item.fail(f"must be a lower-case HTTP header name (an RFC 7230 token), got {name.value!r}", "name")
                good = False
            elif name.value in seen:
                item.fail(f"header {name.value!r} is listed twice in `{key}`: join the values with a comma", "name")
                good = False
            seen.add(name.value)
        if value is not None and any(c in value.value for c in "\r\n\0"):
            item.fail("must not contain CR, LF or NUL", "value")
            good = False
        return Header(name.value, value.value) if good and name is not None and value is not None else None

    return read


# --- validation -----------------------------------------------------------------------------------------------


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    parse(ConfReader(default, path, check))
    kind = _from_kind(check, path) if section == FROM else None
    if kind in REFUSED_FROM_KINDS:
        check.fail(path[:-1] + ("targetRef", "kind"),
                   f"value {kind!r} is not supported (as Kuma: a MeshRateLimit `from` item takes kind Mesh only, one "
                   f"limit shared by every client of the inbound; a limit per client is not part of MeshRateLimit)")


def _from_kind(check: FieldCheck, path: PathKey) -> str | None:
    """The kind of the `from` item whose `default` is at `path` (validation sees the payload alone)."""
    node: Any = check.res.body
    for key in path[:-1]:
        if isinstance(node, dict) and isinstance(key, str):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    ref = node.get("targetRef") if isinstance(node, dict) else None
    kind = ref.get("kind") if isinstance(ref, dict) else None
    return kind if isinstance(kind, str) else None
