"""The `backendRefs` of the route kinds (MeshHTTPRoute, MeshTCPRoute): their checks, their read into Backends for a
kind's typed conf (`read_backend_refs`, on a policies/conf.py ConfReader), and the cluster each one needs on a
sidecar.

Not a policy module (it is not in the registry): the two route modules share it.

A backendRef names where traffic goes instead of (or besides) the outbound's own destination:

    kind: MeshService | MeshServiceSubset | MeshExternalService
    name: <kuma.io/service> or the MeshExternalService's name
    tags: {...}        MeshServiceSubset only: the instances whose inbound carries all of them
    port: 8080         MeshService only: the instances whose inbound listens on this port (a Kuma MeshService port)
    weight: 1          default 1; 0 takes the backend out of the split (as Kuma does)

Clusters, one per backend on the proxy that routes to it, named (docs/names.md):

    MeshService               <service>                       the name the base render gives an outbound's cluster
    MeshService with port     <service>:port=<port>
    MeshServiceSubset         <service>:<tag>=<value>[,...]   tags sorted by name
    MeshExternalService       mes:<mesh>:<name>               through the egress, as the base render does

A backend whose cluster the proxy does not have yet gets one, built like an outbound's, and an OutboundPoint so the
modules that run later (timeouts, circuit breakers, health checks, load balancing) tune its cluster too. That point's
`chain` is a detached, empty filter chain: route-level settings (route timeouts, retries) follow the destination of
the outbound whose listener holds the route, as in Kuma; only cluster-level settings follow the backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from meshplan.envoy import names
from meshplan.envoy import types as envoy_types
from meshplan.load.resources import PathKey
from meshplan.match.matcher import Destination
from meshplan.match.result import backend_destination
from meshplan.model import GATEWAY, SERVICE_TAG, Dataplane, Desired, Outbound, Policy
from meshplan.policies import PolicyKind
from meshplan.policies.base import Json, OutboundPoint, ProxyBuild
from meshplan.policies.conf import ConfReader
from meshplan.render.sidecar import outbound_cluster
from meshplan.validate.check import FieldCheck

MESH_SERVICE = "MeshService"
MESH_SERVICE_SUBSET = "MeshServiceSubset"
MESH_EXTERNAL_SERVICE = "MeshExternalService"
BACKEND_KINDS = (MESH_SERVICE, MESH_SERVICE_SUBSET, MESH_EXTERNAL_SERVICE)
# Kuma: a route's `to` item names the destination whose outbound it routes, never a group of them.
TO_KINDS = (MESH_SERVICE, MESH_EXTERNAL_SERVICE)
_REF_FIELDS = ("kind", "name", "tags", "weight", "port")
# Kuma's backendRef fields that meshplan's model has no place for, each refused with why (a service here is its
# `kuma.io/service` tag, in the proxy's one mesh).
_KUMA_ONLY = {
    "labels": "a backend is picked by `name` (its kuma.io/service); meshplan has no MeshService resources to select "
              "by labels",
    "mesh": "a backend is in the proxy's own mesh; meshplan renders no cross-mesh traffic",
    "namespace": "a backend is picked by `name` (its kuma.io/service, mesh-wide); meshplan resolves route backends in "
                 "no namespace (only targetRefs: docs/policies.md, Namespaces)",
    "sectionName": "meshplan picks a backend's port by its number: give it as `port` (ports are named only in a `to` "
                   "targetRef's sectionName: docs/policies.md, A MeshService's ports)",
    "proxyTypes": "it selects gateway backends, and meshplan has no gateways",
}

DEFAULT_WEIGHT = 1
MAX_TOTAL_WEIGHT = 2**32 - 1  # Envoy sums the weights of a split into a uint32


@dataclass(frozen=True)
class Backend:
    """One backendRef, checked."""

    kind: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    weight: int = DEFAULT_WEIGHT

    @classmethod
    def of(cls, ref: Json) -> Backend:
        tags = {k: v for k, v in (ref.get("tags") or {}).items() if k != SERVICE_TAG}
        weight = ref.get("weight")
        return cls(str(ref["kind"]), str(ref["name"]), tags, ref.get("port"),
                   DEFAULT_WEIGHT if weight is None else int(weight))

    def cluster_name(self, mesh: str) -> str:
        if self.kind == MESH_EXTERNAL_SERVICE:
            return names.external_cluster(mesh, self.name)
        if self.port is not None:
            return f"{names.service_cluster(self.name)}:port={self.port}"
        if self.kind == MESH_SERVICE_SUBSET and self.tags:
            return names.service_cluster(self.name) + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.tags.items()))
        return names.service_cluster(self.name)

    def destination(self, mesh: str) -> Destination:
        """The destination whose policies tune this backend's cluster (as match.result lists it)."""
        return backend_destination(mesh, {"kind": self.kind, "name": self.name, "tags": self.tags})


# --- validation ------------------------------------------------------------------------------------------------


def top_proxy_types(check: FieldCheck) -> set[str] | None:
    """The proxy types the policy's top-level targetRef names (lower case); None when it names none."""
    ref = check.res.body.get("targetRef")
    if not isinstance(ref, dict):
        return None
    named: set[str] = set()
    found = False
    for key in ("proxyType", "proxyTypes"):
        values = ref.get(key)
        if isinstance(values, list):
            found = True
            named |= {v.lower() for v in values if isinstance(v, str)}
    return named if found else None


def validate_to_target(check: FieldCheck, item_path: PathKey, kind_name: str) -> None:
    """A route's `to` item must name one destination: a MeshService or a MeshExternalService (Kuma 2.x)."""
    section, index = item_path[0], item_path[1]
    items = check.res.body.get(str(section))
    if not isinstance(items, list) or not isinstance(index, int) or index >= len(items):
        return
    item = items[index]
    ref = item.get("targetRef") if isinstance(item, dict) else None
    kind = ref.get("kind") if isinstance(ref, dict) else None
    # Unknown kinds are reported by the generic targetRef check already; only narrow the known ones here.
    if kind in ("Mesh", "MeshSubset", "MeshServiceSubset", "Dataplane"):
        check.fail(item_path + ("targetRef", "kind"),
                   f"{kind_name} routes the traffic to one destination: the `to` targetRef kind must be "
                   f"{' or '.join(TO_KINDS)}, got {kind}")


def validate_backend_refs(refs: Any, path: PathKey, check: FieldCheck, row: PolicyKind, *, required: bool,
                          placement: bool = True) -> None:
    """`path` points at the `backendRefs` list itself. `placement`: check where a MeshExternalService backend may be
    (it needs the policy's top-level targetRef, which a merged conf has not)."""
    if refs is None:
        if required:
            check.fail(path, "`backendRefs` is required: name at least one backend")
        return
    if not isinstance(refs, list):
        check.fail(path, f"must be a list, got {_describe(refs)}")
        return
    if required and not refs:
        check.fail(path, "needs at least one backendRef")
        return
    weights: list[int] = []
    for i, ref in enumerate(refs):
        weight = validate_backend_ref(ref, path + (i,), check, row, weighted=True, placement=placement)
        if weight is not None:
            weights.append(weight)
    if refs and len(weights) == len(refs) and not any(weights):
        check.fail(path, "every backendRef has weight 0, so no traffic could go anywhere: give one a weight above 0")
    if sum(weights) > MAX_TOTAL_WEIGHT:
        check.fail(path, f"the weights add up to {sum(weights)}; Envoy takes at most {MAX_TOTAL_WEIGHT} in all")


def validate_backend_ref(ref: Any, path: PathKey, check: FieldCheck, row: PolicyKind, *, weighted: bool,
                         placement: bool = True) -> int | None:
    """Check one backendRef; its weight (default 1) when it is sound, else None."""
    if not isinstance(ref, dict):
        check.fail(path, f"must be a mapping, got {_describe(ref)}")
        return None
    before = len(check.out)
    for key in ref.keys() & _KUMA_ONLY.keys():
        check.fail(path + (key,), f"not supported by meshplan: {_KUMA_ONLY[key]}")
    check.unknown({k: v for k, v in ref.items() if k not in _KUMA_ONLY}, path, _REF_FIELDS)
    if not weighted and "weight" in ref:
        check.fail(path + ("weight",), "takes no weight here: a mirror copies the requests its percentage picks")
    kind = check.choice(ref, path, "kind", BACKEND_KINDS, required=True)
    name = check.field(ref, path, "name", str, required=True)
    if name == "":
        check.fail(path + ("name",), "must not be empty")
    tags = check.tags(ref, path, "tags", required=kind == MESH_SERVICE_SUBSET)
    if kind == MESH_SERVICE_SUBSET and "tags" in ref and not tags:
        check.fail(path + ("tags",), "a MeshServiceSubset needs at least one tag")
    if kind in (MESH_SERVICE, MESH_EXTERNAL_SERVICE) and "tags" in ref:
        check.fail(path + ("tags",),
                   f"only a MeshServiceSubset has tags; use kind MeshServiceSubset to pick instances of {name!r}")
    if "port" in ref:
        check.port(ref, path, "port")
        if kind is not None and kind != MESH_SERVICE:
            check.fail(path + ("port",), "only a MeshService backendRef takes a port")
    weight = check.integer(ref, path, "weight", minimum=0, maximum=MAX_TOTAL_WEIGHT) if weighted else None
    if kind == MESH_EXTERNAL_SERVICE and placement:
        _check_external_placement(check, path + ("kind",), row)
    if len(check.out) > before:
        return None
    return DEFAULT_WEIGHT if weight is None else int(weight)


def _check_external_placement(check: FieldCheck, path: PathKey, row: PolicyKind) -> None:
    """The seed: a policy that references a MeshExternalService names its proxy types, and only where the table says."""
    kind_name, placement = row.name, row  # the kind's own row of the placement table
    answer = f"the placement table says {kind_name} for a MeshExternalService is implemented on: {placement.placement}"
    named = top_proxy_types(check)
    if not named:
        check.fail(path, "a policy that references a MeshExternalService must set proxyType in its top-level "
                         f"targetRef; {answer}")
        return
    wrong = sorted(named - placement.external_to - {GATEWAY})
    if wrong:
        check.fail(path, f"{kind_name} to a MeshExternalService is not on the {' or '.join(wrong)}; {answer}")


def read_backend_refs(conf: ConfReader, row: PolicyKind, *, required: bool) -> tuple[Backend, ...] | None:
    """A route conf's `backendRefs`, read by a kind's parse: checked by `validate_backend_refs` (every violation at its
    path when validating an item; a merged conf's, whose items were checked with their placement, raise), then each
    one as a Backend. None when it is not set or, validating, has a violation."""
    raw = conf.raw.get("backendRefs")
    before = len(conf.check.out)
    validate_backend_refs(raw, conf.path + ("backendRefs",), conf.check, row, required=required,
                          placement=conf.validating)
    if not isinstance(raw, list) or len(conf.check.out) > before:
        return None
    return tuple(Backend.of(ref) for ref in raw)


# --- references to other resources -------------------------------------------------------------------------------


def reference_problem(ref: Json, mesh: str, desired: Desired) -> tuple[PathKey, str] | None:
    """Why a (well-formed) backendRef names nothing in the desired mesh, and at which of its fields; None if it
    exists."""
    backend = Backend.of(ref)
    if backend.kind == MESH_EXTERNAL_SERVICE:
        if not any(m.mesh == mesh and m.name == backend.name for m in desired.external_services):
            return ("name",), f"no MeshExternalService {backend.name!r} in mesh {mesh!r}"
        return None
    instances = desired.instances(mesh, backend.name)
    if not instances:
        return ("name",), f"no Dataplane in mesh {mesh!r} has an inbound for service {backend.name!r}"
    if backend.port is not None and not any(inbound.port == backend.port for _, inbound in instances):
        ports = ", ".join(str(p) for p in sorted({inbound.port for _, inbound in instances}))
        return ("port",), f"no instance of service {backend.name!r} listens on port {backend.port} (its ports: {ports})"
    if backend.kind == MESH_SERVICE_SUBSET and not _subset(instances, backend):
        return ("tags",), f"no instance of service {backend.name!r} has the tags {_tags(backend.tags)}"
    return None


def check_reference(ref: Any, path: PathKey, policy: Policy, desired: Desired, check: FieldCheck) -> None:
    if not isinstance(ref, dict) or not isinstance(ref.get("kind"), str) or not isinstance(ref.get("name"), str):
        return  # malformed: validate() has reported it
    problem = reference_problem(ref, policy.mesh, desired)
    if problem is not None:
        check.fail(path + problem[0], problem[1])


# --- clusters ----------------------------------------------------------------------------------------------------


def backend_cluster(build: ProxyBuild, backend: Backend, via: OutboundPoint, origins: list[str]) -> str:
    """The name of the cluster that carries traffic to `backend` on this proxy, made (with its OutboundPoint) when the
    proxy does not have it yet. `via` is the outbound whose routes use it; `origins` the policies that asked for it."""
    proxy = build.proxy
    assert isinstance(proxy, Dataplane)
    name = backend.cluster_name(proxy.mesh)
    if name in build.clusters:
        return name
    if backend.kind == MESH_EXTERNAL_SERVICE:
        outbound = Outbound("127.0.0.1", 0, external=backend.name)
    else:
        outbound = Outbound("127.0.0.1", 0, service=backend.name)
    cluster, protocol = outbound_cluster(build.desired, proxy, outbound, build.mtls)
    if backend.kind != MESH_EXTERNAL_SERVICE and (backend.tags or backend.port is not None):
        _narrow(cluster, name, build.desired, proxy.mesh, backend)
    build.clusters[name] = cluster
    build.mark(cluster, "name", origins)
    detached: Json = {"filters": []}
    build.outbounds.append(OutboundPoint(backend.destination(proxy.mesh), cluster, detached, via.listener, protocol))
    return name


def _narrow(cluster: Json, name: str, desired: Desired, mesh: str, backend: Backend) -> None:
    """Keep only the instances a subset (tags) or a port names; the rest of the cluster is the service's."""
    instances = sorted(_subset(desired.instances(mesh, backend.name), backend), key=lambda i: (i[0].name, i[1].port))
    kept = [(inbound.address, inbound.port) for _, inbound in instances]
    cluster["name"] = name
    cluster["load_assignment"] = envoy_types.load_assignment(name, kept)


def _subset(instances: list[tuple[Dataplane, Any]], backend: Backend) -> list[tuple[Dataplane, Any]]:
    return [(dp, inbound) for dp, inbound in instances
            if all(inbound.tags.get(k) == v for k, v in backend.tags.items())
            and (backend.port is None or inbound.port == backend.port)]


def split(build: ProxyBuild, backends: list[Backend], via: OutboundPoint, origins: list[str]) -> list[tuple[str, int]]:
    """(cluster, weight) per backend that takes traffic: weight 0 leaves a backend out (Kuma does the same)."""
    return [(backend_cluster(build, b, via, origins), b.weight) for b in backends if b.weight > 0]


# --- small helpers -----------------------------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+\-.^_`|~]+$")


def header_name_problem(name: str) -> str | None:
    """Kuma's HeaderName: lower case token characters, 1 to 256 of them."""
    if not name:
        return "must not be empty"
    if len(name) > 256:
        return f"must be at most 256 characters, got {len(name)}"
    if not _HEADER_NAME.fullmatch(name):
        return f"{name!r} is not a lower-case HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
    return None


def _describe(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def _tags(tags: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) + "}"


__all__ = ["BACKEND_KINDS", "Backend", "TO_KINDS", "backend_cluster", "check_reference", "header_name_problem",
           "read_backend_refs", "reference_problem", "split", "top_proxy_types", "validate_backend_ref",
           "validate_backend_refs", "validate_to_target"]
