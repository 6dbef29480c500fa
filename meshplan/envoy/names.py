"""Stable names of rendered resources (docs/names.md). A renamed resource is a delete plus a create in a plan."""

from __future__ import annotations

EGRESS_IDENTITY = "zone-egress"


def inbound_listener(address: str, port: int) -> str:
    return f"inbound:{address}:{port}"


def outbound_listener(address: str, port: int) -> str:
    return f"outbound:{address}:{port}"


def egress_listener(address: str, port: int) -> str:
    return f"egress:{address}:{port}"


def local_cluster(address: str, port: int) -> str:
    return f"local:{address}:{port}"


def service_cluster(service: str) -> str:
    return service


def external_cluster(mesh: str, name: str) -> str:
    return f"mes:{mesh}:{name}"


def service_sni(mesh: str, service: str) -> str:
    return f"{service}.{mesh}.mesh"


def external_sni(mesh: str, name: str) -> str:
    return f"{name}.{mesh}.mes"


def spiffe_id(mesh: str, service: str) -> str:
    return f"spiffe://{mesh}/{service}"


def identity_secret(mesh: str) -> str:
    """The SDS secret holding a proxy's own certificate and key in `mesh` (each proxy gets its own under this name)."""
    return f"identity:{mesh}"


def ca_secret(mesh: str) -> str:
    """The SDS secret holding `mesh`'s CA certificate, which peers' certificates are checked against."""
    return f"ca:{mesh}"


def secret_mesh(secret: str) -> tuple[str, str] | None:
    """("identity" or "ca", mesh) for a name `identity_secret` or `ca_secret` made, else None."""
    kind, sep, mesh = secret.partition(":")
    return (kind, mesh) if sep and mesh and kind in ("identity", "ca") else None


XDS_PROXY_PREFIX = "spiffe://meshplan-xds/proxy/"


def xds_proxy_id(proxy: str) -> str:
    """The URI SAN of the client certificate that identifies a proxy to `meshplan serve`."""
    return XDS_PROXY_PREFIX + proxy


def proxy_of_xds_id(uri: str) -> str | None:
    return uri[len(XDS_PROXY_PREFIX):] or None if uri.startswith(XDS_PROXY_PREFIX) else None


def tag_id(tag: str, value: str) -> str:
    """A URI SAN naming one tag of a workload, so that a client's tags can be matched from its certificate."""
    return f"kuma://{tag}/{value}"


def trace_cluster(provider: str) -> str:
    """The cluster of a MeshTrace collector (Kuma's name: one tracer per proxy, so one per provider)."""
    return f"meshtrace:{provider}"


def access_log_cluster(index: int) -> str:
    """The cluster of a MeshAccessLog OpenTelemetry collector: Kuma numbers a proxy's distinct endpoints from 0."""
    return f"meshaccesslog:opentelemetry:{index}"


def metrics_listener(client_id: str) -> str:
    """The listener of a MeshMetric Prometheus endpoint, one per backend (by its clientId)."""
    return f"_kuma:metrics:prometheus:{client_id}"


ADMIN_CLUSTER = "_kuma:envoy:admin"  # the proxy's own admin API, which a MeshMetric endpoint forwards to
