"""Check loaded resources and turn them into the typed model, reporting every violation at once.

`parse` is the one entry point: it never stops at the first problem, and it returns a `Desired` only when there are
none. The infrastructure kinds (Mesh, Dataplane, ZoneEgress, MeshExternalService) and the references between
resources are checked here; the rules all policies share in `policy_rules.py`; a policy kind's own fields by its
module in `meshplan/policies/`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from meshplan import names
from meshplan.addresses import endpoint_problem
from meshplan.errors import LoadError, Source, Violation
from meshplan.check import FieldCheck
from meshplan.load import PathKey, RawResource, format_path, load_dir
from meshplan.model import (
    PROTOCOL_TAG,
    SERVICE_TAG,
    Dataplane,
    Desired,
    Endpoint,
    ExternalTLS,
    Inbound,
    Mesh,
    MeshExternalService,
    Outbound,
    Policy,
    ZoneEgress,
)
from meshplan.policies import KINDS
from meshplan.policies.registry import BY_KIND
from meshplan.policy_rules import parse_policy

INFRA_KINDS = ("Mesh", "Dataplane", "ZoneEgress", "MeshExternalService")
PROTOCOLS = ("tcp", "http", "http2", "grpc")
TLS_MODES = ("Secured", "SkipSAN", "SkipCA", "SkipAll")
DEFAULT_MESH = "default"
DEFAULT_ADMIN_PORT = 9901
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names become file and directory names under state/: keep them to one safe path segment. Both are used with
# fullmatch: `$` would also match before a final newline, and `web\n` would name a directory.
TAG_VALUE = re.compile(r"[A-Za-z0-9.\-_:]+")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# A proxy's name is the common name of its certificate, and a mesh's CA is "<mesh> CA": X.509 allows 64 characters.
MAX_PROXY_NAME = 64
MAX_MESH_NAME = 64 - len(" CA")
MAX_SNI = 255  # Envoy's limit for a TLS server name, which carries service and mesh names (names.service_sni)

def load_and_parse(root: Path) -> Desired:
    """Load a desired directory and validate it; raise LoadError with every violation."""
    raws, violations = load_dir(root)
    desired, more = parse(raws)
    violations += more
    if violations or desired is None:
        raise LoadError(violations)
    return desired


def parse(raws: list[RawResource]) -> tuple[Desired | None, list[Violation]]:
    out: list[Violation] = []
    meshes: dict[str, Mesh] = {}
    dataplanes: list[Dataplane] = []
    egresses: list[ZoneEgress] = []
    externals: list[MeshExternalService] = []
    policies: list[Policy] = []
    seen: dict[tuple[str, str | None, str], RawResource] = {}
    kept: list[tuple[RawResource, Any]] = []

    for res in raws:
        check = FieldCheck(res, out)
        if res.kind not in INFRA_KINDS and res.kind not in KINDS:
            known = ", ".join(list(INFRA_KINDS) + sorted(KINDS))
            out.append(Violation(res.source, "kind" if res.form == "kubernetes" else "type",
                                 f"unknown kind {res.kind!r} (known: {known})"))
            continue
        if res.name is None:
            continue  # already reported by load
        name_field = ("metadata", "name") if res.form == "kubernetes" else ("name",)
        name_at = Source(res.source.file, res.lines.get(name_field, res.source.line))
        if not SAFE_NAME.fullmatch(res.name) or res.name in (".", ".."):
            out.append(Violation(name_at, format_path(name_field),
                                 f"name {res.name!r} could escape a directory when used in a path: "
                                 "use letters, digits, '.', '-' and '_', starting with a letter or digit"))
            continue
        mesh_name = None if res.kind in ("Mesh", "ZoneEgress") else (res.mesh or DEFAULT_MESH)
        if mesh_name is not None and (not SAFE_NAME.fullmatch(mesh_name) or mesh_name in (".", "..")):
            out.append(Violation(res.source, "mesh", f"mesh name {mesh_name!r} could escape a directory when used in a path"))
            continue
        too_long = _name_too_long(res.kind, res.name, mesh_name)
        if too_long is not None:
            out.append(Violation(name_at, format_path(name_field), too_long))
            continue
        key = (res.kind, mesh_name, res.name)
        if key in seen:
            first = seen[key]
            out.append(Violation(res.source, "", f"duplicate {res.kind} {res.name!r}"
                                 f"{' in mesh ' + repr(mesh_name) if mesh_name else ''}: first defined at {first.source}"))
            continue
        seen[key] = res
        if res.kind == "Mesh":
            mesh = _mesh(check, res)
            if mesh is not None:
                meshes[mesh.name] = mesh
        elif res.kind == "Dataplane":
            dp = _dataplane(check, res, mesh_name or DEFAULT_MESH)
            if dp is not None:
                dataplanes.append(dp)
                kept.append((res, dp))
        elif res.kind == "ZoneEgress":
            eg = _egress(check, res)
            if eg is not None:
                egresses.append(eg)
                kept.append((res, eg))
        elif res.kind == "MeshExternalService":
            mes = _external(check, res, mesh_name or DEFAULT_MESH)
            if mes is not None:
                externals.append(mes)
                kept.append((res, mes))
        else:
            policy = parse_policy(check, res, mesh_name or DEFAULT_MESH)
            if policy is not None:
                policies.append(policy)
                kept.append((res, policy))

    meshes.setdefault(DEFAULT_MESH, Mesh(DEFAULT_MESH, mtls=False, source=None))
    desired = Desired(meshes, dataplanes, egresses, externals, policies)
    _check_references(desired, kept, out)
    return (None if out else desired), out


def _name_too_long(kind: str, name: str, mesh: str | None) -> str | None:
    """Names pass into certificates and TLS server names, which have length limits of their own."""
    if kind in ("Dataplane", "ZoneEgress") and len(name) > MAX_PROXY_NAME:
        return (f"a proxy name may have at most {MAX_PROXY_NAME} characters (it is the common name of the proxy's "
                f"certificate, which X.509 limits to 64), got {len(name)}")
    if kind == "Mesh" and len(name) > MAX_MESH_NAME:
        return (f"a mesh name may have at most {MAX_MESH_NAME} characters (its CA's common name is '<mesh> CA', "
                f"which X.509 limits to 64), got {len(name)}")
    if kind == "MeshExternalService" and mesh is not None and len(names.external_sni(mesh, name)) > MAX_SNI:
        return (f"too long: the TLS server name of this external service, {names.external_sni(mesh, '<name>')}, "
                f"may have at most {MAX_SNI} characters")
    return None


# --- infrastructure kinds -------------------------------------------------------------------------------------


def _mesh(check: FieldCheck, res: RawResource) -> Mesh | None:
    body = res.body
    # meshplan creates no initial policies, so `skipCreatingInitialPolicies` is honoured whatever it says.
    check.unknown(body, (), ("mtls", "routing", "skipCreatingInitialPolicies"),
                  ("networking", "meshServices", "logging", "tracing", "metrics", "constraints"))
    mtls = check.field(body, (), "mtls", dict, default={})
    check.unknown(mtls, ("mtls",), ("enabledBackend", "backends"), ("skipValidation",))
    enabled = check.field(mtls, ("mtls",), "enabledBackend", str)
    backends = check.field(mtls, ("mtls",), "backends", list, default=[])
    names = []
    for i, backend in enumerate(backends):
        path = ("mtls", "backends", i)
        if not isinstance(backend, dict):
            check.fail(path, "must be a mapping")
            continue
        check.unknown(backend, path, ("name", "type"), ("mode", "dpCert", "conf", "rootChain"))
        name = check.field(backend, path, "name", str, required=True)
        kind = check.field(backend, path, "type", str, required=True)
        if kind is not None and kind != "builtin":
            check.fail(path + ("type",), f"unsupported CA backend type {kind!r}: meshplan supports `builtin`")
        names.append(name)
    if enabled and enabled not in names:
        check.fail(("mtls", "enabledBackend"), f"no backend named {enabled!r} in mtls.backends")
    routing = check.field(body, (), "routing", dict, default={})
    check.unknown(routing, ("routing",), ("zoneEgress", "defaultForbidMeshExternalServiceAccess"),
                  ("localityAwareLoadBalancing",))
    zone_egress = check.field(routing, ("routing",), "zoneEgress", bool, default=True)
    forbid = check.field(routing, ("routing",), "defaultForbidMeshExternalServiceAccess", bool, default=False)
    assert res.name is not None
    return Mesh(res.name, mtls=bool(enabled), source=res.source, zone_egress=zone_egress, forbid_external_by_default=forbid)


def _dataplane(check: FieldCheck, res: RawResource, mesh: str) -> Dataplane | None:
    before = len(check.out)
    check.unknown(res.body, (), ("networking",))
    net = check.field(res.body, (), "networking", dict, required=True, default={})
    np: PathKey = ("networking",)
    check.unknown(net, np, ("address", "admin", "inbound", "outbound"), ("advertisedAddress", "transparentProxying", "gateway"))
    address = check.address(net, np, "address")
    admin = check.field(net, np, "admin", dict, default={})
    check.unknown(admin, np + ("admin",), ("port",))
    admin_port = check.port(admin, np + ("admin",), "port", required=False, default=DEFAULT_ADMIN_PORT)
    inbounds: list[Inbound] = []
    raw_inbounds = check.field(net, np, "inbound", list, default=[])
    if not raw_inbounds:
        check.fail(np + ("inbound",) if "inbound" in net else np, "a Dataplane needs at least one inbound with a `kuma.io/service` tag")
    for i, item in enumerate(raw_inbounds):
        path = np + ("inbound", i)
        if not isinstance(item, dict):
            check.fail(path, "must be a mapping")
            continue
        check.unknown(item, path, ("port", "servicePort", "serviceAddress", "address", "tags", "name"), ("state", "health"))
        port = check.port(item, path, "port")
        service_port = check.port(item, path, "servicePort", required=False, default=port)
        service_address = check.address(item, path, "serviceAddress", required=False, default="127.0.0.1")
        inbound_address = check.address(item, path, "address", required=False, default=address)
        tags = check.tags(item, path, "tags", required=True)
        if "tags" in item and isinstance(item["tags"], dict) and SERVICE_TAG not in item["tags"]:
            check.fail(path + ("tags",), f"an inbound needs a `{SERVICE_TAG}` tag")
        for tag, value in tags.items():
            if not TAG_VALUE.fullmatch(value):
                # tags go into certificates as kuma://<tag>/<value> URI SANs
                check.fail(path + ("tags", tag), f"tag value {value!r} may hold only letters, digits, '.', '-', '_' and ':'")
        service = tags.get(SERVICE_TAG)
        if service is not None and len(names.service_sni(mesh, service)) > MAX_SNI:
            check.fail(path + ("tags", SERVICE_TAG), f"too long: the TLS server name of this service, "
                       f"{names.service_sni(mesh, '<service>')}, may have at most {MAX_SNI} characters")
        protocol = tags.get(PROTOCOL_TAG)
        if protocol is not None and protocol not in PROTOCOLS:
            check.fail(path + ("tags", PROTOCOL_TAG), f"unknown protocol {protocol!r} (expected one of: {', '.join(PROTOCOLS)})")
        if None not in (port, service_port, service_address, inbound_address) and SERVICE_TAG in tags:
            inbounds.append(Inbound(inbound_address, port, service_address, service_port, tags))  # type: ignore[arg-type]
    outbounds: list[Outbound] = []
    for i, item in enumerate(check.field(net, np, "outbound", list, default=[])):
        path = np + ("outbound", i)
        if not isinstance(item, dict):
            check.fail(path, "must be a mapping")
            continue
        check.unknown(item, path, ("port", "address", "tags", "backendRef"))
        port = check.port(item, path, "port")
        out_address = check.address(item, path, "address", required=False, default="127.0.0.1")
        tags = check.tags(item, path, "tags")
        ref = check.field(item, path, "backendRef", dict)
        service = external = None
        if ref is not None and tags:
            check.fail(path, "set either `tags` or `backendRef`, not both")
        elif ref is not None:
            check.unknown(ref, path + ("backendRef",), ("kind", "name"), ("port", "labels"))
            kind = check.field(ref, path + ("backendRef",), "kind", str, required=True)
            name = check.field(ref, path + ("backendRef",), "name", str, required=True)
            if kind == "MeshExternalService":
                external = name
            elif kind == "MeshService":
                service = name
            elif kind is not None:
                check.fail(path + ("backendRef", "kind"), f"must be MeshService or MeshExternalService, got {kind!r}")
        elif SERVICE_TAG in tags:
            service = tags[SERVICE_TAG]
        else:
            check.fail(path, f"an outbound needs `tags` with `{SERVICE_TAG}` or a `backendRef`")
        if port is not None and out_address is not None and (service or external):
            outbounds.append(Outbound(out_address, port, service, external, tags))
    if len(check.out) > before or address is None or admin_port is None:
        return None
    assert res.name is not None
    dp = Dataplane(res.name, mesh, address, admin_port, tuple(inbounds), tuple(outbounds), res.source)
    _check_sockets(check, _dataplane_sockets(dp))
    return dp if len(check.out) == before else None


def _dataplane_sockets(dp: Dataplane) -> list[tuple[str, int, PathKey, str]]:
    np: PathKey = ("networking",)
    sockets: list[tuple[str, int, PathKey, str]] = [(dp.address, dp.admin_port, np + ("admin", "port"), "the admin API")]
    for i, inbound in enumerate(dp.inbounds):
        sockets.append((inbound.address, inbound.port, np + ("inbound", i, "port"), f"inbound[{i}]"))
    for i, inbound in enumerate(dp.inbounds):
        sockets.append((inbound.service_address, inbound.service_port, np + ("inbound", i, "servicePort"),
                        f"the application of inbound[{i}]"))
    for i, outbound in enumerate(dp.outbounds):
        sockets.append((outbound.address, outbound.port, np + ("outbound", i, "port"), f"outbound[{i}]"))
    return sockets


def _check_sockets(check: FieldCheck, sockets: list[tuple[str, int, PathKey, str]]) -> None:
    """A port may be used once per address on a proxy (`::1` and `0:0::1` are one address; addresses are specific,
    see addresses.address_problem, so none overlaps another)."""
    taken: dict[tuple[IPAddress, int], str] = {}
    apps: set[tuple[IPAddress, int]] = set()
    for address, port, path, what in sockets:
        socket = (ipaddress.ip_address(address), port)
        if what.startswith("the application"):
            if socket in apps:
                continue  # two inbounds may front the same application
            apps.add(socket)
        if socket in taken:
            check.fail(path, f"port {port} on {address} is used twice on this proxy: already by {taken[socket]}")
        else:
            taken[socket] = what


def _egress(check: FieldCheck, res: RawResource) -> ZoneEgress | None:
    before = len(check.out)
    check.unknown(res.body, (), ("networking",))
    net = check.field(res.body, (), "networking", dict, required=True, default={})
    np: PathKey = ("networking",)
    check.unknown(net, np, ("address", "port", "admin"), ("advertisedAddress", "advertisedPort"))
    address = check.address(net, np, "address")
    port = check.port(net, np, "port")
    admin = check.field(net, np, "admin", dict, default={})
    check.unknown(admin, np + ("admin",), ("port",))
    admin_port = check.port(admin, np + ("admin",), "port", required=False, default=DEFAULT_ADMIN_PORT)
    if port is not None and port == admin_port:
        check.fail(np + ("port",), f"port {port} is used twice on this proxy: already by the admin API")
    if len(check.out) > before:
        return None
    assert res.name is not None and address is not None and port is not None and admin_port is not None
    return ZoneEgress(res.name, address, port, admin_port, res.source)


def _external(check: FieldCheck, res: RawResource, mesh: str) -> MeshExternalService | None:
    before = len(check.out)
    body = res.body
    check.unknown(body, (), ("match", "endpoints", "tls"), ("extension",))
    match = check.field(body, (), "match", dict, required=True, default={})
    check.unknown(match, ("match",), ("type", "port", "protocol"))
    match_type = check.field(match, ("match",), "type", str, default="HostnameGenerator")
    if match_type != "HostnameGenerator":
        check.fail(("match", "type"), f"must be HostnameGenerator, got {match_type!r}")
    port = check.port(match, ("match",), "port")
    protocol = check.field(match, ("match",), "protocol", str, default="tcp")
    if protocol not in PROTOCOLS:
        check.fail(("match", "protocol"), f"unknown protocol {protocol!r} (expected one of: {', '.join(PROTOCOLS)})")
    endpoints: list[Endpoint] = []
    raw_endpoints = check.field(body, (), "endpoints", list, required=True, default=[])
    if "endpoints" in body and not raw_endpoints:
        check.fail(("endpoints",), "needs at least one endpoint")
    for i, item in enumerate(raw_endpoints):
        path: PathKey = ("endpoints", i)
        if not isinstance(item, dict):
            check.fail(path, "must be a mapping")
            continue
        check.unknown(item, path, ("address", "port"))
        address = check.field(item, path, "address", str, required=True)
        problem = None if address is None else endpoint_problem(address)
        if problem is not None:
            check.fail(path + ("address",), problem)
            address = None
        ep_port = check.port(item, path, "port", required=False, default=port)
        if address is not None and ep_port is not None:
            endpoints.append(Endpoint(address, ep_port))
    tls = _external_tls(check, check.field(body, (), "tls", dict, default={}))
    if len(check.out) > before:
        return None
    assert res.name is not None and port is not None
    return MeshExternalService(res.name, mesh, port, protocol, tuple(endpoints), tls, res.source)


def _external_tls(check: FieldCheck, tls: dict[str, Any]) -> ExternalTLS:
    path: PathKey = ("tls",)
    check.unknown(tls, path, ("enabled", "verification"), ("version", "allowRenegotiation"))
    enabled = check.field(tls, path, "enabled", bool, default=False)
    verification = check.field(tls, path, "verification", dict, default={})
    vpath = path + ("verification",)
    check.unknown(verification, vpath, ("mode", "serverName", "subjectAltNames", "caCert", "clientCert", "clientKey"))
    mode = check.field(verification, vpath, "mode", str, default="Secured")
    if mode not in TLS_MODES:
        check.fail(vpath + ("mode",), f"must be one of {', '.join(TLS_MODES)}, got {mode!r}")
    server_name = check.field(verification, vpath, "serverName", str)
    sans: list[str] = []
    for i, san in enumerate(check.field(verification, vpath, "subjectAltNames", list, default=[])):
        sp = vpath + ("subjectAltNames", i)
        if not isinstance(san, dict) or not isinstance(san.get("value"), str):
            check.fail(sp, "must be a mapping with a string `value`")
            continue
        check.unknown(san, sp, ("type", "value"))
        if check.field(san, sp, "type", str, default="Exact") != "Exact":
            check.fail(sp + ("type",), "meshplan matches subject alt names exactly: only `Exact` is supported")
        sans.append(san["value"])
    ca_file = None
    ca = check.field(verification, vpath, "caCert", dict)
    if ca is not None:
        check.unknown(ca, vpath + ("caCert",), ("file",))
        ca_file = check.field(ca, vpath + ("caCert",), "file", str)
        if ca_file is None:
            check.fail(vpath + ("caCert",), "meshplan reads the CA bundle from a file: set `caCert.file` to its path")
    for key in ("clientCert", "clientKey"):
        if key in verification:
            check.fail(vpath + (key,), "client certificates towards external services are not supported yet")
    return ExternalTLS(enabled, server_name, mode, ca_file, tuple(sans))


# --- references across resources ------------------------------------------------------------------------------


def _check_references(desired: Desired, kept: list[tuple[RawResource, Any]], out: list[Violation]) -> None:
    services: dict[tuple[str, str], set[str]] = {}
    for dp in desired.dataplanes:
        for inbound in dp.inbounds:
            services.setdefault((dp.mesh, inbound.service), set()).add(inbound.protocol)
    externals = {(m.mesh, m.name) for m in desired.external_services}
    proxies: dict[str, RawResource] = {}
    for res, obj in kept:
        check = FieldCheck(res, out)
        mesh_name = getattr(obj, "mesh", None)
        if isinstance(obj, (Dataplane, MeshExternalService, Policy)) and mesh_name not in desired.meshes:
            field = ("metadata", "labels", "kuma.io/mesh") if res.form == "kubernetes" else ("mesh",)
            out.append(Violation(Source(res.source.file, res.lines.get(field, res.source.line)), format_path(field),
                                 f"mesh {mesh_name!r} is not defined: add a Mesh resource named {mesh_name!r}"))
            continue
        if isinstance(obj, Policy):
            # A kind's own references to other resources (a route's backendRefs), checked once all are known.
            module = BY_KIND.get(obj.kind)
            check_references = getattr(module, "check_references", None)
            if check_references is not None:
                check_references(obj, desired, check)
        if isinstance(obj, (Dataplane, ZoneEgress)):
            if obj.name in proxies:
                out.append(Violation(res.source, "", f"proxy name {obj.name!r} is already used by {proxies[obj.name].ref} "
                                     f"at {proxies[obj.name].source}: proxy names must be unique"))
            proxies[obj.name] = res
        if isinstance(obj, Dataplane):
            for i, outbound in enumerate(obj.outbounds):
                path: PathKey = ("networking", "outbound", i)
                if outbound.service is not None and (obj.mesh, outbound.service) not in services:
                    check.fail(path, f"no Dataplane in mesh {obj.mesh!r} has an inbound for service {outbound.service!r}")
                if outbound.external is not None and (obj.mesh, outbound.external) not in externals:
                    check.fail(path + ("backendRef", "name"),
                               f"no MeshExternalService {outbound.external!r} in mesh {obj.mesh!r}")
            for i, inbound in enumerate(obj.inbounds):
                protocols = services[(obj.mesh, inbound.service)]
                if len(protocols) > 1:
                    check.fail(("networking", "inbound", i, "tags"),
                               f"service {inbound.service!r} is declared with different protocols: {', '.join(sorted(protocols))}")
        if isinstance(obj, MeshExternalService):
            mesh = desired.meshes[obj.mesh]
            if not mesh.mtls:
                check.fail((), f"mesh {obj.mesh!r} has no mTLS: external services go through the ZoneEgress, "
                           "which needs mesh mTLS (set mtls.enabledBackend on the Mesh)")
            if not desired.egresses:
                check.fail((), "external services go through a ZoneEgress, and there is none: add a ZoneEgress")
            if not mesh.zone_egress:
                check.fail((), f"mesh {obj.mesh!r} sets routing.zoneEgress: false, but external services always go "
                           "through the ZoneEgress")
