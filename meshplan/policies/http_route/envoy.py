"""MeshHTTPRoute (`to`, sidecars only): which requests of an HTTP outbound go where, and what happens to them on
the way.

    to:
      - targetRef: {kind: MeshService, name: backend}      # or MeshExternalService (with proxyType, seed)
        rules:
          - matches: [{path: {type: PathPrefix, value: /admin}}]
            default:
              backendRefs: [{kind: MeshService, name: other, weight: 1}]
              filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: b}]}}]

Envoy (the outbound listener's inline route configuration, `virtual_hosts[0].routes`), per rule and match:
- `match`: Exact -> `path`; PathPrefix `/p` -> two routes, `path: /p` and `prefix: /p/` (a prefix matches whole path
  segments only, as Gateway API says); PathPrefix `/` -> `prefix: /`; RegularExpression -> `safe_regex.regex`;
  no path -> `prefix: /`; `method` -> header `:method` exact; headers Exact / Prefix / RegularExpression ->
  `string_match` `exact` / `prefix` / `safe_regex`, Present -> `present_match: true`, Absent -> `present_match: false`
  (Prefix with an empty value -> present, as Kuma); queryParams -> `query_parameters[].string_match` exact / safe_regex.
- `backendRefs` -> `route.cluster` (one backend) or `route.weighted_clusters.clusters[{name, weight}]`; no
  backendRefs -> the outbound's own cluster. A backend the proxy has no cluster for gets one (backend_refs.py).
- RequestHeaderModifier / ResponseHeaderModifier -> `request_headers_to_add` / `response_headers_to_add`
  (`set`: `append_action: OVERWRITE_IF_EXISTS_OR_ADD`; `add`: `APPEND_IF_EXISTS_OR_ADD`) and
  `request_headers_to_remove` / `response_headers_to_remove`.
- RequestRedirect -> `redirect` instead of `route`: `scheme_redirect`, `host_redirect`, `port_redirect`,
  `response_code`, and the path: ReplaceFullPath -> `path_redirect`; ReplacePrefixMatch -> `path_redirect` on the
  exact-path route of a prefix, `prefix_rewrite` on its `/p/` route.
- URLRewrite -> `route.host_rewrite_literal`; path ReplaceFullPath -> `route.regex_rewrite` (`^.*$` -> the path);
  ReplacePrefixMatch -> `regex_rewrite` on the exact-path route, `prefix_rewrite` on the `/p/` route.
- RequestMirror -> `route.request_mirror_policies[{cluster, runtime_fraction.default_value}]`.

Order of the routes: Kuma's (Gateway API's) match precedence, a stable sort: Exact paths, then prefixes (longer
first), then regular expressions (longer first), then no path; then a method before none; then more headers, then
more query parameters. The base render's catch-all `prefix: /` to the outbound's own destination stays last. A rule
whose match has no condition at all (`{}` or only PathPrefix `/`) does not add a route: it changes that catch-all
(Kuma would place it before regular-expression routes, which it then shadows).

Reading: a rule's `default` is a typed conf (api.parse_default, over ConfReader): validate reads each
item's, render reads each merged rule's (`parse_rule`) and builds the routes from its dataclasses, never the raw
dict; its `matches` likewise (`parse_matches`, api.parse_match).

Merging (Kuma's, not the matcher's whole-list replacement): every `to` item that applies contributes its rules; rules
with equal `matches` are one rule whose `default`s merge as RFC 7396 patches in policy order (a more specific policy
wins field by field; `backendRefs` and `filters` are lists, replaced whole); a rule keeps the place of its most
specific writer, and rules of more specific policies come first among equally specific matches.

Defaults (Kuma's): header match type Exact; backendRef weight 1 (weight 0 drops the backend from the split);
redirect statusCode 302; mirror percentage 100 (no `runtime_fraction`). The `to` targetRef must be a MeshService or
MeshExternalService (Kuma 2.x). An HTTP route on an outbound whose protocol is TCP changes nothing (Kuma ignores it
there too); on the egress it changes nothing (seed: routes live on the sidecar).
"""

from __future__ import annotations

import copy
from decimal import Decimal

from meshplan.match.matcher import Merged
from meshplan.match.result import Rule
from meshplan.policies import backend_refs as refs
from meshplan.policies.base import Json, OutboundPoint, ProxyBuild, hcm, header_matcher, string_match
from meshplan.policies.conf import ConfReader
from meshplan.policies.http_route.api import (
    KIND,
    HeaderModifier,
    Match,
    Mirror,
    Redirect,
    Rewrite,
    RuleConf,
    parse_default,
    parse_match,
    prefixes_only,
)

_REGEX_WHOLE_PATH = "^.*$"  # one match per path, so the substitution replaces the path exactly once
_STATUS = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
           308: "PERMANENT_REDIRECT"}
DEFAULT_STATUS = 302

# Which Envoy route a match became: a prefix `/p` is two routes, its exact path and its `/p/` prefix, and a
# ReplacePrefixMatch rewrite differs between the two.
PLAIN, PREFIX_PATH, PREFIX = "plain", "prefix-path", "prefix"


def apply(build: ProxyBuild) -> None:
    # On the sidecar only (the placement table, applied by match.result). A snapshot: backends add OutboundPoints
    # of their own, whose (detached) chains hold no routes.
    for point in list(build.outbounds):
        manager = hcm(point.chain)
        if manager is None:
            continue  # a TCP outbound: Kuma leaves it to MeshTCPRoute
        matched = build.match.kind_to(KIND, point.destination)
        if matched is not None:
            _route(build, point, manager, list(matched.rules))


# --- rendering ------------------------------------------------------------------------------------------------


def _route(build: ProxyBuild, point: OutboundPoint, manager: Json, rules: list[Rule]) -> None:
    vhost = manager["route_config"]["virtual_hosts"][0]
    catch_all: Json = vhost["routes"][-1]  # the base render's `prefix: /` to the outbound's own cluster
    pairs = sorted(((m, rule, parse_rule(rule)) for rule in rules for m in parse_matches(rule)),
                   key=lambda pair: specificity(pair[0]))
    routes: list[Json] = []
    catch_all_rule: tuple[Rule, RuleConf] | None = None
    for match, rule, conf in pairs:
        if _is_catch_all(match):
            # Later unconditional matches can never be reached: the first one decides the catch-all.
            catch_all_rule = catch_all_rule or (rule, conf)
            continue
        for envoy_match, part in envoy_matches(match):
            route: Json = {}
            build.set(route, "match", envoy_match, rule.origins())
            if _act(build, point, route, rule, conf, part):
                build.route_made(route, rule)
                routes.append(route)
    if catch_all_rule is not None and _act(build, point, catch_all, catch_all_rule[0], catch_all_rule[1], PREFIX):
        build.route_made(catch_all, catch_all_rule[0])
    routes.append(catch_all)
    build.set(vhost, "routes", routes, sorted({o for rule in rules for o in rule.origins()}))


def parse_rule(rule: Rule) -> RuleConf:
    """A merged rule's typed `default` (its items were validated: a conf the parse refuses is a bug)."""
    return parse_default(ConfReader.of_merged(Merged(rule.default, {}, ())), prefixes_only(rule.matches))


def parse_matches(rule: Rule) -> tuple[Match, ...]:
    """A merged rule's typed matches (as one of its items wrote them)."""
    return tuple(parse_match(ConfReader.of_merged(Merged(match, {}, ()))) for match in rule.matches)


def _act(build: ProxyBuild, point: OutboundPoint, route: Json, rule: Rule, conf: RuleConf, part: str) -> bool:
    """Give a route its action and filters; False when it sends nowhere (every backend weighed 0)."""
    filters = conf.filters
    filter_origins = rule.origins("filters")
    action = None if filters.redirect is not None else _forward(build, point, conf, rule)
    if action is None and filters.redirect is None:
        return False  # leave the route as it was: the caller drops a new one, and the catch-all keeps its action
    # `route` and `redirect` are one choice in Envoy (a oneof): the catch-all may trade one for the other.
    route.pop("route", None)
    route.pop("redirect", None)
    if action is None:
        assert filters.redirect is not None
        build.set(route, "redirect", _redirect(filters.redirect, part), filter_origins)
    else:
        build.set(route, "route", action, rule.origins("backendRefs"))
        if filters.rewrite is not None:
            _rewrite(build, action, filters.rewrite, part, filter_origins)
        if filters.mirrors:
            policies = [_mirror(build, point, m, filter_origins) for m in filters.mirrors]
            build.set(action, "request_mirror_policies", policies, filter_origins)
    for modifier, direction in ((filters.request_headers, "request"), (filters.response_headers, "response")):
        if modifier is not None:
            to_add, to_remove = _header_changes(modifier)
            if to_add:
                build.set(route, f"{direction}_headers_to_add", to_add, filter_origins)
            if to_remove:
                build.set(route, f"{direction}_headers_to_remove", to_remove, filter_origins)
    return True


def _forward(build: ProxyBuild, point: OutboundPoint, conf: RuleConf, rule: Rule) -> Json | None:
    backends = list(conf.backend_refs)
    if not backends:
        return {"cluster": point.cluster["name"]}
    targets = refs.split(build, backends, point, rule.origins("backendRefs"))
    if not targets:
        return None
    if len(targets) == 1:
        return {"cluster": targets[0][0]}
    return {"weighted_clusters": {"clusters": [{"name": name, "weight": weight} for name, weight in targets]}}


def _redirect(spec: Redirect, part: str) -> Json:
    out: Json = {}
    if spec.scheme is not None:
        out["scheme_redirect"] = spec.scheme
    if spec.hostname is not None:
        out["host_redirect"] = spec.hostname
    if spec.port is not None:
        out["port_redirect"] = spec.port
    path = spec.path
    if path is not None:
        if path.type == "ReplaceFullPath" or part == PREFIX_PATH:
            out["path_redirect"] = path.value
        elif part == PREFIX:
            out["prefix_rewrite"] = _prefix_replacement(path.value)
    out["response_code"] = _STATUS[spec.status_code or DEFAULT_STATUS]
    return out


def _rewrite(build: ProxyBuild, action: Json, spec: Rewrite, part: str, origins: list[str]) -> None:
    if spec.hostname is not None:
        build.set(action, "host_rewrite_literal", spec.hostname, origins)
    path = spec.path
    if path is None:
        return
    if path.type == "ReplaceFullPath" or part == PREFIX_PATH:
        build.set(action, "regex_rewrite", _whole_path(path.value), origins)
    elif part == PREFIX:
        build.set(action, "prefix_rewrite", _prefix_replacement(path.value), origins)


def _whole_path(substitution: str) -> Json:
    return {"pattern": {"regex": _REGEX_WHOLE_PATH}, "substitution": substitution}


def _prefix_replacement(replacement: str) -> str:
    # Envoy replaces the matched `/p/` whole, slash included; Gateway API keeps the segment boundary, so
    # `/p/x` with replacement `/v2` must become `/v2/x`, and with `/` must become `/x`.
    return replacement.rstrip("/") + "/"


def _mirror(build: ProxyBuild, point: OutboundPoint, spec: Mirror, origins: list[str]) -> Json:
    cluster = refs.backend_cluster(build, spec.backend, point, origins)
    policy: Json = {"cluster": cluster}
    if spec.percentage is not None:
        policy["runtime_fraction"] = {"default_value": fractional_percent(spec.percentage)}
    return policy


def fractional_percent(percentage: int | float | str | Decimal) -> Json:
    """A percentage (0-100, decimals allowed) as Envoy's FractionalPercent, with the smallest exact denominator."""
    value = Decimal(str(percentage))
    for denominator, scale in (("HUNDRED", 1), ("TEN_THOUSAND", 100), ("MILLION", 10_000)):
        scaled = value * scale
        if scaled == scaled.to_integral_value():
            return {"numerator": int(scaled), "denominator": denominator}
    return {"numerator": int((value * 10_000).to_integral_value()), "denominator": "MILLION"}


def _header_changes(spec: HeaderModifier) -> tuple[list[Json], list[str]]:
    to_add = [{"header": {"key": h.name, "value": h.value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
              for h in spec.set]
    to_add += [{"header": {"key": h.name, "value": h.value}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}
               for h in spec.add]
    return to_add, list(spec.remove)


# --- matches --------------------------------------------------------------------------------------------------


def specificity(match: Match) -> tuple[int, int, int, int, int]:
    """A sort key, most specific first (Kuma's CompareMatch)."""
    path = match.path
    if path is None:
        kind, length = 3, 0
    else:
        kind = {"Exact": 0, "PathPrefix": 1}.get(path.type, 2)
        length = 0 if kind == 0 else -len(path.value)
    return (kind, length, 0 if match.method else 1, -len(match.headers), -len(match.query_params))


def _is_catch_all(match: Match) -> bool:
    path = match.path
    unconditional_path = path is None or (path.type == "PathPrefix" and path.value == "/")
    return unconditional_path and not match.method and not match.headers and not match.query_params


def envoy_matches(match: Match) -> list[tuple[Json, str]]:
    """The Envoy RouteMatches of one MeshHTTPRoute match, each with the part of a prefix it stands for."""
    headers: list[Json] = []
    if match.method:
        headers.append({"name": ":method", "string_match": {"exact": match.method}})
    headers += [header_matcher(h) for h in match.headers]
    query = [{"name": q.name, "string_match": string_match(q.type, q.value)} for q in match.query_params]

    def with_conditions(path_spec: Json) -> Json:
        out = dict(path_spec)
        # Copies: the two routes of a prefix must not share objects that a later module might change in one.
        if headers:
            out["headers"] = copy.deepcopy(headers)
        if query:
            out["query_parameters"] = copy.deepcopy(query)
        return out

    path = match.path
    if path is None:
        return [(with_conditions({"prefix": "/"}), PLAIN)]
    value = path.value
    if path.type == "Exact":
        return [(with_conditions({"path": value}), PLAIN)]
    if path.type == "RegularExpression":
        return [(with_conditions({"safe_regex": {"regex": value}}), PLAIN)]
    if value == "/":
        return [(with_conditions({"prefix": "/"}), PREFIX)]
    trimmed = value.rstrip("/")
    return [(with_conditions({"path": trimmed}), PREFIX_PATH), (with_conditions({"prefix": trimmed + "/"}), PREFIX)]


