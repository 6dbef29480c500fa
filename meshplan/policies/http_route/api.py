"""The checks of a MeshHTTPRoute rule (`matches` and `default`), every violation with its path, and the rule's typed
`default`.

`parse_default(reader, prefixes_only)` is the one reading of a rule's `default` (its backendRefs and filters): on one
item (through `validate_rule`) it records every violation; on what the rules with equal matches merged to (render,
`http_route.parse_rule`) it returns the frozen dataclasses below, which are all the Envoy side reads (origins come
from the Rule's writers). The checks that span fields two items may each have written (a redirect beside
backendRefs) are made on one item only. `parse_match` reads each match the same way (Match, PathMatch, HeaderMatch,
QueryMatch), for `validate_rule` and for render (`http_route.parse_matches`).

Kuma 2.x's validation (pkg/plugins/policies/meshhttproute/api/v1alpha1) and its schema, plus what Envoy would reject
later or what can never take effect:
- a rule needs at least one match (`{}` matches every request) and a `default`;
- Exact and PathPrefix paths are absolute, a prefix other than `/` has no trailing slash;
- Present and Absent header matches take no value; Exact and RegularExpression ones need one; a header or query
  parameter is matched once per match;
- header modifiers need one of set/add/remove, at most 16 of each, each header name once, never `host` (Envoy refuses
  to let a route change it: URLRewrite `hostname` does that);
- one filter of each type per rule (RequestMirror excepted), RequestRedirect not with URLRewrite nor with
  backendRefs (a redirect answers the request itself), ReplacePrefixMatch only when every match is a PathPrefix;
- hostnames are DNS names, not IP addresses; `hostToBackendHostname` needs a MeshGateway, which meshplan has not;
- a mirror's backendRef is a MeshService or MeshServiceSubset without a weight; percentage 0-100.
Regular expressions are compiled by Envoy (RE2), whose dialect Python's `re` does not share: `envoy --mode
validate` reports a bad one.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from meshplan.load.resources import PathKey
from meshplan.model import Desired, Policy
from meshplan.policies import SIDECAR_TO, TO, placement_row
from meshplan.policies import backend_refs as refs
from meshplan.policies.backend_refs import Backend
from meshplan.policies.base import Json
from meshplan.policies.conf import HEADER_MATCH_TYPES, ConfReader, Header, HeaderMatch, Setting
from meshplan.validate.check import FieldCheck

KIND = "MeshHTTPRoute"
PLACEMENT = placement_row(KIND, {TO}, {"sidecar"}, False, SIDECAR_TO)  # the seed's placement table, for external services

REQUEST_HEADERS = "RequestHeaderModifier"
RESPONSE_HEADERS = "ResponseHeaderModifier"
REDIRECT = "RequestRedirect"
REWRITE = "URLRewrite"
MIRROR = "RequestMirror"
FILTER_FIELDS = {
    REQUEST_HEADERS: "requestHeaderModifier",
    RESPONSE_HEADERS: "responseHeaderModifier",
    REDIRECT: "requestRedirect",
    REWRITE: "urlRewrite",
    MIRROR: "requestMirror",
}
PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
QUERY_MATCH_TYPES = ("Exact", "RegularExpression")
REWRITE_TYPES = ("ReplaceFullPath", "ReplacePrefixMatch")
REWRITE_FIELDS = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}
STATUS_CODES = (301, 302, 303, 307, 308)
SCHEMES = ("http", "https")
MAX_MODIFIED_HEADERS = 16  # Kuma's limit per set/add/remove list

T = TypeVar("T")

_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    """`default` is the item's `{"rules": [...]}`; `path` the item (`spec.to[0]`)."""
    refs.validate_to_target(check, path, KIND)
    rules = default.get("rules")
    if not isinstance(rules, list):
        return  # the generic check has reported it
    for i, rule in enumerate(rules):
        validate_rule(rule, path + ("rules", i), check)


def check_references(policy: Policy, desired: Desired, check: FieldCheck) -> None:
    """Every backend a rule names (its backendRefs and its mirrors) exists in the policy's mesh."""
    for item in policy.to:
        for ri, rule in enumerate(_list(item.default.get("rules"))):
            conf = rule.get("default") if isinstance(rule, dict) else None
            if not isinstance(conf, dict):
                continue
            base: PathKey = ("to", item.index, "rules", ri, "default")
            for bi, ref in enumerate(_list(conf.get("backendRefs"))):
                refs.check_reference(ref, base + ("backendRefs", bi), policy, desired, check)
            for fi, flt in enumerate(_list(conf.get("filters"))):
                mirror = flt.get(FILTER_FIELDS[MIRROR]) if isinstance(flt, dict) else None
                if isinstance(mirror, dict):
                    path = base + ("filters", fi, FILTER_FIELDS[MIRROR], "backendRef")
                    refs.check_reference(mirror.get("backendRef"), path, policy, desired, check)



def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []



def validate_rule(rule: Any, path: PathKey, check: FieldCheck) -> None:
    if not isinstance(rule, dict):
        check.fail(path, f"must be a mapping, got {_describe(rule)}")
        return
    check.unknown(rule, path, ("matches", "default"))
    reader = ConfReader(rule, path, check)
    matches = rule.get("matches") if reader.required("matches") else None
    if matches == []:
        check.fail(path + ("matches",), "needs at least one match (`{}` matches every request)")
    reader.list_of("matches", _read_match)
    only_prefixes = prefixes_only(matches)
    conf = check.field(rule, path, "default", dict, required=True)
    if conf is None:
        return
    parse_default(ConfReader(conf, path + ("default",), check), only_prefixes)


def _read_match(match: Any, at: ConfReader) -> Match | None:
    if not isinstance(match, dict):
        at.fail(f"must be a mapping, got {_describe(match)}")
        return None
    return parse_match(at)


def prefixes_only(matches: Any) -> bool:
    """Whether a rule's every match (at least one) is a PathPrefix: a ReplacePrefixMatch needs that."""
    return bool(matches) and isinstance(matches, (list, tuple)) and all(
        isinstance(m, dict) and isinstance(m.get("path"), dict) and m["path"].get("type") == "PathPrefix"
        for m in matches
    )


# --- matches --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathMatch:
    type: str  # one of PATH_TYPES
    value: str


@dataclass(frozen=True)
class QueryMatch:
    name: str
    type: str  # one of QUERY_MATCH_TYPES
    value: str


@dataclass(frozen=True)
class Match:
    """One of a rule's matches (`{}`: every request)."""

    path: PathMatch | None
    method: str | None
    headers: tuple[HeaderMatch, ...]
    query_params: tuple[QueryMatch, ...]


def parse_match(match: ConfReader) -> Match:
    """One match of a rule, as `validate_rule` checks it and render reads it."""
    match.unknown(("path", "method", "headers", "queryParams"))
    path = match.section("path", _path_match)
    method = _value(match.choice("method", METHODS))
    seen: set[str] = set()
    headers = match.list_of("headers", lambda header, at: _header_match(header, at, seen))
    seen_params: set[str] = set()
    params = match.list_of("queryParams", lambda param, at: _query_match(param, at, seen_params))
    return Match(path, method, headers.value if headers else (), params.value if params else ())


def _path_match(match: ConfReader) -> PathMatch | None:
    match.unknown(("type", "value"))
    kind = _value(match.choice("type", PATH_TYPES)) if match.required("type") else None
    value = _value(match.text("value", required=True))
    if value is None:
        return None
    if value == "":
        match.fail("must not be empty", "value")
    elif kind in ("Exact", "PathPrefix") and not value.startswith("/"):
        match.fail(f"must be an absolute path (start with /), got {value!r}", "value")
    elif kind == "PathPrefix" and value != "/" and value.endswith("/"):
        match.fail("does not need a trailing slash: a prefix matches whole path segments only "
                   f"(use {value.rstrip('/')!r})", "value")
    return None if kind is None else PathMatch(kind, value)


def _header_match(header: Any, at: ConfReader, seen: set[str]) -> HeaderMatch | None:
    if not isinstance(header, dict):
        at.fail(f"must be a mapping, got {_describe(header)}")
        return None
    at.unknown(("type", "name", "value"))
    kind = _value(at.choice("type", HEADER_MATCH_TYPES)) or "Exact"
    name = _value(at.text("name", required=True))
    if name is not None:
        problem = refs.header_name_problem(name)
        if problem is not None:
            at.fail(problem, "name")
        elif name in seen:
            at.fail(f"header {name!r} is matched twice in this match: combine the conditions", "name")
        seen.add(name)
    value = _value(at.text("value"))
    if kind in ("Present", "Absent") and "value" in header:
        at.fail(f"a {kind} match takes no value", "value")
    elif kind in ("Exact", "RegularExpression") and "value" not in header:
        at.fail(f"`value` is required for a {kind} match")
    return None if name is None else HeaderMatch(name, kind, value)


def _query_match(param: Any, at: ConfReader, seen: set[str]) -> QueryMatch | None:
    if not isinstance(param, dict):
        at.fail(f"must be a mapping, got {_describe(param)}")
        return None
    at.unknown(("type", "name", "value"))
    kind = _value(at.choice("type", QUERY_MATCH_TYPES)) if at.required("type") else None
    name = _value(at.text("name", required=True))
    if name == "":
        at.fail("must not be empty", "name")
    elif name is not None:
        if name in seen:
            at.fail(f"multiple entries for name {name}", "name")
        seen.add(name)
    value = _value(at.text("value", required=True))
    return None if kind is None or name is None or value is None else QueryMatch(name, kind, value)


# --- the typed `default` -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderModifier:
    set: tuple[Header, ...]
    add: tuple[Header, ...]
    remove: tuple[str, ...]


@dataclass(frozen=True)
class PathRewrite:
    type: str  # ReplaceFullPath | ReplacePrefixMatch
    value: str  # the full path, or the prefix's replacement


@dataclass(frozen=True)
class Redirect:
    scheme: str | None
    hostname: str | None
    port: int | None
    path: PathRewrite | None
    status_code: int | None  # None: the default (302)


@dataclass(frozen=True)
class Rewrite:
    hostname: str | None
    path: PathRewrite | None


@dataclass(frozen=True)
class Mirror:
    backend: Backend
    percentage: Decimal | None  # None: every request


@dataclass(frozen=True)
class Filters:
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True)
class RuleConf:
    """A rule's `default`: where its requests go (no backends: the outbound's own destination), and its filters."""

    backend_refs: tuple[Backend, ...]
    filters: Filters


def parse_default(conf: ConfReader, prefixes_only: bool) -> RuleConf:
    """A rule's `default` (or what several rules with equal matches merged to); `prefixes_only`: every match of the
    rule is a PathPrefix (a ReplacePrefixMatch needs that). Checks that span fields that two items may have written
    (a redirect beside backendRefs) are made on one item only: a merged conf is rendered as it is."""
    conf.unknown(("backendRefs", "filters"))
    backends = _backend_refs(conf)
    filters = _filters(conf, prefixes_only, bool(conf.raw.get("backendRefs")))
    return RuleConf(backends, filters)


def _backend_refs(conf: ConfReader) -> tuple[Backend, ...]:
    raw = conf.raw.get("backendRefs")
    if conf.validating:  # the placement of a MeshExternalService is checked against the policy's own targetRef
        before = len(conf.check.out)
        refs.validate_backend_refs(raw, conf.path + ("backendRefs",), conf.check, PLACEMENT, required=False)
        if len(conf.check.out) > before:
            return ()
    return tuple(Backend.of(ref) for ref in raw or ())


def _filters(conf: ConfReader, prefixes_only: bool, has_backends: bool) -> Filters:
    first: dict[str, int] = {}

    def read(flt: Any, at: ConfReader) -> tuple[str, Any] | None:
        if not isinstance(flt, dict):
            at.fail(f"must be a mapping, got {_describe(flt)}")
            return None
        at.unknown(("type", *FILTER_FIELDS.values()))
        kind = _value(at.choice("type", tuple(FILTER_FIELDS))) if at.required("type") else None
        if kind is None:
            return None
        for other, key in FILTER_FIELDS.items():
            if other != kind and key in flt:
                at.fail(f"belongs to a filter of type {other}; this filter's type is {kind}", key)
        index = int(at.path[-1])
        if kind != MIRROR and kind in first:
            at.fail(f"a rule takes one {kind} filter, and filters[{first[kind]}] is one already", "type")
        first.setdefault(kind, index)
        key = FILTER_FIELDS[kind]
        if not at.required(key):
            return None
        spec: Any
        if kind in (REQUEST_HEADERS, RESPONSE_HEADERS):
            spec = at.section(key, _header_modifier)
        elif kind == REDIRECT:
            spec = at.section(key, lambda s: _redirect(s, prefixes_only))
        elif kind == REWRITE:
            spec = at.section(key, lambda s: _rewrite(s, prefixes_only))
        else:
            spec = at.section(key, _mirror)
        return None if spec is None else (kind, spec)

    found = conf.list_of("filters", read)
    path = conf.path + ("filters",)
    if conf.validating and REDIRECT in first and REWRITE in first:
        conf.check.fail(path + (first[REWRITE],), "a rule cannot both redirect and rewrite the request: "
                                                  "put the changes into the RequestRedirect")
    if conf.validating and REDIRECT in first and has_backends:
        conf.check.fail(path + (first[REDIRECT],), "a redirect answers the request itself, so this rule's "
                                                   "backendRefs would never be used: remove one or the other")
    by_kind = {kind: spec for kind, spec in (found.value if found else ()) if kind != MIRROR}
    mirrors = tuple(spec for kind, spec in (found.value if found else ()) if kind == MIRROR and spec is not None)
    return Filters(by_kind.get(REQUEST_HEADERS), by_kind.get(RESPONSE_HEADERS), by_kind.get(REDIRECT),
                   by_kind.get(REWRITE), mirrors)


def _header_modifier(spec: ConfReader) -> HeaderModifier:
    spec.unknown(("set", "add", "remove"))
    if not any(spec.raw.get(key) for key in ("set", "add", "remove")):
        spec.fail("must have at least one of: set, add, remove")
    seen: dict[str, str] = {}

    def claim(name: Any, at: ConfReader, action: str) -> str | None:
        if not isinstance(name, str):
            at.fail(f"must be a string, got {_describe(name)}")
            return None
        problem = refs.header_name_problem(name)
        if problem is not None:
            at.fail(problem)
        elif name == "host":
            at.fail("Envoy does not let a route change the host header: use a URLRewrite filter's hostname")
        elif name in seen:
            at.fail(f"header {name!r} is changed twice in one filter (already by {seen[name]})")
        seen.setdefault(name, action)
        return name

    def at_most(action: str) -> None:
        items = spec.raw.get(action)
        if isinstance(items, list) and len(items) > MAX_MODIFIED_HEADERS:
            spec.fail(f"at most {MAX_MODIFIED_HEADERS} headers, got {len(items)}", action)

    def changes(action: str) -> tuple[Header, ...]:
        def read(item: Any, at: ConfReader) -> Header | None:
            if not isinstance(item, dict):
                at.fail(f"must be a mapping with `name` and `value`, got {_describe(item)}")
                return None
            at.unknown(("name", "value"))
            name = at.text("name", required=True)
            if name is not None:
                claim(name.value, ConfReader(item, at.path + ("name",), at.check), action)
            value = at.text("value", required=True)
            if value is not None and any(c in value.value for c in "\r\n\0"):
                at.fail("a header value cannot contain line breaks or NUL", "value")
            return None if name is None or value is None else Header(name.value, value.value)

        at_most(action)
        found = spec.list_of(action, read)
        return found.value if found else ()

    set_, add = changes("set"), changes("add")
    at_most("remove")
    removed = spec.list_of("remove", lambda name, at: claim(name, at, "remove"))
    return HeaderModifier(set_, add, removed.value if removed else ())


def _redirect(spec: ConfReader, prefixes_only: bool) -> Redirect:
    spec.unknown(("scheme", "hostname", "path", "port", "statusCode"))
    scheme = _value(spec.choice("scheme", SCHEMES))
    hostname = _hostname(spec)
    port = _value(spec.port("port"))
    code = spec.status("statusCode", STATUS_CODES,
                       lambda code: f"must be one of {', '.join(map(str, STATUS_CODES))}, got {code}")
    return Redirect(scheme, hostname, port, _path_rewrite(spec, prefixes_only), _value(code))


def _rewrite(spec: ConfReader, prefixes_only: bool) -> Rewrite:
    spec.unknown(("hostname", "path", "hostToBackendHostname"))
    hostname = _hostname(spec)
    to_backend = spec.boolean("hostToBackendHostname")
    if to_backend is not None and to_backend.value:
        spec.fail("can only be set with MeshGateway, which meshplan does not configure", "hostToBackendHostname")
    return Rewrite(hostname, _path_rewrite(spec, prefixes_only))


def _path_rewrite(spec: ConfReader, prefixes_only: bool) -> PathRewrite | None:
    def read(rewrite: ConfReader) -> PathRewrite | None:
        rewrite.unknown(("type", *REWRITE_FIELDS.values()))
        kind = _value(rewrite.choice("type", REWRITE_TYPES)) if rewrite.required("type") else None
        if kind is None:
            return None
        key = REWRITE_FIELDS[kind]
        for other_kind, other in REWRITE_FIELDS.items():
            if other != key and other in rewrite.raw:
                rewrite.fail(f"belongs to type {other_kind}; this rewrite's type is {kind}", other)
        value = _value(rewrite.text(key, required=True))
        if value is not None and not value.startswith("/"):
            rewrite.fail(f"must be an absolute path (start with /), got {value!r}", key)
        if kind == "ReplacePrefixMatch" and not prefixes_only:
            rewrite.fail("can only appear if all matches match a path prefix", key)
        return None if value is None else PathRewrite(kind, value)

    return spec.section("path", read)


def _mirror(spec: ConfReader) -> Mirror | None:
    spec.unknown(("backendRef", "percentage"))

    def backend(ref: ConfReader) -> Backend | None:
        if ref.raw.get("kind") == refs.MESH_EXTERNAL_SERVICE:
            ref.fail("a mirror goes to a MeshService or a MeshServiceSubset", "kind")
            return None
        if refs.validate_backend_ref(ref.raw, ref.path, ref.check, PLACEMENT, weighted=False) is None:
            return None
        return Backend.of(ref.raw)

    found = spec.section("backendRef", backend) if spec.required("backendRef") else None
    percentage = spec.check.field(spec.raw, spec.path, "percentage", (int, float, str))
    value: Decimal | None = None
    if percentage is not None:
        try:
            value = Decimal(str(percentage))
        except InvalidOperation:
            value = Decimal(-1)
        if not value.is_finite() or not 0 <= value <= 100:
            spec.fail(f"must be a number from 0 to 100, got {percentage!r}", "percentage")
            value = None
    return None if found is None else Mirror(found, value)


def _hostname(spec: ConfReader) -> str | None:
    """Gateway API's PreciseHostname: a lower-case DNS name, not an IP address."""
    name = _value(spec.text("hostname"))
    if name is None:
        return None
    try:
        ipaddress.ip_address(name)
        spec.fail(f"must be a DNS name, not an IP address, got {name!r}", "hostname")
        return None
    except ValueError:
        pass
    if len(name) > 253 or not _HOSTNAME.fullmatch(name):
        spec.fail(f"must be a lower-case DNS name (RFC 1123), got {name!r}", "hostname")
        return None
    return name


def _value(setting: Setting[T] | None) -> T | None:
    return None if setting is None else setting.value


def _describe(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)
