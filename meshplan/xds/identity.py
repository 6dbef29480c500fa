"""Who may talk to `meshplan serve`: a CA of its own, the server's certificate, one client certificate per proxy.

Mesh certificates name services, which many instances share, so they cannot tell one proxy from another. The xDS
CA is separate: each proxy's client certificate carries one URI SAN naming that proxy (`names.xds_proxy_id`), and
the server refuses a stream whose node id is another proxy's. Files live under `<state>/xds/pki/` (keys 0600).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshplan.envoy import names
from meshplan.xds import pki

SERVER_ID = "spiffe://meshplan-xds/server"
# Envoy checks the server by its URI SAN; gRPC clients check a host name, so the certificate carries one too (a
# client connecting by address names it with the `grpc.ssl_target_name_override` channel option).
SERVER_NAME = "meshplan-serve"


def ca_paths(state_dir: Path) -> tuple[Path, Path]:
    base = state_dir / "xds" / "pki"
    return base / "ca.crt", base / "ca.key"


def server_paths(state_dir: Path) -> pki.CertPaths:
    ca, _ = ca_paths(state_dir)
    return pki.CertPaths(ca, ca.parent / "server.crt", ca.parent / "server.key")


def client_paths(state_dir: Path, proxy: str) -> pki.CertPaths:
    ca, _ = ca_paths(state_dir)
    return pki.CertPaths(ca, ca.parent / "proxies" / f"{proxy}.crt", ca.parent / "proxies" / f"{proxy}.key")


def _ca(state_dir: Path, written: list[Path]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert, key = ca_paths(state_dir)
    return pki.load_or_create_ca(cert, key, "meshplan xDS CA", "spiffe://meshplan-xds", written)


def ensure_server(state_dir: Path) -> pki.CertPaths:
    """The server's certificate (and the xDS CA), created if missing."""
    written: list[Path] = []
    ca = _ca(state_dir, written)
    target = server_paths(state_dir)
    if not pki.current(target, ca[0], [SERVER_ID]):
        pki.issue(target, *ca, "meshplan serve", [SERVER_ID], written, dns=(SERVER_NAME,))
    return target


def ensure_client(state_dir: Path, proxy: str) -> pki.CertPaths:
    """The client certificate that identifies `proxy` to the server (and the xDS CA), created if missing."""
    written: list[Path] = []
    ca = _ca(state_dir, written)
    target = client_paths(state_dir, proxy)
    if not pki.current(target, ca[0], [names.xds_proxy_id(proxy)]):
        pki.issue(target, *ca, "meshplan xDS client", [names.xds_proxy_id(proxy)], written)
    return target


def proxy_of(uris: list[str]) -> str | None:
    """The proxy a client certificate's URI SANs name, if exactly one does."""
    found = [p for p in (names.proxy_of_xds_id(u) for u in uris) if p is not None]
    return found[0] if len(found) == 1 else None
