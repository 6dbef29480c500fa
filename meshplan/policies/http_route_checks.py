"""The checks of a MeshHTTPRoute rule (`matches` and `default`), every violation with its path.

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
from decimal import Decimal, InvalidOperation
from typing import Any

from meshplan.load.resources import PathKey
from meshplan.policies import backend_refs as refs
from meshplan.validate.check import FieldCheck

KIND = "MeshHTTPRoute"

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
HEADER_MATCH_TYPES = ("Exact", "Present", "RegularExpression", "Absent", "Prefix")
QUERY_MATCH_TYPES = ("Exact", "RegularExpression")
REWRITE_TYPES = ("ReplaceFullPath", "ReplacePrefixMatch")
REWRITE_FIELDS = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}
STATUS_CODES = (301, 302, 303, 307, 308)
SCHEMES = ("http", "https")
MAX_MODIFIED_HEADERS = 16  # Kuma's limit per set/add/remove list

_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def validate_rule(rule: Any, path: PathKey, check: FieldCheck) -> None:
    if not isinstance(rule, dict):
        check.fail(path, f"must be a mapping, got {_describe(rule)}")
        return
    check.unknown(rule, path, ("matches", "default"))
    matches = check.field(rule, path, "matches", list, required=True)
    if matches is not None and not matches:
        check.fail(path + ("matches",), "needs at least one match (`{}` matches every request)")
    for i, match in enumerate(matches or []):
        _match(match, path + ("matches", i), check)
    prefixes_only = bool(matches) and all(
        isinstance(m, dict) and isinstance(m.get("path"), dict) and m["path"].get("type") == "PathPrefix"
        for m in matches or []
    )
    conf = check.field(rule, path, "default", dict, required=True)
    if conf is None:
        return
    conf_path = path + ("default",)
    check.unknown(conf, conf_path, ("backendRefs", "filters"))
    refs.validate_backend_refs(conf.get("backendRefs"), conf_path + ("backendRefs",), check, KIND, required=False)
    _filters(conf.get("filters"), conf_path + ("filters",), check, prefixes_only, bool(conf.get("backendRefs")))


# --- matches --------------------------------------------------------------------------------------------------


def _match(match: Any, path: PathKey, check: FieldCheck) -> None:
    if not isinstance(match, dict):
        check.fail(path, f"must be a mapping, got {_describe(match)}")
        return
    check.unknown(match, path, ("path", "method", "headers", "queryParams"))
    path_match = check.field(match, path, "path", dict)
    if path_match is not None:
        _path_match(path_match, path + ("path",), check)
    check.choice(match, path, "method", METHODS)
    seen: set[str] = set()
    for i, header in enumerate(check.field(match, path, "headers", list) or []):
        _header_match(header, path + ("headers", i), check, seen)
    seen = set()
    for i, param in enumerate(check.field(match, path, "queryParams", list) or []):
        _query_match(param, path + ("queryParams", i), check, seen)


def _path_match(match: dict[str, Any], path: PathKey, check: FieldCheck) -> None:
    check.unknown(match, path, ("type", "value"))
    kind = check.choice(match, path, "type", PATH_TYPES, required=True)
    value = check.field(match, path, "value", str, required=True)
    if value is None:
        return
    if value == "":
        check.fail(path + ("value",), "must not be empty")
    elif kind in ("Exact", "PathPrefix") and not value.startswith("/"):
        check.fail(path + ("value",), f"must be an absolute path (start with /), got {value!r}")
    elif kind == "PathPrefix" and value != "/" and value.endswith("/"):
        check.fail(path + ("value",), "does not need a trailing slash: a prefix matches whole path segments only "
                                      f"(use {value.rstrip('/')!r})")


def _header_match(header: Any, path: PathKey, check: FieldCheck, seen: set[str]) -> None:
    if not isinstance(header, dict):
        check.fail(path, f"must be a mapping, got {_describe(header)}")
        return
    check.unknown(header, path, ("type", "name", "value"))
    kind = check.choice(header, path, "type", HEADER_MATCH_TYPES) or "Exact"
    name = check.field(header, path, "name", str, required=True)
    if name is not None:
        problem = refs.header_name_problem(name)
        if problem is not None:
            check.fail(path + ("name",), problem)
        elif name in seen:
            check.fail(path + ("name",), f"header {name!r} is matched twice in this match: combine the conditions")
        seen.add(name)
    check.field(header, path, "value", str)
    if kind in ("Present", "Absent") and "value" in header:
        check.fail(path + ("value",), f"a {kind} match takes no value")
    elif kind in ("Exact", "RegularExpression") and "value" not in header:
        check.fail(path, f"`value` is required for a {kind} match")


def _query_match(param: Any, path: PathKey, check: FieldCheck, seen: set[str]) -> None:
    if not isinstance(param, dict):
        check.fail(path, f"must be a mapping, got {_describe(param)}")
        return
    check.unknown(param, path, ("type", "name", "value"))
    check.choice(param, path, "type", QUERY_MATCH_TYPES, required=True)
    name = check.field(param, path, "name", str, required=True)
    if name == "":
        check.fail(path + ("name",), "must not be empty")
    elif name is not None:
        if name in seen:
            check.fail(path + ("name",), f"multiple entries for name {name}")
        seen.add(name)
    check.field(param, path, "value", str, required=True)


# --- filters --------------------------------------------------------------------------------------------------


def _filters(filters: Any, path: PathKey, check: FieldCheck, prefixes_only: bool, has_backends: bool) -> None:
    if filters is None:
        return
    if not isinstance(filters, list):
        check.fail(path, f"must be a list, got {_describe(filters)}")
        return
    first: dict[str, int] = {}
    for i, flt in enumerate(filters):
        fp = path + (i,)
        if not isinstance(flt, dict):
            check.fail(fp, f"must be a mapping, got {_describe(flt)}")
            continue
        check.unknown(flt, fp, ("type", *FILTER_FIELDS.values()))
        kind = check.choice(flt, fp, "type", tuple(FILTER_FIELDS), required=True)
        if kind is None:
            continue
        for other, key in FILTER_FIELDS.items():
            if other != kind and key in flt:
                check.fail(fp + (key,), f"belongs to a filter of type {other}; this filter's type is {kind}")
        if kind != MIRROR and kind in first:
            check.fail(fp + ("type",), f"a rule takes one {kind} filter, and filters[{first[kind]}] is one already")
        first.setdefault(kind, i)
        spec = check.field(flt, fp, FILTER_FIELDS[kind], dict, required=True)
        if spec is None:
            continue
        sp = fp + (FILTER_FIELDS[kind],)
        if kind in (REQUEST_HEADERS, RESPONSE_HEADERS):
            _header_modifier(spec, sp, check)
        elif kind == REDIRECT:
            _redirect(spec, sp, check, prefixes_only)
        elif kind == REWRITE:
            _rewrite(spec, sp, check, prefixes_only)
        else:
            _mirror(spec, sp, check)
    if REDIRECT in first and REWRITE in first:
        check.fail(path + (first[REWRITE],), "a rule cannot both redirect and rewrite the request: "
                                             "put the changes into the RequestRedirect")
    if REDIRECT in first and has_backends:
        check.fail(path + (first[REDIRECT],), "a redirect answers the request itself, so this rule's backendRefs "
                                              "would never be used: remove one or the other")


def _header_modifier(spec: dict[str, Any], path: PathKey, check: FieldCheck) -> None:
    check.unknown(spec, path, ("set", "add", "remove"))
    if not any(spec.get(key) for key in ("set", "add", "remove")):
        check.fail(path, "must have at least one of: set, add, remove")
    seen: dict[str, str] = {}

    def claim(name: Any, where: PathKey, action: str) -> None:
        if not isinstance(name, str):
            check.fail(where, f"must be a string, got {_describe(name)}")
            return
        problem = refs.header_name_problem(name)
        if problem is not None:
            check.fail(where, problem)
        elif name == "host":
            check.fail(where, "Envoy does not let a route change the host header: use a URLRewrite filter's hostname")
        elif name in seen:
            check.fail(where, f"header {name!r} is changed twice in one filter (already by {seen[name]})")
        seen.setdefault(name, action)

    for action in ("set", "add"):
        items = check.field(spec, path, action, list) or []
        if len(items) > MAX_MODIFIED_HEADERS:
            check.fail(path + (action,), f"at most {MAX_MODIFIED_HEADERS} headers, got {len(items)}")
        for i, item in enumerate(items):
            ip = path + (action, i)
            if not isinstance(item, dict):
                check.fail(ip, f"must be a mapping with `name` and `value`, got {_describe(item)}")
                continue
            check.unknown(item, ip, ("name", "value"))
            if check.field(item, ip, "name", str, required=True) is not None:
                claim(item["name"], ip + ("name",), action)
            value = check.field(item, ip, "value", str, required=True)
            if value is not None and any(c in value for c in "\r\n\0"):
                check.fail(ip + ("value",), "a header value cannot contain line breaks or NUL")
    removed = check.field(spec, path, "remove", list) or []
    if len(removed) > MAX_MODIFIED_HEADERS:
        check.fail(path + ("remove",), f"at most {MAX_MODIFIED_HEADERS} headers, got {len(removed)}")
    for i, name in enumerate(removed):
        claim(name, path + ("remove", i), "remove")


def _redirect(spec: dict[str, Any], path: PathKey, check: FieldCheck, prefixes_only: bool) -> None:
    check.unknown(spec, path, ("scheme", "hostname", "path", "port", "statusCode"))
    check.choice(spec, path, "scheme", SCHEMES)
    _hostname(spec, path, check)
    check.port(spec, path, "port", required=False)
    code = check.field(spec, path, "statusCode", int)
    if code is not None and code not in STATUS_CODES:
        check.fail(path + ("statusCode",), f"must be one of {', '.join(map(str, STATUS_CODES))}, got {code}")
    _path_rewrite(spec, path, check, prefixes_only)


def _rewrite(spec: dict[str, Any], path: PathKey, check: FieldCheck, prefixes_only: bool) -> None:
    check.unknown(spec, path, ("hostname", "path", "hostToBackendHostname"))
    _hostname(spec, path, check)
    if check.field(spec, path, "hostToBackendHostname", bool):
        check.fail(path + ("hostToBackendHostname",),
                   "can only be set with MeshGateway, which meshplan does not configure")
    _path_rewrite(spec, path, check, prefixes_only)


def _path_rewrite(spec: dict[str, Any], path: PathKey, check: FieldCheck, prefixes_only: bool) -> None:
    rewrite = check.field(spec, path, "path", dict)
    if rewrite is None:
        return
    rp = path + ("path",)
    check.unknown(rewrite, rp, ("type", *REWRITE_FIELDS.values()))
    kind = check.choice(rewrite, rp, "type", REWRITE_TYPES, required=True)
    if kind is None:
        return
    key = REWRITE_FIELDS[kind]
    for other_kind, other in REWRITE_FIELDS.items():
        if other != key and other in rewrite:
            check.fail(rp + (other,), f"belongs to type {other_kind}; this rewrite's type is {kind}")
    value = check.field(rewrite, rp, key, str, required=True)
    if value is not None and not value.startswith("/"):
        check.fail(rp + (key,), f"must be an absolute path (start with /), got {value!r}")
    if kind == "ReplacePrefixMatch" and not prefixes_only:
        check.fail(rp + (key,), "can only appear if all matches match a path prefix")


def _mirror(spec: dict[str, Any], path: PathKey, check: FieldCheck) -> None:
    check.unknown(spec, path, ("backendRef", "percentage"))
    ref = check.field(spec, path, "backendRef", dict, required=True)
    if ref is not None:
        kind = ref.get("kind")
        if kind == refs.MESH_EXTERNAL_SERVICE:
            check.fail(path + ("backendRef", "kind"), "a mirror goes to a MeshService or a MeshServiceSubset")
        else:
            refs.validate_backend_ref(ref, path + ("backendRef",), check, KIND, weighted=False)
    percentage = check.field(spec, path, "percentage", (int, float, str))
    if percentage is not None:
        try:
            value = Decimal(str(percentage))
        except InvalidOperation:
            value = Decimal(-1)
        if not value.is_finite() or not 0 <= value <= 100:
            check.fail(path + ("percentage",), f"must be a number from 0 to 100, got {percentage!r}")


def _hostname(spec: dict[str, Any], path: PathKey, check: FieldCheck) -> None:
    """Gateway API's PreciseHostname: a lower-case DNS name, not an IP address."""
    name = check.field(spec, path, "hostname", str)
    if name is None:
        return
    try:
        ipaddress.ip_address(name)
        check.fail(path + ("hostname",), f"must be a DNS name, not an IP address, got {name!r}")
        return
    except ValueError:
        pass
    if len(name) > 253 or not _HOSTNAME.fullmatch(name):
        check.fail(path + ("hostname",), f"must be a lower-case DNS name (RFC 1123), got {name!r}")


def _describe(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)
