"""The fields of the infrastructure kinds: Mesh, Dataplane, ZoneEgress and MeshExternalService, each checked and
turned into its model, with every violation at its path. `validate.parse` calls them; references between resources
are its business.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from typing import Any

from meshplan.envoy import names
from meshplan.errors import Source, Violation
from meshplan.load.resources import PathKey, RawResource
from meshplan.model import (
    NAMESPACE_TAG,
    PROTOCOL_TAG,
    SERVICE_TAG,
    Dataplane,
    Endpoint,
    ExternalTLS,
    Inbound,
    Mesh,
    MeshExternalService,
    Outbound,
    SANMatch,
    ZoneEgress,
)
from meshplan.validate.addresses import endpoint_problem
from meshplan.validate.check import FieldCheck
from meshplan.validate.namespaces import dataplane_namespace

PROTOCOLS = ("tcp", "http", "http2", "grpc")
# The kinds of Kuma's initial default policies (validate/initial_policies.py), and the old-API kinds Kuma creates only
# when its control plane is configured to (`defaults.createMeshRoutingResources`), which meshplan never creates.
INITIAL_POLICY_KINDS = ("MeshTimeout", "MeshRetry", "MeshCircuitBreaker")
OLD_API_KINDS = ("TrafficPermission", "TrafficRoute")
TLS_MODES = ("Secured", "SkipSAN", "SkipCA", "SkipAll")
TLS_VERSIONS = ("TLSAuto", "TLS10", "TLS11", "TLS12", "TLS13")  # in order, after TLSAuto (Envoy's default)
SAN_MATCH_TYPES = ("Exact", "Prefix")
MAX_PRIORITY = 128  # Kuma's bound on endpoints[].priority
MAX_EXTERNAL_NAME = 63  # Kuma's bound on a MeshExternalService's name
DNS_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?")
DEFAULT_ADMIN_PORT = 9901
MAX_SNI = 255  # Envoy's limit for a TLS server name, which carries service and mesh names (names.service_sni)
TAG_VALUE = re.compile(r"[A-Za-z0-9.\-_:]+")  # tags go into certificates as kuma://<tag>/<value> URI SANs
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_mesh(check: FieldCheck, res: RawResource) -> Mesh | None:
    body = res.body
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
    skip = _skip_initial_policies(check, body)
    assert res.name is not None
    return Mesh(res.name, mtls=bool(enabled), source=res.source, zone_egress=zone_egress,
                forbid_external_by_default=forbid, skip_initial_policies=skip)


def _skip_initial_policies(check: FieldCheck, body: dict[str, Any]) -> frozenset[str]:
    """`skipCreatingInitialPolicies`: "*" or the kinds (Kuma's resource type names) whose initial default policies
    (validate/initial_policies.py) this mesh does not get. Kuma's old-API kinds, which meshplan never creates, are
    accepted; any other word is an error rather than a skip that silently skips nothing."""
    values = check.field(body, (), "skipCreatingInitialPolicies", list, default=[])
    known = ("*", *INITIAL_POLICY_KINDS, *OLD_API_KINDS)
    skip: set[str] = set()
    for i, value in enumerate(values):
        if not isinstance(value, str) or value not in known:
            check.fail(("skipCreatingInitialPolicies", i),
                       f"{value!r} names no kind of Kuma's initial policies (expected \"*\" or one of: "
                       f"{', '.join(INITIAL_POLICY_KINDS + OLD_API_KINDS)})")
            continue
        skip.add(value)
    return frozenset(skip)


def parse_dataplane(check: FieldCheck, res: RawResource, mesh: str) -> Dataplane | None:
    before = len(check.out)
    check.unknown(res.body, (), ("networking", "labels") if res.form == "universal" else ("networking",))
    labels = _dataplane_labels(check, res)
    namespace = dataplane_namespace(check.out, res, labels)
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
        inbound_name = check.field(item, path, "name", str, default="")
        if "tags" in item and isinstance(item["tags"], dict) and SERVICE_TAG not in item["tags"]:
            check.fail(path + ("tags",), f"an inbound needs a `{SERVICE_TAG}` tag")
        for tag, value in tags.items():
            if not TAG_VALUE.fullmatch(value):
                # tags go into certificates as kuma://<tag>/<value> URI SANs
                check.fail(path + ("tags", tag), f"tag value {value!r} may hold only letters, digits, '.', '-', '_' and ':'")
        if namespace is not None:
            # Kuma tags every inbound of a Kubernetes dataplane with its namespace (a `from` MeshSubset can select
            # clients by it); written by hand, the tag must agree.
            if tags.setdefault(NAMESPACE_TAG, namespace) != namespace:
                check.fail(path + ("tags", NAMESPACE_TAG), f"Kuma sets this tag to the dataplane's namespace, and "
                           f"metadata.namespace is {namespace!r}: remove it")
        service = tags.get(SERVICE_TAG)
        if service is not None and len(names.service_sni(mesh, service)) > MAX_SNI:
            check.fail(path + ("tags", SERVICE_TAG), f"too long: the TLS server name of this service, "
                       f"{names.service_sni(mesh, '<service>')}, may have at most {MAX_SNI} characters")
        protocol = tags.get(PROTOCOL_TAG)
        if protocol is not None and protocol not in PROTOCOLS:
            check.fail(path + ("tags", PROTOCOL_TAG), f"unknown protocol {protocol!r} (expected one of: {', '.join(PROTOCOLS)})")
        if None not in (port, service_port, service_address, inbound_address) and SERVICE_TAG in tags:
            inbounds.append(Inbound(inbound_address, port, service_address, service_port, tags,  # type: ignore[arg-type]
                                    inbound_name))
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
    if len(inbounds) == len(raw_inbounds):
        _check_section_names(check, np, inbounds)
    dp = Dataplane(res.name, mesh, address, admin_port, tuple(inbounds), tuple(outbounds), res.source, labels,
                   namespace)
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


def parse_egress(check: FieldCheck, res: RawResource) -> ZoneEgress | None:
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


def parse_external(check: FieldCheck, res: RawResource, mesh: str) -> MeshExternalService | None:
    before = len(check.out)
    body = res.body
    check.unknown(body, (), ("match", "endpoints", "tls", "extension"))
    if "extension" in body:
        # Kuma hands endpoints and TLS to an extension plugin named by `extension.type`; meshplan has none.
        check.fail(("extension",), "not supported by meshplan: it has no MeshExternalService extensions (Kuma leaves "
                   "`endpoints` and `tls` to the extension named by `extension.type`); use `endpoints` and `tls`")
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
        check.unknown(item, path, ("address", "port", "priority"))
        address = check.field(item, path, "address", str, required=True)
        if address is not None and address.startswith("unix://"):
            # Kuma v2.14.3 refuses a unix domain socket here ("address has to be a valid IP or hostname"): its support
            # was removed in Kuma 2.9 (kumahq/kuma#11350, UPGRADE.md); the website's "Endpoints" snippet predates that.
            check.fail(path + ("address",), "unix domain socket endpoints are not supported: Kuma v2.14.3 refuses "
                       "them too (its support was removed in Kuma 2.9; an endpoint is a valid IP or host name and a "
                       "port): give the IP address or host name and port the service listens on")
            continue
        problem = None if address is None else endpoint_problem(address)
        if problem is not None:
            check.fail(path + ("address",), problem)
            address = None
        # As in Kuma, every endpoint names its port: `match.port` is the port clients call, not the external one.
        ep_port = check.port(item, path, "port")
        priority = check.integer(item, path, "priority", minimum=0, maximum=MAX_PRIORITY)
        if address is not None and ep_port is not None:
            endpoints.append(Endpoint(address, ep_port, priority))
    tls = _external_tls(check, check.field(body, (), "tls", dict, default={}))
    if len(check.out) > before:
        return None
    assert res.name is not None and port is not None
    return MeshExternalService(res.name, mesh, port, protocol, tuple(endpoints), tls, res.source)


def _external_tls(check: FieldCheck, tls: dict[str, Any]) -> ExternalTLS:
    path: PathKey = ("tls",)
    check.unknown(tls, path, ("enabled", "verification", "version", "allowRenegotiation"))
    enabled = check.field(tls, path, "enabled", bool, default=False)
    if not enabled:
        for key in ("verification", "version", "allowRenegotiation"):
            if key in tls:
                check.fail(path + (key,), "has no effect without `tls.enabled: true` (the egress then speaks "
                           "plaintext to the endpoints): set `enabled: true` or remove it")
    allow_renegotiation = check.field(tls, path, "allowRenegotiation", bool, default=False)
    min_version, max_version = _tls_versions(check, check.field(tls, path, "version", dict, default={}))
    verification = check.field(tls, path, "verification", dict, default={})
    vpath = path + ("verification",)
    check.unknown(verification, vpath, ("mode", "serverName", "subjectAltNames", "caCert", "clientCert", "clientKey"))
    mode = check.field(verification, vpath, "mode", str, default="Secured")
    if mode not in TLS_MODES:
        check.fail(vpath + ("mode",), f"must be one of {', '.join(TLS_MODES)}, got {mode!r}")
    server_name = check.field(verification, vpath, "serverName", str)
    if server_name is not None and not DNS_NAME.fullmatch(server_name):
        check.fail(vpath + ("serverName",), f"must be a DNS name (it is sent as the TLS server name), got {server_name!r}")
        server_name = None
    sans: list[SANMatch] = []
    for i, san in enumerate(check.field(verification, vpath, "subjectAltNames", list, default=[])):
        sp = vpath + ("subjectAltNames", i)
        if not isinstance(san, dict):
            check.fail(sp, "must be a mapping with `type` and `value`")
            continue
        check.unknown(san, sp, ("type", "value"))
        value = check.field(san, sp, "value", str, required=True)
        kind = check.field(san, sp, "type", str, default="Exact")
        if kind not in SAN_MATCH_TYPES:
            check.fail(sp + ("type",), f"must be one of {', '.join(SAN_MATCH_TYPES)}, got {kind!r}")
        elif value is not None:
            if not value:
                check.fail(sp + ("value",), "must not be empty (an empty prefix would match any name)")
            sans.append(SANMatch(kind, value))
    if sans and mode in ("SkipCA", "SkipSAN", "SkipAll"):
        # Kuma drops subjectAltNames in these modes without a word. In SkipCA they cannot be honoured either: Envoy
        # refuses to match SANs on a certificate whose chain it does not verify (no trusted CA), and checking names
        # on a chain anyone can sign would prove nothing.
        reason = {
            "SkipSAN": "SkipSAN does not check subject alt names",
            "SkipAll": "SkipAll checks nothing",
            "SkipCA": "SkipCA does not verify the certificate chain, and a name on an unverified certificate proves "
                      "nothing (Envoy refuses SAN matching without a trusted CA; Kuma drops them)",
        }[mode]
        check.fail(vpath + ("subjectAltNames",), f"{reason}: remove `subjectAltNames`, or use `mode: Secured` to "
                   "check them against a trusted CA")
    ca_file, ca_inline = _ca_cert(check, verification, vpath)
    if (ca_file is not None or ca_inline is not None) and mode in ("SkipCA", "SkipAll"):
        check.fail(vpath + ("caCert",), f"{mode} does not verify the certificate chain, so a CA would not be used "
                   "(Kuma drops it): remove `caCert`, or use `mode: Secured` or `SkipSAN`")
    for key, other in (("clientCert", "clientKey"), ("clientKey", "clientCert")):
        if key in verification and other not in verification:
            check.fail(vpath + (other,), f"must be defined when {key} is defined")
    for key in ("clientCert", "clientKey"):
        if key in verification:
            # A client key is a secret: it may not sit in the desired directory, and meshplan has no secret store to
            # deliver it to the egress alone from.
            check.fail(vpath + (key,), "client certificates towards external services are not supported: the key "
                       "would have to be in the desired directory or a secret store meshplan does not have")
    return ExternalTLS(enabled, server_name, mode, ca_file, tuple(sans), ca_inline, min_version, max_version,
                       allow_renegotiation)


def _tls_versions(check: FieldCheck, version: dict[str, Any]) -> tuple[str | None, str | None]:
    path: PathKey = ("tls", "version")
    check.unknown(version, path, ("min", "max"))
    min_version = check.field(version, path, "min", str)
    max_version = check.field(version, path, "max", str)
    for key, value in (("min", min_version), ("max", max_version)):
        if value is not None and value not in TLS_VERSIONS:
            check.fail(path + (key,), f"must be one of {', '.join(TLS_VERSIONS)}, got {value!r}")
    min_version = min_version if min_version in TLS_VERSIONS else None
    max_version = max_version if max_version in TLS_VERSIONS else None
    if min_version not in (None, "TLSAuto") and max_version not in (None, "TLSAuto"):
        assert min_version is not None and max_version is not None
        if TLS_VERSIONS.index(min_version) > TLS_VERSIONS.index(max_version):
            check.fail(path + ("min",), f"must not be above max: {min_version} is a later version than {max_version}")
    return min_version, max_version


def _ca_cert(check: FieldCheck, verification: dict[str, Any], vpath: PathKey) -> tuple[str | None, tuple[str, str] | None]:
    """`caCert`: a file on the egress's host (meshplan's own), or the certificate itself (Kuma's `inline`, base64, or
    `inlineString`, PEM). A CA certificate is public; a private key in it is refused, as keys never sit in the desired
    directory."""
    ca = check.field(verification, vpath, "caCert", dict)
    if ca is None:
        return None, None
    cpath = vpath + ("caCert",)
    check.unknown(ca, cpath, ("file", "inline", "inlineString", "secret"))
    if "secret" in ca:
        check.fail(cpath + ("secret",), "meshplan has no secret store: give the CA certificate (public data) as "
                   "`inline`, `inlineString` or `file`")
    given = [key for key in ("file", "inline", "inlineString", "secret") if key in ca]
    if len(given) > 1:
        check.fail(cpath, f"set exactly one of file, inline, inlineString, got {', '.join(given)}")
        return None, None
    if not given:
        check.fail(cpath, "set one of file, inline (base64) or inlineString (PEM)")
        return None, None
    if "file" in ca:
        return check.field(ca, cpath, "file", str), None
    if "inline" in ca:
        text = check.field(ca, cpath, "inline", str)
        if text is None:
            return None, None
        try:
            pem = base64.b64decode(text, validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            check.fail(cpath + ("inline",), "must be the base64 of a PEM certificate")
            return None, None
        return None, (("inline_bytes", text) if _pem_certificate(check, cpath + ("inline",), pem) else None)
    if "inlineString" in ca:
        pem = check.field(ca, cpath, "inlineString", str)
        if pem is None:
            return None, None
        return None, (("inline_string", pem) if _pem_certificate(check, cpath + ("inlineString",), pem) else None)
    return None, None


def _pem_certificate(check: FieldCheck, path: PathKey, pem: str) -> bool:
    if "PRIVATE KEY" in pem:
        # Never echo any of it: this is a key.
        check.fail(path, "holds a private key: a CA certificate is public, a key never belongs in the desired directory")
        return False
    if "-----BEGIN CERTIFICATE-----" not in pem or "-----END CERTIFICATE-----" not in pem:
        check.fail(path, "must be one or more PEM certificates (-----BEGIN CERTIFICATE----- ...)")
        return False
    return True


def _dataplane_labels(check: FieldCheck, res: RawResource) -> dict[str, str]:
    """The Dataplane's resource labels, which a policy's `targetRef: {kind: Dataplane, labels: ...}` matches: the
    top-level `labels` of the universal form, `metadata.labels` of the Kubernetes form."""
    if res.form == "universal":
        return check.tags(res.body, (), "labels")
    good: dict[str, str] = {}
    for key, value in res.labels.items():
        if isinstance(value, str):
            good[str(key)] = value
        else:
            line = res.lines.get(("metadata", "labels", key), res.source.line)
            check.out.append(Violation(Source(res.source.file, line), f"metadata.labels.{key}", "label values must be strings"))
    return good


def _check_section_names(check: FieldCheck, np: PathKey, inbounds: list[Inbound]) -> None:
    """A `sectionName` picks one inbound: two inbounds answering to the same one would make it pick both."""
    seen: dict[str, int] = {}
    for i, inbound in enumerate(inbounds):
        first = seen.setdefault(inbound.section_name, i)
        if first != i:
            what = f"name {inbound.name!r}" if inbound.name else f"port {inbound.port} (it has no name)"
            check.fail(np + ("inbound", i) + (("name",) if inbound.name else ("port",)),
                       f"inbound[{first}] already answers to sectionName {inbound.section_name!r}: {what} must be unique "
                       "among the inbounds' names and unnamed ports")
