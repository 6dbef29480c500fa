"""Check loaded resources and turn them into the typed model, reporting every violation at once.

`parse` is the one entry point: it never stops at the first problem, and it returns a `Desired` only when there are
none. Names and the references between resources are checked here; the fields of the infrastructure kinds (Mesh,
Dataplane, ZoneEgress, MeshExternalService) in `infra_rules.py`; the rules all policies share in `policy_rules.py`;
a policy kind's own fields by its module in `meshplan/policies/`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from meshplan.errors import LoadError, Source, Violation
from meshplan.load.resources import PathKey, RawResource, format_path, load_dir
from meshplan.model import (
    Dataplane,
    Desired,
    Mesh,
    MeshExternalService,
    Policy,
    TargetRef,
    ZoneEgress,
)
from meshplan.policies.registry import KINDS, REFERENCES
from meshplan.validate.check import FieldCheck
from meshplan.validate.infra_rules import (
    MAX_EXTERNAL_NAME,
    parse_dataplane,
    parse_egress,
    parse_external,
    parse_mesh,
)
from meshplan.validate.initial_policies import initial_policies
from meshplan.validate.namespaces import mesh_wide_namespace
from meshplan.validate.policy_rules import check_route_placement, parse_policy

INFRA_KINDS = ("Mesh", "Dataplane", "ZoneEgress", "MeshExternalService")
DEFAULT_MESH = "default"

# Names become file and directory names under state/: keep them to one safe path segment. Used with fullmatch (as is
# infra_rules.TAG_VALUE): `$` would also match before a final newline, and `web\n` would name a directory.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# A proxy's name is the common name of its certificate, and a mesh's CA is "<mesh> CA": X.509 allows 64 characters.
MAX_PROXY_NAME = 64
MAX_MESH_NAME = 64 - len(" CA")


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
            # Kuma tells apart same-named resources of different namespaces; meshplan's names are per kind and mesh.
            namespaces = (f" (in namespace {first.namespace!r}; meshplan's names are unique per kind and mesh, "
                          "whatever the namespace)" if first.namespace != res.namespace else "")
            out.append(Violation(res.source, "", f"duplicate {res.kind} {res.name!r}"
                                 f"{' in mesh ' + repr(mesh_name) if mesh_name else ''}: first defined at {first.source}"
                                 f"{namespaces}"))
            continue
        seen[key] = res
        if res.kind in ("Mesh", "ZoneEgress", "MeshExternalService"):
            mesh_wide_namespace(out, res)
        if res.kind == "Mesh":
            mesh = parse_mesh(check, res)
            if mesh is not None:
                meshes[mesh.name] = mesh
        elif res.kind == "Dataplane":
            dp = parse_dataplane(check, res, mesh_name or DEFAULT_MESH)
            if dp is not None:
                dataplanes.append(dp)
                kept.append((res, dp))
        elif res.kind == "ZoneEgress":
            eg = parse_egress(check, res)
            if eg is not None:
                egresses.append(eg)
                kept.append((res, eg))
        elif res.kind == "MeshExternalService":
            mes = parse_external(check, res, mesh_name or DEFAULT_MESH)
            if mes is not None:
                externals.append(mes)
                kept.append((res, mes))
        else:
            policy = parse_policy(check, res, mesh_name or DEFAULT_MESH)
            if policy is not None:
                policies.append(policy)
                kept.append((res, policy))

    meshes.setdefault(DEFAULT_MESH, Mesh(DEFAULT_MESH, mtls=False, source=None))
    if not out:
        taken = {(kind, mesh, name) for kind, mesh, name in seen if mesh is not None}
        for mesh in meshes.values():
            policies.extend(initial_policies(mesh, taken))
    desired = Desired(meshes, dataplanes, egresses, externals, policies)
    _check_references(desired, kept, out)
    return (None if out else desired), out


def section_problem(desired: Desired, mesh: str, ref: TargetRef) -> str | None:
    """Why a `to` MeshService's `sectionName` picks no port meshplan can configure apart; None if it picks one. The
    ports are those Kuma v2.14.3 gives the service's MeshService (`Desired.service_ports`). A service with no
    instances (or in another namespace) is reported where its name is."""
    if ref.kind != "MeshService" or ref.section_name is None or ref.name is None:
        return None
    ports = desired.service_ports(mesh, ref.name)
    if not ports or (ref.namespace is not None and desired.service_namespace(mesh, ref.name) != ref.namespace):
        return None
    listed = ", ".join(f"{name!r} (port {port})" for name, port in ports)
    if ref.section_name not in {name for name, _ in ports}:
        return (f"names no port of MeshService {ref.name!r} (its ports: {listed}; as Kuma names them, an inbound's "
                "`name`, or its port number when it has none), so it would select nothing")
    if len({name for name, _ in ports}) > 1:
        return (f"MeshService {ref.name!r} has several ports ({listed}), and meshplan sends an outbound to every port "
                "of a service through one cluster, so one port cannot be configured apart from the others; give each "
                "port its own kuma.io/service")
    return None


def _name_too_long(kind: str, name: str, mesh: str | None) -> str | None:
    """Names pass into certificates and TLS server names, which have length limits of their own."""
    if kind in ("Dataplane", "ZoneEgress") and len(name) > MAX_PROXY_NAME:
        return (f"a proxy name may have at most {MAX_PROXY_NAME} characters (it is the common name of the proxy's "
                f"certificate, which X.509 limits to 64), got {len(name)}")
    if kind == "Mesh" and len(name) > MAX_MESH_NAME:
        return (f"a mesh name may have at most {MAX_MESH_NAME} characters (its CA's common name is '<mesh> CA', "
                f"which X.509 limits to 64), got {len(name)}")
    if kind == "MeshExternalService" and len(name) > MAX_EXTERNAL_NAME:
        return f"must not be longer than {MAX_EXTERNAL_NAME} characters (Kuma's limit), got {len(name)}"
    # With both limits an external service's TLS server name, <name>.<mesh>.mes, is far below MAX_SNI (test_names).
    return None


# --- references across resources ------------------------------------------------------------------------------


def _check_references(desired: Desired, kept: list[tuple[RawResource, Any]], out: list[Violation]) -> None:
    services: dict[tuple[str, str], set[str]] = {}
    namespaces: dict[tuple[str, str], Dataplane] = {}  # the first dataplane of each service: its namespace
    for dp in desired.dataplanes:
        for inbound in dp.inbounds:
            services.setdefault((dp.mesh, inbound.service), set()).add(inbound.protocol)
            namespaces.setdefault((dp.mesh, inbound.service), dp)
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
            check_references = REFERENCES.get(obj.kind)
            if check_references is not None:
                check_references(obj, desired, check)
            check_route_placement(obj, desired, check)
            for item in obj.to:
                problem = section_problem(desired, obj.mesh, item.target_ref)
                if problem is not None:
                    check.fail(("to", item.index, "targetRef", "sectionName"), problem)
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
                first = namespaces[(obj.mesh, inbound.service)]
                if first.namespace != obj.namespace:
                    # A service's namespace is its dataplanes': what a policy naming it in a namespace compares, and
                    # where Kuma scopes a producer policy. In Kuma one kuma.io/service lives in one namespace.
                    theirs = f"namespace {first.namespace!r}" if first.namespace is not None else "no namespace"
                    ours = f"namespace {obj.namespace!r}" if obj.namespace is not None else "no namespace"
                    check.fail(("networking", "inbound", i, "tags", "kuma.io/service"),
                               f"service {inbound.service!r} has dataplanes in {theirs} ({first.name!r}) and here in "
                               f"{ours}: a service's dataplanes must share one namespace (in Kuma a service lives in "
                               "one namespace)")
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
