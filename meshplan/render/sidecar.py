"""The base resources of a sidecar: an inbound listener per inbound, an outbound listener and cluster per outbound."""

from __future__ import annotations

from meshplan.envoy import names
from meshplan.envoy import types as t
from meshplan.match.matcher import Destination
from meshplan.match.result import ProxyMatch, destination_protocol
from meshplan.model import SIDECAR, Dataplane, Desired, Inbound, Outbound, ZoneEgress
from meshplan.policies.base import InboundPoint, OutboundPoint, ProxyBuild

CONNECT_TIMEOUT = "5s"  # Kuma's default connectionTimeout


def build_sidecar(desired: Desired, dp: Dataplane, match: ProxyMatch) -> ProxyBuild:
    mtls = desired.mesh(dp.mesh).mtls
    build = ProxyBuild(dp, desired, SIDECAR, clusters={}, listeners={}, match=match, mtls=mtls)
    mesh = desired.mesh(dp.mesh)
    for inbound in dp.inbounds:
        local = names.local_cluster(inbound.service_address, inbound.service_port)
        build.clusters[local] = _cluster(local, [(inbound.service_address, inbound.service_port)])
        listener = _inbound_listener(dp, inbound, local, mtls)
        build.listeners[listener["name"]] = listener
        build.made_by(build.clusters[local], dp)
        build.made_by(listener, dp)
        if mtls:
            build.made_by(listener["filter_chains"][0]["transport_socket"], mesh)
        build.inbounds.append(InboundPoint(inbound, listener["filter_chains"][0], listener["name"], inbound.protocol))
    for outbound in dp.outbounds:
        cluster, protocol = outbound_cluster(desired, dp, outbound, mtls, build)
        build.clusters[cluster["name"]] = cluster
        listener = _outbound_listener(outbound, cluster["name"], protocol)
        build.listeners[listener["name"]] = listener
        build.made_by(listener, dp)
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
    desired: Desired, dp: Dataplane, outbound: Outbound, mtls: bool, build: ProxyBuild | None = None
) -> tuple[t.Json, str]:
    """The cluster a sidecar uses for an outbound (every instance of the service, or the egress for an external
    service), and the destination's protocol. MeshHTTPRoute/MeshTCPRoute build their extra backends with it too.
    With `build`, each part is recorded as made by what it comes from (the Dataplane, each endpoint's Dataplane or
    the ZoneEgress, the Mesh)."""
    makers: list[Dataplane | ZoneEgress]
    if outbound.external is not None:
        mes = desired.external_service(dp.mesh, outbound.external)
        name = names.external_cluster(dp.mesh, mes.name)
        # Seed: external traffic always goes sidecar -> egress -> external service, over mesh mTLS.
        egresses = sorted(desired.egresses, key=lambda e: e.name)
        endpoints = [(eg.address, eg.port) for eg in egresses]
        makers = list(egresses)
        sni = names.external_sni(dp.mesh, mes.name)
        peer = [names.spiffe_id(dp.mesh, names.EGRESS_IDENTITY)]
    else:
        assert outbound.service is not None
        name = names.service_cluster(outbound.service)
        instances = sorted(desired.instances(dp.mesh, outbound.service), key=lambda i: (i[0].name, i[1].port))
        endpoints = [(inbound.address, inbound.port) for _, inbound in instances]
        makers = [instance for instance, _ in instances]
        sni = names.service_sni(dp.mesh, outbound.service)
        peer = [names.spiffe_id(dp.mesh, outbound.service)]
    protocol = destination_protocol(desired, Destination.of_outbound(dp, outbound))
    cluster = _cluster(name, endpoints)
    if build is not None:
        build.made_by(cluster, dp)
        for endpoint, maker in zip(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"], makers, strict=True):
            build.made_by(endpoint, maker)
    cluster.update(t.upstream_protocol_options(protocol))
    if mtls:
        cluster["transport_socket"] = t.tls_socket(
            {"@type": t.UPSTREAM_TLS, "sni": sni, "common_tls_context": t.mesh_tls_context(dp.mesh, t.uri_sans(exact=peer))}
        )
        if build is not None:
            build.made_by(cluster["transport_socket"], desired.mesh(dp.mesh))
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
