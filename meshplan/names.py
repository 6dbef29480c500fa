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


def tag_id(tag: str, value: str) -> str:
    """A URI SAN naming one tag of a workload, so that a client's tags can be matched from its certificate."""
    return f"kuma://{tag}/{value}"
