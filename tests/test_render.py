"""Rendering: the base resources of every proxy, their stable names, their mTLS, and the PKI they reference."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from cryptography import x509

from meshplan.model import ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "examples" / "demo"
DEMO_K8S = Path(__file__).parent / "data" / "demo-k8s"


def render_demo(path: Path = DEMO) -> dict[str, ProxyConfig]:
    return {p.name: p for p in render_all(load_and_parse(path))}


def by_name(resources: tuple[dict, ...]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {r["name"]: r for r in resources}


def test_universal_and_kubernetes_forms_render_identically() -> None:
    universal, kubernetes = render_demo(DEMO), render_demo(DEMO_K8S)
    assert sorted(universal) == sorted(kubernetes) == ["admin", "backend-1", "backend-2", "egress", "web"]
    for name in universal:
        assert universal[name] == kubernetes[name]
        assert universal[name].clusters == kubernetes[name].clusters
        assert universal[name].listeners == kubernetes[name].listeners


def test_sidecar_outbound_to_mesh_service_uses_mtls_to_every_instance() -> None:
    web = render_demo()["web"]
    backend = by_name(web.clusters)["backend"]
    endpoints = [
        e["endpoint"]["address"]["socket_address"] for e in backend["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert endpoints == [{"address": "127.0.1.2", "port_value": 8080}, {"address": "127.0.1.3", "port_value": 8080}]
    tls = backend["transport_socket"]["typed_config"]
    assert tls["sni"] == "backend.default.mesh"
    context = tls["common_tls_context"]
    # certificates are SDS secrets, by name: the render knows no file of any host
    ads = {"ads": {}, "resource_api_version": "V3"}
    assert context["tls_certificate_sds_secret_configs"] == [{"name": "identity:default", "sds_config": ads}]
    validation = context["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"] == {"name": "ca:default", "sds_config": ads}
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://default/backend"}}
    ]
    listener = by_name(web.listeners)["outbound:127.0.1.1:10001"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"] for r in routes] == [{"path": "/v2"}, {"prefix": "/v2/"}, {"prefix": "/"}]  # MeshHTTPRoute first
    assert {r["route"]["cluster"] for r in routes[:2]} == {"backend:version=v2"}
    route = routes[-1]["route"]
    assert route["cluster"] == "backend"
    assert route["timeout"] == "5s"  # MeshTimeout web-to-backend overrides mesh-defaults' 15s
    assert route["retry_policy"]["num_retries"] == 3
    assert web.origins["listener"][listener["name"]][
        ("filter_chains", 0, "filters", 0, "typed_config", "route_config", "virtual_hosts", 0, "routes", 2, "route", "timeout")
    ] == [f"MeshTimeout/web-to-backend ({DEMO}/policies/timeout.yaml:30)"]


def test_outbound_to_external_service_goes_to_the_egress() -> None:
    web = render_demo()["web"]
    cluster = by_name(web.clusters)["mes:default:httpbin"]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "127.0.1.10", "port_value": 10002}
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "httpbin.default.mes"
    peers = tls["common_tls_context"]["combined_validation_context"]["default_validation_context"]
    assert peers["match_typed_subject_alt_names"][0]["matcher"] == {"exact": "spiffe://default/zone-egress"}


def test_egress_picks_a_filter_chain_per_external_service_by_sni() -> None:
    egress = render_demo()["egress"]
    (listener,) = egress.listeners
    assert listener["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"
    (chain,) = listener["filter_chains"]
    assert chain["filter_chain_match"] == {"server_names": ["httpbin.default.mes"]}
    assert chain["transport_socket"]["typed_config"]["require_client_certificate"] is True
    cluster = by_name(egress.clusters)["mes:default:httpbin"]
    assert "transport_socket" not in cluster  # the demo's external service is plain HTTP
    assert cluster["type"] == "STATIC"


def test_inbound_requires_mesh_client_certificates() -> None:
    backend = render_demo()["backend-1"]
    (listener,) = backend.listeners
    assert listener["name"] == "inbound:127.0.1.2:8080"
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    route = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    assert route["route"]["cluster"] == "local:127.0.1.2:18080"


def test_mesh_without_mtls_renders_plaintext(tmp_path: Path) -> None:
    external_outbound = re.compile(r"    - address: [0-9.]+\n      port: 10002\n      backendRef:\n.*\n.*\n")
    dataplanes, removed = external_outbound.subn("", (DEMO / "dataplanes.yaml").read_text())
    assert removed == 2
    (tmp_path / "dataplanes.yaml").write_text(dataplanes)
    (tmp_path / "mesh.yaml").write_text("type: Mesh\nname: default\n")
    proxies = render_all(load_and_parse(tmp_path))
    assert [p.name for p in proxies] == ["admin", "backend-1", "backend-2", "web"]
    assert "transport_socket" not in json.dumps([p.clusters + p.listeners for p in proxies])


def test_external_tls_origination(tmp_path: Path) -> None:
    for name in ("mesh.yaml", "egress.yaml"):
        (tmp_path / name).write_text((DEMO / name).read_text())
    (tmp_path / "ext.yaml").write_text(
        "type: MeshExternalService\nname: api\nmesh: default\nspec:\n  match: {port: 443, protocol: http}\n"
        "  endpoints: [{address: api.example.com, port: 443}]\n  tls:\n    enabled: true\n"
    )
    egress = {p.name: p for p in render_all(load_and_parse(tmp_path))}["egress"]
    cluster = by_name(egress.clusters)["mes:default:api"]
    assert cluster["type"] == "STRICT_DNS"
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.example.com"
    # As Kuma: the server name, as a DNS or an IP SAN.
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "api.example.com"}},
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "api.example.com"}},
    ]


def test_pki_one_ca_per_mesh_spiffe_sans_and_private_keys_0600(tmp_path: Path) -> None:
    desired = load_and_parse(DEMO)
    written = pki.ensure(desired, tmp_path)
    assert written
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.suffix == ".key" else 0o644), path
    web = pki.paths(tmp_path, "default", "web")
    cert = x509.load_pem_x509_certificate(web.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://default/web", "kuma://kuma.io/protocol/http"]
    backend = x509.load_pem_x509_certificate(pki.paths(tmp_path, "default", "backend-2").cert.read_bytes())
    assert backend.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == ["spiffe://default/backend", "kuma://kuma.io/protocol/http", "kuma://version/v2"]
    ca = x509.load_pem_x509_certificate(web.ca.read_bytes())
    assert cert.issuer == ca.subject
    assert pki.ensure(desired, tmp_path) == []  # idempotent: nothing rewritten


def test_every_rendered_resource_round_trips_through_the_envoy_protos() -> None:
    from meshplan.compare.canonical import canonical

    for config in render_demo().values():
        for resource in config.clusters + config.listeners:
            once = canonical(resource)
            assert canonical(once) == once
            assert once["name"] == resource["name"] and once["@type"] == resource["@type"]
