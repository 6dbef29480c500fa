"""MeshHTTPRoute: its validation table, its render (golden), Envoy's verdict on it, and real requests through it."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import Loopback
from route_helpers import (
    dataplane,
    envoy_problems,
    live_differences,
    write_desired,
)

from meshplan.compare.canonical import canonical
from meshplan.match.matcher import Destination, merge_to
from meshplan.match.result import merge_rules
from meshplan.model import ProxyConfig
from meshplan.policies import http_route
from meshplan.render.proxies import build_proxy, render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import MESH, running_sandbox, stat, violations, wait_for_stat
from tests.golden import TESTDATA

# A fixed mesh for the validation table and the goldens: web calls backend (and httpbin, outside the mesh).
WEB_OUTBOUNDS = """
    - address: 127.0.9.1
      port: 10001
      tags:
        kuma.io/service: backend
    - address: 127.0.9.1
      port: 10002
      backendRef:
        kind: MeshExternalService
        name: httpbin
    """
BASE = {
    "mesh.yaml": MESH,
    "web.yaml": dataplane("web", "127.0.9.1", "web", outbounds=WEB_OUTBOUNDS),
    "backend-1.yaml": dataplane("backend-1", "127.0.9.2", "backend", version="v1"),
    "backend-2.yaml": dataplane("backend-2", "127.0.9.3", "backend", version="v2"),
    "other.yaml": dataplane("other-1", "127.0.9.4", "other"),
    "egress.yaml": """
        type: ZoneEgress
        name: egress
        networking:
          address: 127.0.9.10
          port: 10002
        """,
    "external.yaml": """
        type: MeshExternalService
        mesh: default
        name: httpbin
        spec:
          match:
            port: 80
            protocol: http
          endpoints:
            - address: 127.0.9.20
              port: 18080
        """,
}

HEAD = """
type: MeshHTTPRoute
mesh: default
name: r1
spec:
  targetRef:
    kind: MeshService
    name: web
  to:
    - targetRef:
        kind: MeshService
        name: backend
      rules:
"""  # the first rule is on line 13


def route(rules: str, head: str = HEAD) -> str:
    return head.lstrip("\n") + textwrap.indent(textwrap.dedent(rules).lstrip("\n"), " " * 8)


ADMIN_RULE = """
    - matches:
        - path: {type: PathPrefix, value: /admin}
      default:
        backendRefs:
          - kind: MeshService
            name: other
    """

# (id, route.yaml, expected: "line: path: message" fragments, each must be reported)
BAD: list[tuple[str, str, list[str]]] = [
    ("no matches", route("- default: {}\n"), ["13: spec.to[0].rules[0]: `matches` is required"]),
    ("empty matches", route("- matches: []\n  default: {}\n"),
     ["13: spec.to[0].rules[0].matches: needs at least one match"]),
    ("no default", route("- matches: [{}]\n"), ["13: spec.to[0].rules[0]: `default` is required"]),
    ("unknown rule field", route("- matches: [{}]\n  default: {}\n  hostnames: [a]\n"),
     ["15: spec.to[0].rules[0].hostnames: unknown field"]),
    ("path type", route("- matches: [{path: {type: Prefix, value: /a}}]\n  default: {}\n"),
     ["13: spec.to[0].rules[0].matches[0].path.type: must be one of Exact, PathPrefix, RegularExpression, got 'Prefix'"]),
    ("relative path", route("- matches: [{path: {type: Exact, value: a}}]\n  default: {}\n"),
     ["13: spec.to[0].rules[0].matches[0].path.value: must be an absolute path"]),
    ("prefix trailing slash", route("- matches: [{path: {type: PathPrefix, value: /a/}}]\n  default: {}\n"),
     ["13: spec.to[0].rules[0].matches[0].path.value: does not need a trailing slash"]),
    ("empty path", route("- matches: [{path: {type: RegularExpression, value: ''}}]\n  default: {}\n"),
     ["13: spec.to[0].rules[0].matches[0].path.value: must not be empty"]),
    ("method", route("- matches: [{method: get}]\n  default: {}\n"),
     ["13: spec.to[0].rules[0].matches[0].method: must be one of CONNECT, DELETE, GET"]),
    ("present with value", route("""
        - matches:
            - headers: [{type: Present, name: x-a, value: b}]
          default: {}
        """), ["14: spec.to[0].rules[0].matches[0].headers[0].value: a Present match takes no value"]),
    ("exact without value", route("""
        - matches:
            - headers: [{name: x-a}]
          default: {}
        """), ["14: spec.to[0].rules[0].matches[0].headers[0]: `value` is required for a Exact match"]),
    ("header name", route("""
        - matches:
            - headers: [{name: X-Upper, value: b}]
          default: {}
        """), ["14: spec.to[0].rules[0].matches[0].headers[0].name: 'X-Upper' is not a lower-case HTTP header name"]),
    ("header twice", route("""
        - matches:
            - headers: [{name: x-a, value: b}, {name: x-a, type: Absent}]
          default: {}
        """), ["14: spec.to[0].rules[0].matches[0].headers[1].name: header 'x-a' is matched twice"]),
    ("query twice", route("""
        - matches:
            - queryParams:
                - {type: Exact, name: a, value: "1"}
                - {type: RegularExpression, name: a, value: "2.*"}
          default: {}
        """), ["16: spec.to[0].rules[0].matches[0].queryParams[1].name: multiple entries for name a"]),
    ("query without type", route("""
        - matches:
            - queryParams: [{name: a, value: "1"}]
          default: {}
        """), ["14: spec.to[0].rules[0].matches[0].queryParams[0]: `type` is required"]),
    ("backend kind", route("""
        - matches: [{}]
          default:
            backendRefs: [{kind: Service, name: other}]
        """), ["15: spec.to[0].rules[0].default.backendRefs[0].kind: must be one of MeshService, MeshServiceSubset, "
               "MeshExternalService, got 'Service'"]),
    ("backend without name", route("""
        - matches: [{}]
          default:
            backendRefs: [{kind: MeshService}]
        """), ["15: spec.to[0].rules[0].default.backendRefs[0]: `name` is required"]),
    ("subset without tags", route("""
        - matches: [{}]
          default:
            backendRefs: [{kind: MeshServiceSubset, name: backend}]
        """), ["15: spec.to[0].rules[0].default.backendRefs[0]: `tags` is required"]),
    ("tags on a service", route("""
        - matches: [{}]
          default:
            backendRefs: [{kind: MeshService, name: backend, tags: {version: v1}}]
        """), ["15: spec.to[0].rules[0].default.backendRefs[0].tags: only a MeshServiceSubset has tags"]),
    ("negative weight", route("""
        - matches: [{}]
          default:
            backendRefs: [{kind: MeshService, name: other, weight: -1}]
        """), ["15: spec.to[0].rules[0].default.backendRefs[0].weight: must be between 0 and 4294967295, got -1"]),
    ("every weight zero", route("""
        - matches: [{}]
          default:
            backendRefs:
              - {kind: MeshService, name: other, weight: 0}
              - {kind: MeshService, name: backend, weight: 0}
        """), ["15: spec.to[0].rules[0].default.backendRefs: every backendRef has weight 0"]),
    ("port on a subset", route("""
        - matches: [{}]
          default:
            backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v1}, port: 8080}]
        """), ["15: spec.to[0].rules[0].default.backendRefs[0].port: only a MeshService backendRef takes a port"]),
    ("filter type", route("""
        - matches: [{}]
          default:
            filters: [{type: HeaderModifier}]
        """), ["15: spec.to[0].rules[0].default.filters[0].type: must be one of RequestHeaderModifier"]),
    ("filter without its settings", route("""
        - matches: [{}]
          default:
            filters: [{type: URLRewrite}]
        """), ["15: spec.to[0].rules[0].default.filters[0]: `urlRewrite` is required"]),
    ("settings of another filter", route("""
        - matches: [{}]
          default:
            filters:
              - type: URLRewrite
                urlRewrite: {hostname: a.example}
                requestRedirect: {hostname: b.example}
        """), ["18: spec.to[0].rules[0].default.filters[0].requestRedirect: belongs to a filter of type RequestRedirect"]),
    ("one filter of a type", route("""
        - matches: [{}]
          default:
            filters:
              - {type: URLRewrite, urlRewrite: {hostname: a.example}}
              - {type: URLRewrite, urlRewrite: {hostname: b.example}}
        """), ["17: spec.to[0].rules[0].default.filters[1].type: a rule takes one URLRewrite filter"]),
    ("redirect and rewrite", route("""
        - matches: [{}]
          default:
            filters:
              - {type: RequestRedirect, requestRedirect: {hostname: a.example}}
              - {type: URLRewrite, urlRewrite: {hostname: b.example}}
        """), ["17: spec.to[0].rules[0].default.filters[1]: a rule cannot both redirect and rewrite"]),
    ("redirect with backends", route("""
        - matches: [{}]
          default:
            backendRefs: [{kind: MeshService, name: other}]
            filters:
              - {type: RequestRedirect, requestRedirect: {hostname: a.example}}
        """), ["17: spec.to[0].rules[0].default.filters[0]: a redirect answers the request itself"]),
    ("prefix rewrite without a prefix match", route("""
        - matches: [{path: {type: Exact, value: /a}}]
          default:
            filters:
              - type: URLRewrite
                urlRewrite:
                  path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}
        """), ["18: spec.to[0].rules[0].default.filters[0].urlRewrite.path.replacePrefixMatch: can only appear if all "
               "matches match a path prefix"]),
    ("rewrite without its path", route("""
        - matches: [{}]
          default:
            filters:
              - type: URLRewrite
                urlRewrite:
                  path: {type: ReplaceFullPath, replacePrefixMatch: /b}
        """), ["18: spec.to[0].rules[0].default.filters[0].urlRewrite.path.replacePrefixMatch: belongs to type "
               "ReplacePrefixMatch", "18: spec.to[0].rules[0].default.filters[0].urlRewrite.path: `replaceFullPath` "
               "is required"]),
    ("redirect status", route("""
        - matches: [{}]
          default:
            filters:
              - {type: RequestRedirect, requestRedirect: {statusCode: 304}}
        """), ["16: spec.to[0].rules[0].default.filters[0].requestRedirect.statusCode: must be one of 301, 302, 303, "
               "307, 308, got 304"]),
    ("redirect to an IP", route("""
        - matches: [{}]
          default:
            filters:
              - {type: RequestRedirect, requestRedirect: {hostname: 10.0.0.1, scheme: ftp, port: 0}}
        """), ["16: spec.to[0].rules[0].default.filters[0].requestRedirect.hostname: must be a DNS name, not an IP",
               "16: spec.to[0].rules[0].default.filters[0].requestRedirect.scheme: must be one of http, https",
               "16: spec.to[0].rules[0].default.filters[0].requestRedirect.port: must be a port between 1 and 65535"]),
    ("empty header modifier", route("""
        - matches: [{}]
          default:
            filters:
              - {type: RequestHeaderModifier, requestHeaderModifier: {}}
        """), ["16: spec.to[0].rules[0].default.filters[0].requestHeaderModifier: must have at least one of: set, add, "
               "remove"]),
    ("host header", route("""
        - matches: [{}]
          default:
            filters:
              - type: RequestHeaderModifier
                requestHeaderModifier:
                  set: [{name: host, value: a.example}]
                  remove: [x-a, x-a]
        """), ["18: spec.to[0].rules[0].default.filters[0].requestHeaderModifier.set[0].name: Envoy does not let a "
               "route change the host header",
               "19: spec.to[0].rules[0].default.filters[0].requestHeaderModifier.remove[1]: header 'x-a' is changed "
               "twice"]),
    ("backend hostname", route("""
        - matches: [{}]
          default:
            filters:
              - {type: URLRewrite, urlRewrite: {hostToBackendHostname: true}}
        """), ["16: spec.to[0].rules[0].default.filters[0].urlRewrite.hostToBackendHostname: can only be set with "
               "MeshGateway"]),
    ("mirror", route("""
        - matches: [{}]
          default:
            filters:
              - type: RequestMirror
                requestMirror:
                  backendRef: {kind: MeshService, name: other, weight: 2}
                  percentage: 150
              - type: RequestMirror
                requestMirror:
                  backendRef: {kind: MeshExternalService, name: httpbin}
        """), ["18: spec.to[0].rules[0].default.filters[0].requestMirror.backendRef.weight: takes no weight here",
               "19: spec.to[0].rules[0].default.filters[0].requestMirror.percentage: must be a number from 0 to 100",
               "22: spec.to[0].rules[0].default.filters[1].requestMirror.backendRef.kind: a mirror goes to a "
               "MeshService or a MeshServiceSubset"]),
    ("to a group", route(ADMIN_RULE, HEAD.replace("kind: MeshService\n        name: backend", "kind: Mesh")),
     ["10: spec.to[0].targetRef.kind: MeshHTTPRoute routes the traffic to one destination: the `to` targetRef kind "
      "must be MeshService or MeshExternalService, got Mesh"]),
    ("external backend without proxyType", route("""
        - matches: [{}]
          default:
            backendRefs: [{kind: MeshExternalService, name: httpbin}]
        """), ["15: spec.to[0].rules[0].default.backendRefs[0].kind: a policy that references a MeshExternalService "
               "must set proxyType in its top-level targetRef; the placement table says MeshHTTPRoute for a "
               "MeshExternalService is implemented on: Sidecar (to)"]),
    ("external backend on the egress", route("""
        - matches: [{}]
          default:
            backendRefs: [{kind: MeshExternalService, name: httpbin}]
        """, HEAD.replace("name: web\n", "name: web\n    proxyType: [Sidecar, Egress]\n")),
     ["16: spec.to[0].rules[0].default.backendRefs[0].kind: MeshHTTPRoute to a MeshExternalService is not on the "
      "egress; the placement table says"]),
    ("every problem at once", route("""
        - matches: [{path: {type: Exact, value: a}}, {method: FETCH}]
          default:
            backendRefs: [{kind: MeshService, name: other, weight: x}]
            filters: [{type: Nope}]
        """), ["13: spec.to[0].rules[0].matches[0].path.value: must be an absolute path",
               "13: spec.to[0].rules[0].matches[1].method: must be one of",
               "15: spec.to[0].rules[0].default.backendRefs[0].weight: must be an integer, got a string",
               "16: spec.to[0].rules[0].default.filters[0].type: must be one of"]),
    # Found only against the rest of the mesh (check_references).
    ("backend that does not exist", route("""
        - matches: [{}]
          default:
            backendRefs:
              - {kind: MeshService, name: nowhere}
              - {kind: MeshServiceSubset, name: backend, tags: {version: v9}}
              - {kind: MeshService, name: backend, port: 9999}
            filters:
              - {type: RequestMirror, requestMirror: {backendRef: {kind: MeshService, name: ghost}}}
        """), ["16: spec.to[0].rules[0].default.backendRefs[0].name: no Dataplane in mesh 'default' has an inbound for "
               "service 'nowhere'",
               "17: spec.to[0].rules[0].default.backendRefs[1].tags: no instance of service 'backend' has the tags "
               "{version=v9}",
               "18: spec.to[0].rules[0].default.backendRefs[2].port: no instance of service 'backend' listens on port "
               "9999 (its ports: 8080)",
               "20: spec.to[0].rules[0].default.filters[0].requestMirror.backendRef.name: no Dataplane in mesh "
               "'default' has an inbound for service 'ghost'"]),
    ("external service that does not exist", route("""
        - matches: [{}]
          default:
            backendRefs: [{kind: MeshExternalService, name: nowhere}]
        """, HEAD.replace("name: web\n", "name: web\n    proxyType: [Sidecar]\n")),
     ["16: spec.to[0].rules[0].default.backendRefs[0].name: no MeshExternalService 'nowhere' in mesh 'default'"]),
]

FULL_RULES = """
    - matches:
        - path: {type: PathPrefix, value: /admin}
      default:
        backendRefs: [{kind: MeshService, name: other}]
        filters:
          - type: RequestHeaderModifier
            requestHeaderModifier:
              set: [{name: x-routed, value: admin}]
              add: [{name: x-trace, value: a}]
              remove: [x-secret]
          - type: ResponseHeaderModifier
            responseHeaderModifier:
              set: [{name: x-route, value: admin}]
    - matches:
        - path: {type: Exact, value: /split}
          method: GET
        - headers:
            - {name: x-canary, value: "1"}
            - {name: x-debug, type: Present}
            - {name: x-no, type: Absent}
            - {name: x-re, type: RegularExpression, value: "a.*"}
            - {name: x-pre, type: Prefix, value: ab}
          queryParams:
            - {type: Exact, name: a, value: "1"}
            - {type: RegularExpression, name: b, value: "[0-9]+"}
      default:
        backendRefs:
          - {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 1}
          - {kind: MeshService, name: other, weight: 3}
          - {kind: MeshService, name: backend, port: 8080, weight: 0}
        filters:
          - type: RequestMirror
            requestMirror:
              backendRef: {kind: MeshServiceSubset, name: backend, tags: {version: v1}}
              percentage: "12.5"
    - matches:
        - path: {type: PathPrefix, value: /old}
      default:
        filters:
          - type: RequestRedirect
            requestRedirect:
              scheme: https
              hostname: example.com
              port: 8443
              statusCode: 301
              path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
    - matches:
        - path: {type: RegularExpression, value: "^/re/[a-z]+$"}
      default:
        filters:
          - type: URLRewrite
            urlRewrite:
              hostname: rewritten.example
              path: {type: ReplaceFullPath, replaceFullPath: /whole}
    - matches:
        - path: {type: PathPrefix, value: /api}
      default:
        backendRefs: [{kind: MeshService, name: backend, port: 8080}]
        filters:
          - type: URLRewrite
            urlRewrite:
              path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
    - matches: [{}]
      default:
        filters:
          - type: ResponseHeaderModifier
            responseHeaderModifier:
              add: [{name: x-served-by, value: meshplan}]
    """

EXTERNAL_ROUTE = """
    type: MeshHTTPRoute
    mesh: default
    name: to-httpbin
    spec:
      targetRef:
        kind: Mesh
        proxyType: [Sidecar]
      to:
        - targetRef:
            kind: MeshExternalService
            name: httpbin
          rules:
            - matches: [{path: {type: PathPrefix, value: /internal}}]
              default:
                backendRefs: [{kind: MeshService, name: other}]
        - targetRef:
            kind: MeshService
            name: other
          rules:
            - matches: [{path: {type: PathPrefix, value: /out}}]
              default:
                backendRefs: [{kind: MeshExternalService, name: httpbin}]
    """

GOOD: list[tuple[str, dict[str, str]]] = [
    ("every field", {"route.yaml": route(FULL_RULES)}),
    ("external services, with proxyType", {"external-route.yaml": EXTERNAL_ROUTE}),
    ("a rule that only deletes what another wrote", {"route.yaml": route("""
        - matches: [{}]
          default:
            backendRefs: null
            filters: null
        """)}),
]


@pytest.mark.parametrize(("files", "expected"), [pytest.param({"route.yaml": text}, e, id=i) for i, text, e in BAD])
def test_bad_specs_are_reported_with_file_line_and_path(tmp_path: Path, files: dict[str, str], expected: list[str]) -> None:
    root = write_desired(tmp_path / "desired", {**BASE, **files})
    found = violations(root)
    for fragment in expected:
        assert any(v.startswith(f"route.yaml:{fragment}") for v in found), (fragment, found)
    assert len(found) == len(expected), found  # each mistake once, and nothing else


@pytest.mark.parametrize("files", [pytest.param(files, id=i) for i, files in GOOD])
def test_good_specs_pass(tmp_path: Path, files: dict[str, str]) -> None:
    root = write_desired(tmp_path / "desired", {**BASE, **files})
    assert violations(root) == []


# --- render ---------------------------------------------------------------------------------------------------

SECOND_POLICY = """
    type: MeshHTTPRoute
    mesh: default
    name: everyone
    spec:
      targetRef:
        kind: Mesh
      to:
        - targetRef:
            kind: MeshService
            name: backend
          rules:
            - matches:
                - path: {type: PathPrefix, value: /admin}
              default:
                backendRefs: [{kind: MeshService, name: backend}]
                filters:
                  - type: RequestHeaderModifier
                    requestHeaderModifier:
                      set: [{name: x-from, value: mesh-wide}]
            - matches:
                - path: {type: PathPrefix, value: /admin/very/long/prefix}
              default: {}
    """


def render(tmp_path: Path, files: dict[str, str]) -> dict[str, ProxyConfig]:
    root = write_desired(tmp_path / "desired", {**BASE, **files})
    return {p.name: p for p in render_all(load_and_parse(root))}


def outbound_routes(proxy: ProxyConfig, port: int = 10001) -> list[dict]:  # type: ignore[type-arg]
    listener = next(lst for lst in proxy.listeners if lst["name"] == f"outbound:127.0.9.1:{port}")
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[dict] = manager["route_config"]["virtual_hosts"][0]["routes"]  # type: ignore[type-arg]
    return routes


def test_routes_to_external_services_leave_the_egress_as_it_was(tmp_path: Path) -> None:
    # The golden case http_route-external (tests/test_goldens.py) shows web's render of these routes.
    # Seed: routes are the sidecar's; the egress is the same with or without them.
    proxies = {p.name: p for p in render_all(load_and_parse(TESTDATA / "http_route-external.input"))}
    assert proxies["egress"].listeners == render(tmp_path / "plain", {})["egress"].listeners


def test_routes_are_ordered_most_specific_first_and_the_catch_all_stays_last(tmp_path: Path) -> None:
    routes = outbound_routes(render(tmp_path, {"route.yaml": route(FULL_RULES)})["web"])
    paths = [r["match"].get("path") or r["match"].get("prefix") or r["match"]["safe_regex"]["regex"] for r in routes]
    assert paths == ["/split", "/admin", "/admin/", "/old", "/old/", "/api", "/api/", "^/re/[a-z]+$", "/", "/"]
    assert "headers" in routes[8]["match"]  # the header match (no path) is after every path
    assert routes[-1]["match"] == {"prefix": "/"}
    assert routes[-1]["route"] == {"cluster": "backend"}  # still the outbound's own destination...
    assert routes[-1]["response_headers_to_add"][0]["header"] == {"key": "x-served-by", "value": "meshplan"}  # ...changed by `{}`


def test_an_unconditional_rule_changes_the_catch_all_in_place(tmp_path: Path) -> None:
    routes = outbound_routes(render(tmp_path, {"route.yaml": route("""
        - matches: [{path: {type: PathPrefix, value: /}}, {}]
          default:
            filters:
              - {type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 308}}
        """)})["web"])
    assert routes == [{"match": {"prefix": "/"}, "redirect": {"scheme_redirect": "https", "response_code": "PERMANENT_REDIRECT"}}]


def test_merging_by_matches(tmp_path: Path) -> None:
    proxies = render(tmp_path, {"route.yaml": route(FULL_RULES), "everyone.yaml": SECOND_POLICY})
    routes = outbound_routes(proxies["web"])
    admin = next(r for r in routes if r["match"] == {"path": "/admin"})
    # The MeshService-targeted r1 wins the backends; its filters replace the Mesh-wide policy's whole.
    assert admin["route"] == {"cluster": "other"}
    assert [h["header"]["key"] for h in admin["request_headers_to_add"]] == ["x-routed", "x-trace"]
    # Rules with other matches are added, and take their place by specificity: a longer prefix first.
    assert [r["match"] for r in routes[1:3]] == [{"path": "/admin/very/long/prefix"}, {"prefix": "/admin/very/long/prefix/"}]
    assert routes[1]["route"] == {"cluster": "backend"}  # `default: {}`: the outbound's own destination
    origins = proxies["web"].origins["listener"]["outbound:127.0.9.1:10001"]
    admin_index = routes.index(admin)
    match_path = ("filter_chains", 0, "filters", 0, "typed_config", "route_config", "virtual_hosts", 0, "routes",
                  admin_index, "match")
    assert [o.split(" ")[0] for o in origins[match_path]] == ["MeshHTTPRoute/everyone", "MeshHTTPRoute/r1"]
    assert [o.split(" ")[0] for o in origins[match_path[:-1] + ("route",)]] == ["MeshHTTPRoute/r1"]


def test_backends_get_clusters_and_outbound_points(tmp_path: Path) -> None:
    root = write_desired(tmp_path / "desired", {**BASE, "route.yaml": route(FULL_RULES)})
    desired = load_and_parse(root)

    build = build_proxy(desired, next(d for d in desired.dataplanes if d.name == "web"))
    http_route.apply(build)
    clusters = build.clusters
    # The split's weight-0 `backend` on port 8080 takes no traffic and gets no cluster; /api's one does.
    assert sorted(clusters) == ["backend", "backend:port=8080", "backend:version=v1", "backend:version=v2",
                                "local:127.0.9.1:18080", "mes:default:httpbin", "other"]
    endpoints = {name: [e["endpoint"]["address"]["socket_address"]["address"]
                        for e in c["load_assignment"]["endpoints"][0]["lb_endpoints"]] for name, c in clusters.items()}
    assert endpoints["backend:version=v2"] == ["127.0.9.3"]
    assert endpoints["backend:version=v1"] == ["127.0.9.2"]
    assert endpoints["other"] == ["127.0.9.4"]
    assert endpoints["backend:port=8080"] == ["127.0.9.2", "127.0.9.3"]
    assert clusters["other"]["transport_socket"]["typed_config"]["sni"] == "other.default.mesh"
    assert clusters["other"]["transport_socket"]["typed_config"]["common_tls_context"][
        "tls_certificate_sds_secret_configs"] == [{"name": "identity:default", "sds_config": {"ads": {}, "resource_api_version": "V3"}}]
    added = {p.cluster["name"]: p for p in build.outbounds[2:]}
    assert sorted(added) == ["backend:port=8080", "backend:version=v1", "backend:version=v2", "other"]
    assert str(added["backend:version=v1"].destination) == "MeshService 'backend' {version=v1}"  # the mirror's
    # Detached chains: route-level settings follow the outbound that holds the routes, not its backends.
    assert all(p.chain == {"filters": []} and p.listener == "outbound:127.0.9.1:10001" for p in added.values())


def test_weight_zero_backends_are_left_out(tmp_path: Path) -> None:
    routes = outbound_routes(render(tmp_path, {"route.yaml": route(FULL_RULES)})["web"])
    split = next(r for r in routes if r["match"].get("path") == "/split")
    assert split["route"]["weighted_clusters"] == {"clusters": [{"name": "backend:version=v2", "weight": 1},
                                                                {"name": "other", "weight": 3}]}


def test_every_rendered_resource_parses_with_the_envoy_protos(tmp_path: Path) -> None:
    for proxy in render(tmp_path, {"route.yaml": route(FULL_RULES), "everyone.yaml": SECOND_POLICY}).values():
        for resource in proxy.clusters + proxy.listeners:
            canonical(resource)


def test_a_route_on_a_tcp_outbound_or_on_the_egress_changes_nothing(tmp_path: Path) -> None:
    tcp = {"backend-1.yaml": dataplane("backend-1", "127.0.9.2", "backend", protocol="tcp"),
           "backend-2.yaml": dataplane("backend-2", "127.0.9.3", "backend", protocol="tcp")}
    plain = render(tmp_path / "a", tcp)
    routed = render(tmp_path / "b", {**tcp, "route.yaml": route(ADMIN_RULE)})
    assert routed["web"].listeners == plain["web"].listeners
    assert routed["egress"] == plain["egress"]


@pytest.mark.envoy
def test_envoy_accepts_every_proxy(tmp_path: Path) -> None:
    for name, files in [("full", {"route.yaml": route(FULL_RULES), "everyone.yaml": SECOND_POLICY}),
                        ("external", {"external-route.yaml": EXTERNAL_ROUTE})]:
        desired = load_and_parse(write_desired(tmp_path / name / "desired", {**BASE, **files}))
        assert envoy_problems(desired, tmp_path / name / "state") == {}


def test_merge_to_gives_every_item_in_order(tmp_path: Path) -> None:
    """The module builds on Merged.contributions (least to most specific), not on the whole-list merge."""
    root = write_desired(tmp_path / "desired", {**BASE, "route.yaml": route(FULL_RULES), "everyone.yaml": SECOND_POLICY})
    desired = load_and_parse(root)
    web = next(d for d in desired.dataplanes if d.name == "web")
    merged = merge_to(desired.policies, web, Destination("default", "backend"))
    assert [c.policy.name for c in merged.contributions] == ["everyone", "r1"]
    rules = merge_rules(merged)
    assert [json.dumps(r.matches[0].get("path")) for r in rules][:2] == [
        json.dumps({"type": "PathPrefix", "value": "/admin"}), json.dumps({"type": "Exact", "value": "/split"})]
    assert [len(r.writers) for r in rules] == [2, 1, 1, 1, 1, 1, 1]


# --- real traffic ---------------------------------------------------------------------------------------------


@dataclass
class Mesh:
    proxies: dict[str, ProxyConfig]
    url: str  # web's outbound to backend


TRAFFIC_RULES = """
    - matches:
        - path: {type: PathPrefix, value: /admin}
      default:
        backendRefs: [{kind: MeshService, name: other}]
        filters:
          - type: RequestHeaderModifier
            requestHeaderModifier:
              set: [{name: x-routed, value: admin}]
              remove: [x-secret]
          - type: ResponseHeaderModifier
            responseHeaderModifier:
              set: [{name: x-route, value: admin}]
    - matches:
        - headers: [{name: x-canary, value: "1"}]
        - path: {type: Exact, value: /q}
          queryParams: [{type: Exact, name: to, value: other}]
        - path: {type: Exact, value: /m}
          method: POST
      default:
        backendRefs: [{kind: MeshService, name: other}]
    - matches: [{path: {type: PathPrefix, value: /split}}]
      default:
        backendRefs:
          - {kind: MeshService, name: backend, weight: 1}
          - {kind: MeshService, name: other, weight: 1}
    - matches: [{path: {type: PathPrefix, value: /zero}}]
      default:
        backendRefs:
          - {kind: MeshService, name: backend, weight: 0}
          - {kind: MeshService, name: other, weight: 1}
    - matches: [{path: {type: PathPrefix, value: /old}}]
      default:
        filters:
          - type: RequestRedirect
            requestRedirect:
              hostname: example.com
              statusCode: 301
              path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
    - matches: [{path: {type: PathPrefix, value: /api}}]
      default:
        filters:
          - type: URLRewrite
            urlRewrite:
              hostname: rewritten.example
              path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
    - matches: [{path: {type: Exact, value: /full}}]
      default:
        filters:
          - type: URLRewrite
            urlRewrite:
              path: {type: ReplaceFullPath, replaceFullPath: /replaced}
    - matches: [{path: {type: Exact, value: /mirror}}]
      default:
        filters:
          - type: RequestMirror
            requestMirror:
              backendRef: {kind: MeshService, name: other}
    """


@pytest.fixture(scope="module")
def routed(loopback: Loopback, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """web -> backend through its sidecar, routed by TRAFFIC_RULES; `other` takes what the rules send it."""
    ips = {name: loopback.ip() for name in ("web", "backend", "other")}
    ports = {name: [loopback.port(ip) for _ in range(3)] for name, ip in ips.items()}
    outbound = loopback.port(ips["web"])
    files = {"mesh.yaml": MESH}
    for name, ip in ips.items():
        admin, inbound, app = ports[name]
        outbounds = f"- address: {ip}\n  port: {outbound}\n  tags:\n    kuma.io/service: backend\n" if name == "web" else ""
        files[f"{name}.yaml"] = dataplane(name, ip, name, admin=admin, port=inbound, app=app, outbounds=outbounds)
    files["route.yaml"] = route(TRAFFIC_RULES)
    root = tmp_path_factory.mktemp("http-route")
    desired = load_and_parse(write_desired(root / "desired", files))
    with running_sandbox(desired, root / "state") as started:
        proxies = {p.name: p for p in started}
        yield Mesh(proxies, f"http://{ips['web']}:{outbound}")


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        yield http


def who(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    service: str = answer.json()["service"]
    return service


@pytest.mark.envoy
def test_a_path_prefix_goes_to_another_service_and_the_rest_stays(routed: Mesh, client: httpx.Client) -> None:
    assert [who(client.get(f"{routed.url}{path}")) for path in ("/admin", "/admin/users", "/administrator", "/", "/x")] == [
        "other", "other", "backend", "backend", "backend"]


@pytest.mark.envoy
def test_header_modifiers(routed: Mesh, client: httpx.Client) -> None:
    answer = client.get(f"{routed.url}/admin/x", headers={"x-routed": "client", "x-secret": "s", "x-kept": "k"})
    seen = answer.json()["headers"]
    assert (seen["x-routed"], seen["x-kept"], "x-secret" in seen) == ("admin", "k", False)
    assert answer.headers["x-route"] == "admin"
    assert "x-route" not in client.get(f"{routed.url}/x").headers


@pytest.mark.envoy
def test_header_query_and_method_matches(routed: Mesh, client: httpx.Client) -> None:
    assert who(client.get(f"{routed.url}/anything", headers={"x-canary": "1"})) == "other"
    assert who(client.get(f"{routed.url}/anything", headers={"x-canary": "2"})) == "backend"
    assert who(client.get(f"{routed.url}/q", params={"to": "other"})) == "other"
    assert who(client.get(f"{routed.url}/q", params={"to": "backend"})) == "backend"
    assert who(client.post(f"{routed.url}/m")) == "other"
    assert who(client.get(f"{routed.url}/m")) == "backend"


@pytest.mark.envoy
def test_weighted_backends(routed: Mesh, client: httpx.Client) -> None:
    # Weight 0 leaves backend out: every one of these goes to other.
    assert Counter(who(client.get(f"{routed.url}/zero/{i}")) for i in range(10)) == {"other": 10}
    # 1:1 over 40 requests: both answer (the chance that one of them gets none is 2 in 10^12).
    split = Counter(who(client.get(f"{routed.url}/split/{i}")) for i in range(40))
    assert set(split) == {"backend", "other"} and sum(split.values()) == 40


@pytest.mark.envoy
def test_redirect(routed: Mesh, client: httpx.Client) -> None:
    answer = client.get(f"{routed.url}/old/page", params={"q": "1"})
    assert answer.status_code == 301
    assert answer.headers["location"] == "http://example.com/new/page?q=1"
    assert client.get(f"{routed.url}/old").headers["location"] == "http://example.com/new"


@pytest.mark.envoy
def test_rewrites(routed: Mesh, client: httpx.Client) -> None:
    body = client.get(f"{routed.url}/api/items", params={"page": "2"}).json()
    assert (body["service"], body["path"], body["query"], body["headers"]["host"]) == (
        "backend", "/v2/items", "page=2", "rewritten.example")
    assert client.get(f"{routed.url}/api").json()["path"] == "/v2"
    body = client.get(f"{routed.url}/full", params={"x": "1"}).json()
    assert (body["path"], body["query"]) == ("/replaced", "x=1")


@pytest.mark.envoy
def test_mirror(routed: Mesh, client: httpx.Client) -> None:
    web = routed.proxies["web"]
    before = stat(client, web.admin_url, "cluster.other.upstream_rq_total")
    assert who(client.get(f"{routed.url}/mirror")) == "backend"  # the answer is the primary's...
    # ...and a copy went to other, counted by web's Envoy once the shadow request completes.
    assert wait_for_stat(client, web.admin_url, "cluster.other.upstream_rq_total", before + 1) == before + 1


@pytest.mark.envoy
def test_planning_again_against_the_running_envoys_shows_no_change(routed: Mesh) -> None:
    assert live_differences(routed.proxies) == {}
