"""What one host needs to run a proxy that `meshplan serve` configures: a directory with the Envoy bootstrap and the
proxy's xDS client certificate, and nothing else.

    HOSTDIR/bootstrap.json    ADS to the server over mTLS, node id = the proxy's name, its admin address
    HOSTDIR/xds-client.crt    the certificate that names this proxy to the server (URI SAN), and its key:
    HOSTDIR/xds-client.key    0600
    HOSTDIR/xds-ca.crt        the xDS CA, to check the server's certificate

The bootstrap names these files by their path on the host (`host_dir`, by default where they are written). Mesh
certificates are not here: the server sends them as SDS secrets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meshplan.envoy import types as t
from meshplan.errors import MeshplanError
from meshplan.model import ProxyConfig
from meshplan.util.fsutil import write_atomic
from meshplan.xds import identity

XDS_CLUSTER = "meshplan_xds"
# A server that went away is retried quickly: 0.01-0.24 s to reconnect after an outage, where Envoy's default backoff
# took 3-18 s (XDS-NOTES.md).
RETRY_BACK_OFF = {"base_interval": "0.25s", "max_interval": "2.5s"}
# How long Envoy waits for its first clusters and listeners before it starts anyway. 0s: never start empty; an Envoy
# whose server has no snapshot for it yet stays not ready (/ready 503) until `apply` delivers one.
INITIAL_FETCH_TIMEOUT = "0s"
FILES = ("bootstrap.json", "xds-client.crt", "xds-client.key", "xds-ca.crt")


def split_address(xds: str, option: str = "--xds") -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); MeshplanError naming `option` if it is not one."""
    host, sep, port = xds.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MeshplanError(f"{option} must be HOST:PORT, got {xds!r}")
    return host, int(port)



def bootstrap(proxy: ProxyConfig, xds: str, host_dir: Path) -> dict[str, Any]:
    host, port = split_address(xds)
    ads = {"resource_api_version": "V3", "ads": {}, "initial_fetch_timeout": INITIAL_FETCH_TIMEOUT}
    tls = {
        "@type": t.UPSTREAM_TLS,
        "common_tls_context": {
            "alpn_protocols": ["h2"],  # gRPC servers refuse TLS without ALPN h2
            "tls_certificates": [{"certificate_chain": {"filename": str(host_dir / "xds-client.crt")},
                                  "private_key": {"filename": str(host_dir / "xds-client.key")}}],
            "validation_context": {
                "trusted_ca": {"filename": str(host_dir / "xds-ca.crt")},
                "match_typed_subject_alt_names": t.uri_sans(exact=[identity.SERVER_ID]),
            },
        },
    }
    cluster = {
        "name": XDS_CLUSTER,
        "type": t.discovery_type([host]),
        "connect_timeout": "1s",
        "load_assignment": t.load_assignment(XDS_CLUSTER, [(host, port)]),
        "typed_extension_protocol_options": t.upstream_protocol_options("grpc")["typed_extension_protocol_options"],
        "upstream_connection_options": {"tcp_keepalive": {}},  # a server host that vanished is noticed
        "transport_socket": t.tls_socket(tls),
    }
    return {
        "node": {"id": proxy.name, "cluster": proxy.mesh or proxy.type, "metadata": {"type": proxy.type, "mesh": proxy.mesh or ""}},
        "admin": {"address": t.socket_address(proxy.address, proxy.admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER, "retry_policy": {"retry_back_off": RETRY_BACK_OFF}}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {"clusters": [cluster]},
    }


def write_host_dir(state_dir: Path, proxy: ProxyConfig, xds: str, out: Path, host_dir: Path | None = None) -> list[Path]:
    """Write what the host of `proxy` needs into `out` (created if missing); return the files written."""
    files = identity.ensure_client(state_dir, proxy.name)
    out.mkdir(parents=True, exist_ok=True)
    where = (host_dir or out).absolute()
    written = [out / name for name in FILES]
    write_atomic(written[0], (json.dumps(bootstrap(proxy, xds, where), indent=2) + "\n").encode())
    write_atomic(written[1], files.cert.read_bytes())
    write_atomic(written[2], files.key.read_bytes(), 0o600)
    write_atomic(written[3], files.ca.read_bytes())
    return written
