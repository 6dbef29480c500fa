"""A proxy's snapshot: everything `meshplan serve` sends one proxy — its clusters, listeners and secrets — under one
version, as protobuf.

`apply` builds a snapshot once per proxy, from the plan's resources (proto-JSON, converted to protobuf here and only
here: ~90 ms per 1,000 clusters, XDS-NOTES.md) and the proxy's own certificates from the state's PKI; the store
keeps it serialized; the server decodes it and sends its resources as they are.

Serialized, a snapshot is an `envoy.service.discovery.v3.DeltaDiscoveryResponse`: `system_version_info` is the
snapshot's version and each `Resource` carries its name beside the packed resource, so that nothing has to be
unpacked to be sent. It holds private keys: whoever stores it keeps it 0600.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format, message_factory
from google.protobuf.message import DecodeError

from meshplan.compare.canonical import CanonicalError, message_descriptor
from meshplan.envoy import names
from meshplan.envoy.types import CLUSTER, LISTENER, SECRET, secret_names
from meshplan.errors import MeshplanError
from meshplan.xds import pki
from meshplan.xds.encode import EncodeError, encode

# The order a control plane sends types in (clusters before the listeners that use them); secrets are asked for by
# name, by the clusters and listeners that reference them.
TYPES = (CLUSTER, LISTENER, SECRET)
KIND = {CLUSTER: "cluster", LISTENER: "listener", SECRET: "secret"}


class SnapshotError(MeshplanError):
    pass


@dataclass(frozen=True)
class Snapshot:
    """One proxy's resources by type (type URL -> name -> packed resource), under one version."""

    version: str
    resources: Mapping[str, Mapping[str, any_pb2.Any]] = field(default_factory=dict)
    encoded: bytes = field(default=b"", compare=False, repr=False)  # what `decode` read: `encode` gives it back

    def of(self, type_url: str) -> Mapping[str, any_pb2.Any]:
        return self.resources.get(type_url, {})

    def encode(self) -> bytes:
        if self.encoded:
            return self.encoded
        message = discovery_pb2.DeltaDiscoveryResponse(system_version_info=self.version)
        for type_url in TYPES:
            for name, packed in sorted(self.of(type_url).items()):
                message.resources.add(name=name, resource=packed)
        encoded: bytes = message.SerializeToString(deterministic=True)
        return encoded

    @classmethod
    def decode(cls, data: bytes) -> Snapshot:
        message = discovery_pb2.DeltaDiscoveryResponse()
        try:
            message.ParseFromString(data)
        except DecodeError as e:
            raise SnapshotError(f"not a snapshot: {e}") from None
        resources: dict[str, dict[str, any_pb2.Any]] = {t: {} for t in TYPES}
        for resource in message.resources:
            kind = resources.get(resource.resource.type_url)
            if kind is None:
                raise SnapshotError(f"a snapshot cannot hold a {resource.resource.type_url!r}")
            kind[resource.name] = resource.resource
        return cls(message.system_version_info, resources, data)

    def with_version(self, version: str) -> Snapshot:
        return Snapshot(version, self.resources)


# --- building one, from proto-JSON and the PKI -----------------------------------------------------------------


_packed: dict[str, tuple[bytes, frozenset[str]]] = {}  # proto-JSON text -> (serialized, the secrets it names)


def _pack_one(type_url: str, resource: Mapping[str, Any]) -> tuple[bytes, frozenset[str]]:
    """A proto-JSON resource as a serialized message, and the secrets it names. Kept by content: a fleet repeats
    its clusters (every sidecar of a mesh that calls `backend` has the same `backend` cluster, secrets being named,
    not inlined)."""
    key = json.dumps(resource)
    found = _packed.get(key)
    if found is None:
        body = {k: v for k, v in resource.items() if k != "@type"}
        try:
            found = encode(type_url, body), frozenset(secret_names([dict(resource)]))
        except (EncodeError, CanonicalError) as e:
            raise SnapshotError(f"{type_url.rpartition('.')[2]} {body.get('name', '?')!r}: {e}") from None
        if len(_packed) >= 8192:
            _packed.clear()
        _packed[key] = found
    return found


def _message_class(type_url: str) -> Any:
    try:
        return message_factory.GetMessageClass(message_descriptor(type_url))
    except CanonicalError as e:
        raise SnapshotError(str(e)) from None


def pack(resources: Iterable[Mapping[str, Any]]) -> tuple[dict[str, dict[str, any_pb2.Any]], set[str]]:
    """Proto-JSON resources (each with `@type` and `name`) as packed messages, by type and name; and the secrets
    they name."""
    out: dict[str, dict[str, any_pb2.Any]] = {}
    named: set[str] = set()
    for resource in resources:
        type_url, name = resource.get("@type"), resource.get("name")
        if type_url not in (CLUSTER, LISTENER) or not isinstance(name, str):
            raise SnapshotError(f"not a named cluster or listener: {str(resource)[:120]}")
        value, secrets_named = _pack_one(type_url, resource)
        out.setdefault(type_url, {})[name] = any_pb2.Any(type_url=type_url, value=value)
        named |= secrets_named
    return out, named


def secrets(state_dir: Path, proxy: str, wanted: Iterable[str]) -> dict[str, any_pb2.Any]:
    """The secrets `wanted` of one proxy, from the state's PKI: its own certificate and key for `identity:<mesh>`,
    the mesh CA for `ca:<mesh>`. Raises SnapshotError for a name meshplan does not make or a file that is missing."""
    out: dict[str, any_pb2.Any] = {}
    for name in sorted(wanted):
        parsed = names.secret_mesh(name)
        if parsed is None:
            raise SnapshotError(f"{proxy}: no secret named {name!r} (meshplan serves identity:<mesh> and ca:<mesh>)")
        kind, mesh = parsed
        files = pki.paths(state_dir, mesh, proxy)
        try:
            if kind == "identity":
                secret = secret_pb2.Secret(name=name)
                secret.tls_certificate.certificate_chain.inline_bytes = files.cert.read_bytes()
                secret.tls_certificate.private_key.inline_bytes = files.key.read_bytes()
            else:
                secret = secret_pb2.Secret(name=name)
                secret.validation_context.trusted_ca.inline_bytes = files.ca.read_bytes()
        except FileNotFoundError as e:
            raise SnapshotError(f"{proxy}: the certificate for mesh {mesh!r} is missing ({e.filename}); "
                                "`meshplan apply DIR` creates the certificates a desired directory needs") from None
        packed = any_pb2.Any()
        packed.Pack(secret)
        out[name] = packed
    return out


def build(
    state_dir: Path, proxy: str, version: str, clusters: Sequence[Mapping[str, Any]], listeners: Sequence[Mapping[str, Any]]
) -> Snapshot:
    """The snapshot of one proxy: these clusters and listeners, and the secrets they name."""
    packed, named = pack([*clusters, *listeners])
    resources = {CLUSTER: {}, LISTENER: {}, **packed}
    resources[SECRET] = secrets(state_dir, proxy, named)
    return Snapshot(version, resources)


def to_json(snapshot: Snapshot) -> Iterator[dict[str, Any]]:
    """The clusters and listeners of a snapshot as proto-JSON (never its secrets)."""
    for type_url in (CLUSTER, LISTENER):
        for packed in snapshot.of(type_url).values():
            message = _message_class(type_url)()
            packed.Unpack(message)
            resource: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
            yield {"@type": type_url, **resource}
