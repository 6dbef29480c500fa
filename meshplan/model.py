"""The desired mesh as typed, validated data (what `validate.parse` returns and `render` consumes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshplan.errors import KUMA_DEFAULT, Source
from meshplan.validate.addresses import http_url

SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"

NAMESPACE_TAG = "k8s.kuma.io/namespace"  # Kuma's label (and inbound tag) for a Kubernetes dataplane's namespace
SYSTEM_NAMESPACE = "kuma-system"  # Kuma's default system namespace: a policy there applies to the whole mesh
# Kuma's policy roles (`kuma.io/policy-role`), in merge order: a later role wins over an earlier one.
SYSTEM_ROLE = "system"
PRODUCER_ROLE = "producer"
CONSUMER_ROLE = "consumer"
WORKLOAD_OWNER_ROLE = "workload-owner"
ROLE_ORDER = (SYSTEM_ROLE, PRODUCER_ROLE, CONSUMER_ROLE, WORKLOAD_OWNER_ROLE)

SIDECAR = "sidecar"
GATEWAY = "gateway"
EGRESS = "egress"


@dataclass(frozen=True)
class Mesh:
    name: str
    mtls: bool
    source: Source | None  # None for the implicit `default` mesh
    zone_egress: bool = True
    forbid_external_by_default: bool = False
    # `skipCreatingInitialPolicies`: kinds of Kuma's initial default policies not created for this mesh, or "*"
    skip_initial_policies: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Inbound:
    address: str
    port: int
    service_address: str
    service_port: int
    tags: dict[str, str]
    name: str = ""  # `networking.inbound[].name`; a Dataplane targetRef's `sectionName` picks it (or its port)

    @property
    def section_name(self) -> str:
        """What a `sectionName` matches, as Kuma: the inbound's name when it has one, otherwise its port."""
        return self.name or str(self.port)

    @property
    def service(self) -> str:
        return self.tags[SERVICE_TAG]

    @property
    def protocol(self) -> str:
        return self.tags.get(PROTOCOL_TAG, "tcp")


@dataclass(frozen=True)
class Outbound:
    address: str
    port: int
    service: str | None = None  # a mesh service (kuma.io/service)
    external: str | None = None  # or a MeshExternalService by name
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataplane:
    name: str
    mesh: str
    address: str
    admin_port: int
    inbounds: tuple[Inbound, ...]
    outbounds: tuple[Outbound, ...]
    source: Source
    # The resource's labels (universal: top-level `labels`; Kubernetes: `metadata.labels`): what a Dataplane
    # targetRef's `labels` match.
    labels: dict[str, str] = field(default_factory=dict)
    # Kubernetes form: `metadata.namespace` (Kuma also sets it as the `k8s.kuma.io/namespace` label and inbound tag,
    # and so does meshplan); None in universal form, which has no namespaces.
    namespace: str | None = None

    @property
    def services(self) -> list[str]:
        return sorted({i.service for i in self.inbounds})


@dataclass(frozen=True)
class ZoneEgress:
    name: str
    address: str
    port: int
    admin_port: int
    source: Source


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    priority: int | None = None  # Envoy locality priority (0 is tried first); None when the file does not set it


@dataclass(frozen=True)
class SANMatch:
    """One `tls.verification.subjectAltNames` entry: the certificate's DNS or IP SAN equals (`Exact`) or starts with
    (`Prefix`) `value`."""

    type: str  # Exact | Prefix
    value: str


@dataclass(frozen=True)
class ExternalTLS:
    enabled: bool
    server_name: str | None = None
    verification: str = "Secured"  # Secured | SkipSAN | SkipCA | SkipAll
    ca_cert_file: str | None = None
    subject_alt_names: tuple[SANMatch, ...] = ()
    # the CA certificate (public data) written in the file: ("inline_bytes", base64) or ("inline_string", PEM text)
    ca_cert_inline: tuple[str, str] | None = None
    min_version: str | None = None  # TLSAuto | TLS10 | TLS11 | TLS12 | TLS13, as written
    max_version: str | None = None
    allow_renegotiation: bool = False


@dataclass(frozen=True)
class MeshExternalService:
    name: str
    mesh: str
    port: int
    protocol: str  # tcp | http | http2 | grpc
    endpoints: tuple[Endpoint, ...]
    tls: ExternalTLS
    source: Source


@dataclass(frozen=True)
class TargetRef:
    kind: str
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    proxy_types: frozenset[str] = frozenset()  # lower-case; empty means sidecars and gateways
    labels: dict[str, str] | None = None  # kind Dataplane: the dataplanes whose resource labels include all of these
    # kind Dataplane: one inbound, by its name or (unnamed) its port; a `to` MeshService: one port of the service,
    # named as Kuma names a MeshService's ports (its inbounds' name, or the port number when unnamed)
    section_name: str | None = None
    # Dataplane, MeshService by name: the namespace the named resource must be in, as Kuma resolves a name: the
    # targetRef's own `namespace`, else (in a policy outside the system namespace) the policy's. None: mesh-wide.
    namespace: str | None = None


@dataclass(frozen=True)
class PolicyItem:
    """One `to` or `from` entry of a policy."""

    target_ref: TargetRef
    default: dict[str, Any]
    index: int
    # The section as written when it is not the one the item acts as: "rules" for a top-level `rules[i]` (Kuma 2.12+),
    # which meshplan reads as a `from` item of kind Mesh. Origins and `explain` name `rules[i]`.
    written_as: str = ""


@dataclass(frozen=True)
class Policy:
    kind: str
    name: str
    mesh: str
    target_ref: TargetRef
    to: tuple[PolicyItem, ...]
    from_: tuple[PolicyItem, ...]
    spec: dict[str, Any]
    source: Source
    spec_path: str  # how the spec is spelled in the file, "spec"
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)  # field path -> line
    # Kubernetes form: `metadata.namespace` outside the system namespace (None: the system namespace, no namespace,
    # or universal form), and Kuma's policy role (`kuma.io/policy-role`) computed from it and the spec.
    namespace: str | None = None
    role: str = SYSTEM_ROLE

    @property
    def scoped(self) -> bool:
        """A consumer or workload-owner policy: it configures only the dataplanes of its own namespace (Kuma's
        `dppSelectedByNamespace`). System and producer policies configure every dataplane their targetRef selects."""
        return self.role in (CONSUMER_ROLE, WORKLOAD_OWNER_ROLE)

    @property
    def scope(self) -> str:
        """The namespace and role in words for origins and `explain`; empty for a system policy."""
        return "" if self.namespace is None else f"namespace {self.namespace!r} {self.role}"

    @property
    def kuma_default(self) -> bool:
        """One of Kuma's initial default policies (validate/initial_policies.py), which no file holds."""
        return self.source == KUMA_DEFAULT

    def source_at(self, path: str) -> Source | None:
        """The line of the field at `path` (as the file spells it: `spec.to[0].default`), if it is written."""
        line = self.lines.get(path)
        return None if line is None else Source(self.source.file, line)


@dataclass
class Desired:
    """Everything in a desired directory, validated."""

    meshes: dict[str, Mesh]
    dataplanes: list[Dataplane]
    egresses: list[ZoneEgress]
    external_services: list[MeshExternalService]
    policies: list[Policy]
    _instances: dict[tuple[str, str], list[tuple[Dataplane, Inbound]]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def mesh(self, name: str) -> Mesh:
        return self.meshes[name]

    def external_service(self, mesh: str, name: str) -> MeshExternalService:
        for mes in self.external_services:
            if mes.mesh == mesh and mes.name == name:
                return mes
        raise KeyError((mesh, name))

    def instances(self, mesh: str, service: str) -> list[tuple[Dataplane, Inbound]]:
        """Every inbound of the service in the mesh, with its dataplane (indexed once: render asks per outbound)."""
        return list(self._index().get((mesh, service), []))

    def service_namespace(self, mesh: str, service: str) -> str | None:
        """The namespace of the service's dataplanes (validation keeps it one); None without namespaces or instances."""
        instances = self._index().get((mesh, service), [])
        return instances[0][0].namespace if instances else None

    def service_ports(self, mesh: str, service: str) -> list[tuple[str, int]]:
        """The ports of a service as Kuma v2.14.3 generates its MeshService from the Dataplanes' inbounds (universal):
        each inbound's port, named by the inbound's `name` or else by its number; distinct, sorted by name."""
        return sorted({(inbound.section_name, inbound.port) for _, inbound in self._index().get((mesh, service), [])})

    def service_section(self, mesh: str, service: str) -> str | None:
        """The name of the service's one port, which every outbound to it reaches; None when it has none or several
        (an outbound carries every port of a service, in one cluster)."""
        names = {name for name, _ in self.service_ports(mesh, service)}
        return next(iter(names)) if len(names) == 1 else None

    def services(self, mesh: str) -> list[str]:
        """Every service of the mesh (its dataplanes' inbounds' `kuma.io/service`), sorted."""
        return sorted(service for in_mesh, service in self._index() if in_mesh == mesh)

    def _index(self) -> dict[tuple[str, str], list[tuple[Dataplane, Inbound]]]:
        if self._instances is None:
            index: dict[tuple[str, str], list[tuple[Dataplane, Inbound]]] = {}
            for dp in self.dataplanes:
                for inbound in dp.inbounds:
                    index.setdefault((dp.mesh, inbound.service), []).append((dp, inbound))
            self._instances = index
        return self._instances

    def proxy_names(self) -> list[str]:
        return [dp.name for dp in self.dataplanes] + [eg.name for eg in self.egresses]


@dataclass(frozen=True)
class ProxyConfig:
    """What one proxy should run: Envoy v3 resources in proto-JSON form, each with its `@type`."""

    name: str
    type: str  # sidecar | egress
    mesh: str | None  # None for the egress, which serves every mesh
    address: str  # where the admin API and the listeners live
    admin_port: int
    clusters: tuple[dict[str, Any], ...]
    listeners: tuple[dict[str, Any], ...]
    # "cluster"|"listener" -> resource name -> steps to a field (keys and list positions) -> the policies that set it
    origins: dict[str, dict[str, dict[tuple[str | int, ...], list[str]]]] = field(default_factory=dict, compare=False)
    # "cluster"|"listener" -> resource name -> steps to a part of it -> the desired resource that made that part
    # (`Dataplane/web (dataplanes.yaml:2)`, a MeshExternalService, the ZoneEgress, the Mesh): what a change no policy
    # made is blamed on
    structure: dict[str, dict[str, dict[tuple[str | int, ...], str]]] = field(default_factory=dict, compare=False)
    # what the proxy's matched policies mean, per client and destination (match/behaviour.py Facts, as JSON)
    behaviour: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @property
    def admin_url(self) -> str:
        return http_url(self.address, self.admin_port)
