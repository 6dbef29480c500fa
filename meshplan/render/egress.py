"""The base resources of a ZoneEgress: one listener terminating mesh mTLS, a filter chain and a cluster per
external service, chosen by SNI."""

from __future__ import annotations

from meshplan.envoy import names
from meshplan.envoy import types as t
from meshplan.match.matcher import Destination
from meshplan.match.result import ProxyMatch
from meshplan.model import EGRESS, Desired, MeshExternalService, SANMatch, ZoneEgress
from meshplan.policies.base import InboundPoint, OutboundPoint, ProxyBuild
from meshplan.render.sidecar import CONNECT_TIMEOUT

SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def build_egress(desired: Desired, egress: ZoneEgress, match: ProxyMatch) -> ProxyBuild:
    build = ProxyBuild(egress, desired, EGRESS, clusters={}, listeners={}, match=match)
    externals = sorted(desired.external_services, key=lambda m: (m.mesh, m.name))
    if not externals:
        return build  # Envoy refuses a listener with no filter chain
    name = names.egress_listener(egress.address, egress.port)
    listener: t.Json = {
        "@type": t.LISTENER,
        "name": name,
        "address": t.socket_address(egress.address, egress.port),
        "traffic_direction": "INBOUND",
        "listener_filters": [{"name": t.TLS_INSPECTOR_NAME, "typed_config": {"@type": t.TLS_INSPECTOR}}],
        "filter_chains": [],
    }
    build.listeners[name] = listener
    build.made_by(listener, egress)
    for mes in externals:
        cluster = _external_cluster(mes)
        chain = _filter_chain(mes)
        build.clusters[cluster["name"]] = cluster
        listener["filter_chains"].append(chain)
        build.made_by(cluster, mes)
        build.made_by(chain, mes)
        destination = Destination.of_external(mes)
        # The egress is both ends for an external service: its inbound (from policies) and its outbound (to policies).
        build.inbounds.append(InboundPoint(destination, chain, name, mes.protocol))
        build.outbounds.append(OutboundPoint(destination, cluster, chain, name, mes.protocol))
    return build


def _filter_chain(mes: MeshExternalService) -> t.Json:
    cluster = names.external_cluster(mes.mesh, mes.name)
    return {
        "name": cluster,
        "filter_chain_match": {"server_names": [names.external_sni(mes.mesh, mes.name)]},
        "filters": [t.network_filter(mes.protocol, t.stat_name(cluster), cluster, cluster)],
        "transport_socket": t.tls_socket(
            {
                "@type": t.DOWNSTREAM_TLS,
                "require_client_certificate": True,
                "common_tls_context": t.mesh_tls_context(mes.mesh, t.uri_sans(prefix=f"spiffe://{mes.mesh}/")),
            }
        ),
    }



def _external_cluster(mes: MeshExternalService) -> t.Json:
    name = names.external_cluster(mes.mesh, mes.name)
    endpoints = [(ep.address, ep.port) for ep in mes.endpoints]
    by_ip = t.discovery_type(a for a, _ in endpoints) == "STATIC"
    cluster: t.Json = {
        "@type": t.CLUSTER,
        "name": name,
        "type": "STATIC" if by_ip else "STRICT_DNS",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": _load_assignment(name, mes),
    }
    if not by_ip:
        cluster["dns_lookup_family"] = "V4_ONLY"
    cluster.update(t.upstream_protocol_options(mes.protocol))
    if mes.tls.enabled:
        cluster["transport_socket"] = t.tls_socket(_origination(mes))
    return cluster


def _load_assignment(name: str, mes: MeshExternalService) -> t.Json:
    """One locality for all endpoints; with `priority` on any endpoint, one locality per priority as Kuma makes them
    (sub zone `priority-<n>`, an endpoint without one at priority 0): Envoy sends to a lower priority only while the
    higher ones are not healthy enough."""
    if all(ep.priority is None for ep in mes.endpoints):
        return t.load_assignment(name, [(ep.address, ep.port) for ep in mes.endpoints])
    by_priority: dict[int, list[t.Json]] = {}
    for ep in mes.endpoints:
        by_priority.setdefault(ep.priority or 0, []).append({"endpoint": {"address": t.socket_address(ep.address, ep.port)}})
    localities: list[t.Json] = []
    for priority in sorted(by_priority):
        locality: t.Json = {"locality": {"sub_zone": f"priority-{priority}"}, "lb_endpoints": by_priority[priority]}
        if priority:
            locality["priority"] = priority
        localities.append(locality)
    return {"cluster_name": name, "endpoints": localities}


ENVOY_TLS_VERSIONS = {"TLSAuto": "TLS_AUTO", "TLS10": "TLSv1_0", "TLS11": "TLSv1_1", "TLS12": "TLSv1_2", "TLS13": "TLSv1_3"}


def _origination(mes: MeshExternalService) -> t.Json:
    """TLS from the egress to the external service, verified as `tls.verification.mode` says, with Kuma's meaning:
    Secured checks the chain against the CA (`caCert`, else the system bundle) and the names; SkipSAN the chain only;
    SkipCA and SkipAll nothing (validate refuses names or a CA with them, which would go unused)."""
    tls = mes.tls
    first = mes.endpoints[0].address if mes.endpoints else None
    server_name = tls.server_name or (first if first is not None and not t.is_ip(first) else None)  # Kuma's choice
    context: t.Json = {"@type": t.UPSTREAM_TLS, "common_tls_context": {}}
    if server_name:
        context["sni"] = server_name
    if tls.allow_renegotiation:
        context["allow_renegotiation"] = True
    params: t.Json = {}
    if tls.min_version is not None:
        params["tls_minimum_protocol_version"] = ENVOY_TLS_VERSIONS[tls.min_version]
    if tls.max_version is not None:
        params["tls_maximum_protocol_version"] = ENVOY_TLS_VERSIONS[tls.max_version]
    if params:
        context["common_tls_context"]["tls_params"] = params
    validation: t.Json = {}
    if tls.verification in ("Secured", "SkipSAN"):
        if tls.ca_cert_inline is not None:
            kind, value = tls.ca_cert_inline
            validation["trusted_ca"] = {kind: value}
        else:
            validation["trusted_ca"] = {"filename": tls.ca_cert_file or SYSTEM_CA_BUNDLE}
    if tls.verification == "Secured":
        # As Kuma: the server name (else the first endpoint's address) exactly, or any of `subjectAltNames`; each
        # as a DNS or an IP SAN.
        expected = server_name or first
        matches = ([SANMatch("Exact", expected)] if expected else []) + list(tls.subject_alt_names)
        validation["match_typed_subject_alt_names"] = [
            {"san_type": san_type, "matcher": {"exact" if m.type == "Exact" else "prefix": m.value}}
            for san_type in ("DNS", "IP_ADDRESS") for m in matches
        ]
    if validation:
        context["common_tls_context"]["validation_context"] = validation
    return context
