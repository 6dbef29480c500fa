"""The base resources of a ZoneEgress: one listener terminating mesh mTLS, a filter chain and a cluster per
external service, chosen by SNI."""

from __future__ import annotations

import ipaddress

from meshplan.envoy import names
from meshplan.envoy import types as t
from meshplan.match.matcher import Destination
from meshplan.match.result import ProxyMatch
from meshplan.model import EGRESS, Desired, MeshExternalService, ZoneEgress
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


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _external_cluster(mes: MeshExternalService) -> t.Json:
    name = names.external_cluster(mes.mesh, mes.name)
    endpoints = [(ep.address, ep.port) for ep in mes.endpoints]
    by_ip = all(_is_ip(a) for a, _ in endpoints)
    cluster: t.Json = {
        "@type": t.CLUSTER,
        "name": name,
        "type": "STATIC" if by_ip else "STRICT_DNS",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": t.load_assignment(name, endpoints),
    }
    if not by_ip:
        cluster["dns_lookup_family"] = "V4_ONLY"
    cluster.update(t.upstream_protocol_options(mes.protocol))
    if mes.tls.enabled:
        cluster["transport_socket"] = t.tls_socket(_origination(mes))
    return cluster


def _origination(mes: MeshExternalService) -> t.Json:
    """TLS from the egress to the external service, verified as `tls.verification.mode` says."""
    tls = mes.tls
    hostnames = [ep.address for ep in mes.endpoints if not _is_ip(ep.address)]
    server_name = tls.server_name or (hostnames[0] if hostnames else None)
    context: t.Json = {"@type": t.UPSTREAM_TLS, "common_tls_context": {}}
    if server_name:
        context["sni"] = server_name
    validation: t.Json = {}
    if tls.verification in ("Secured", "SkipSAN"):
        validation["trusted_ca"] = {"filename": tls.ca_cert_file or SYSTEM_CA_BUNDLE}
    if tls.verification in ("Secured", "SkipCA"):
        sans = list(tls.subject_alt_names) or ([server_name] if server_name else [])
        if sans:
            validation["match_typed_subject_alt_names"] = [{"san_type": "DNS", "matcher": {"exact": s}} for s in sans]
    if validation:
        context["common_tls_context"]["validation_context"] = validation
    return context
