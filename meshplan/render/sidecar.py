"""The base resources of a sidecar: an inbound listener per inbound, an outbound listener and cluster per outbound."""

from __future__ import annotations

from meshplan.envoy import names
from meshplan.envoy import types as t
from meshplan.match.matcher import Destination
from meshplan.match.result import destination_protocol, match_proxy
from meshplan.model import SIDECAR, Dataplane, Desired, Inbound, Outbound
from meshplan.policies.base import InboundPoint, OutboundPoint, ProxyBuild

CONNECT_TIMEOUT = "5s"  # Kuma's default connectionTimeout


def build_sidecar(desired: Desired, dp: Dataplane) -> ProxyBuild:
    mtls = desired.mesh(dp.mesh).mtls
    build = ProxyBuild(dp, desired, SIDECAR, clusters={}, listeners={}, match=match_proxy(desired, dp), mtls=mtls)
    for inbound in dp.inbounds:
        local = names.local_cluster(inbound.service_address, inbound.service_port)
        build.clusters[local] = _cluster(local, [(inbound.service_address, inbound.service_port)])
        listener = _inbound_listener(dp, inbound, local, mtls)
        build.listeners[listener["name"]] = listener
        build.inbounds.append(InboundPoint(inbound, listener["filter_chains"][0], listener["name"], inbound.protocol))
    for outbound in dp.outbounds:
        cluster, protocol = outbound_cluster(desired, dp, outbound, mtls)
        build.clusters[cluster["name"]] = cluster
        listener = _outbound_listener(outbound, cluster["name"], protocol)
        build.listeners[listener["name"]] = listener
        build.outbounds.append(
            OutboundPoint(Destination.of_outbound(dp, outbound), cluster, listener["filter_chains"][0], listener["name"], protocol)
        )
    return build


def _cluster(name: str, endpoints: list[tuple[str, int]]) -> t.Json:
    return {
        "@type": t.CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": t.load_assignment(name, endpoints),
    }


def _inbound_listener(dp: Dataplane, inbound: Inbound, local: str, mtls: bool) -> t.Json:
    name = names.inbound_listener(inbound.address, inbound.port)
    chain: t.Json = {
        "filters": [t.network_filter(inbound.protocol, t.stat_name(name), f"inbound:{inbound.service}", local)]
    }
    if mtls:
        chain["transport_socket"] = t.tls_socket(
            {
                "@type": t.DOWNSTREAM_TLS,
                "require_client_certificate": True,
                # Any workload of this mesh may connect; who may is MeshTrafficPermission's job.
                "common_tls_context": t.mesh_tls_context(dp.mesh, t.uri_sans(prefix=f"spiffe://{dp.mesh}/")),
            }
        )
    return {
        "@type": t.LISTENER,
        "name": name,
        "address": t.socket_address(inbound.address, inbound.port),
        "traffic_direction": "INBOUND",
        "filter_chains": [chain],
    }


def outbound_cluster(
    desired: Desired, dp: Dataplane, outbound: Outbound, mtls: bool
) -> tuple[t.Json, str]:
    """The cluster a sidecar uses for an outbound (every instance of the service, or the egress for an external
    service), and the destination's protocol. MeshHTTPRoute/MeshTCPRoute build their extra backends with it too."""
    if outbound.external is not None:
        mes = desired.external_service(dp.mesh, outbound.external)
        name = names.external_cluster(dp.mesh, mes.name)
        # Seed: external traffic always goes sidecar -> egress -> external service, over mesh mTLS.
        endpoints = [(eg.address, eg.port) for eg in sorted(desired.egresses, key=lambda e: e.name)]
        sni = names.external_sni(dp.mesh, mes.name)
        peer = [names.spiffe_id(dp.mesh, names.EGRESS_IDENTITY)]
    else:
        assert outbound.service is not None
        name = names.service_cluster(outbound.service)
        instances = desired.instances(dp.mesh, outbound.service)
        endpoints = [(inbound.address, inbound.port) for _, inbound in sorted(instances, key=lambda i: (i[0].name, i[1].port))]
        sni = names.service_sni(dp.mesh, outbound.service)
        peer = [names.spiffe_id(dp.mesh, outbound.service)]
    protocol = destination_protocol(desired, Destination.of_outbound(dp, outbound))
    cluster = _cluster(name, endpoints)
    cluster.update(t.upstream_protocol_options(protocol))
    if mtls:
        cluster["transport_socket"] = t.tls_socket(
            {"@type": t.UPSTREAM_TLS, "sni": sni, "common_tls_context": t.mesh_tls_context(dp.mesh, t.uri_sans(exact=peer))}
        )
    return cluster, protocol


def _outbound_listener(outbound: Outbound, cluster: str, protocol: str) -> t.Json:
    name = names.outbound_listener(outbound.address, outbound.port)
    return {
        "@type": t.LISTENER,
        "name": name,
        "address": t.socket_address(outbound.address, outbound.port),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [t.network_filter(protocol, t.stat_name(name), f"outbound:{cluster}", cluster)]}],
    }
