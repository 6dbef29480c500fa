"""Mesh mTLS material: one CA per mesh, one certificate per proxy with SPIFFE URI SANs.

`paths` says where each file lives under state/; `ensure` creates what is missing. Rendered config names them as
SDS secrets (docs/names.md) and `meshplan serve` sends each proxy its own (meshplan/xds/snapshot.py). Private keys
are written 0600 and are never read back into any output.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshplan.envoy import names
from meshplan.model import SERVICE_TAG, Desired
from meshplan.util.fsutil import write_atomic

CA_LIFETIME = datetime.timedelta(days=3650)
CERT_LIFETIME = datetime.timedelta(days=365)


@dataclass(frozen=True)
class CertPaths:
    ca: Path
    cert: Path
    key: Path


def ca_paths(state_dir: Path, mesh: str) -> tuple[Path, Path]:
    base = state_dir / "pki" / mesh
    return base / "ca.crt", base / "ca.key"


def paths(state_dir: Path, mesh: str, proxy: str) -> CertPaths:
    ca_cert, _ = ca_paths(state_dir, mesh)
    base = state_dir / "pki" / mesh / "proxies"
    return CertPaths(ca_cert, base / f"{proxy}.crt", base / f"{proxy}.key")


def identities(desired: Desired) -> dict[tuple[str, str], list[str]]:
    """(mesh, proxy) -> the SPIFFE IDs its certificate carries, for every proxy in a mesh with mTLS."""
    out: dict[tuple[str, str], list[str]] = {}
    for dp in desired.dataplanes:
        if desired.mesh(dp.mesh).mtls:
            tags = sorted({(k, v) for i in dp.inbounds for k, v in i.tags.items() if k != SERVICE_TAG})
            out[(dp.mesh, dp.name)] = [names.spiffe_id(dp.mesh, s) for s in dp.services] + [names.tag_id(k, v) for k, v in tags]
    meshes_with_externals = sorted({m.mesh for m in desired.external_services if desired.mesh(m.mesh).mtls})
    for egress in desired.egresses:
        for mesh in meshes_with_externals:
            out[(mesh, egress.name)] = [names.spiffe_id(mesh, names.EGRESS_IDENTITY)]
    return out


def ensure(desired: Desired, state_dir: Path) -> list[Path]:
    """Create every missing CA and certificate (or one whose identities changed); return the files written."""
    written: list[Path] = []
    cas: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}
    for (mesh, proxy), spiffe_ids in sorted(identities(desired).items()):
        if mesh not in cas:
            cert_path, key_path = ca_paths(state_dir, mesh)
            cas[mesh] = load_or_create_ca(cert_path, key_path, f"{mesh} CA", f"spiffe://{mesh}", written)
        target = paths(state_dir, mesh, proxy)
        if not current(target, cas[mesh][0], spiffe_ids):
            issue(target, *cas[mesh], proxy, spiffe_ids, written)
    return written


def issue(
    target: CertPaths,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    uris: list[str],
    written: list[Path],
    dns: tuple[str, ...] = (),
) -> None:
    """Write a new key and a certificate for it, signed by the CA, with these URI (and DNS) SANs, for both ends of
    mTLS."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([*(x509.UniformResourceIdentifier(i) for i in uris),
                                                    *(x509.DNSName(d) for d in dns)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(target.key, key)
    _write(target.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    written += [target.cert, target.key]


def load_or_create_ca(
    cert_path: Path, key_path: Path, common_name: str, uri: str, written: list[Path]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshplan"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    written += [cert_path, key_path]
    return cert, key


def current(target: CertPaths, ca_cert: x509.Certificate, spiffe_ids: list[str]) -> bool:
    """Whether `target` holds a certificate and key, issued by this CA, with exactly these URI SANs."""
    if not (target.cert.exists() and target.key.exists()):
        return False
    cert = x509.load_pem_x509_certificate(target.cert.read_bytes())
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(sans.get_values_for_type(x509.UniformResourceIdentifier)) == sorted(spiffe_ids)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(path, pem, 0o600)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode)  # the temporary file is 0600 from the start: a key is never readable by others
