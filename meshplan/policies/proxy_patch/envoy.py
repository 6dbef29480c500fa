"""MeshProxyPatch on a sidecar: every selected policy's modifications, least specific policy first (top-level
targetRef kind, then name descending, as every merge), each policy's in written order, on the resources every other
kind left.

    cluster        Add (replaces one of the same name) | Patch | Remove    clusters matched by name / origin
    listener       Add | Patch | Remove                                    listeners matched by name / origin / tags
    networkFilter  AddFirst | AddLast | AddBefore | AddAfter | Patch | Remove, in every filter chain of the
                   listeners matched by listenerName / origin / listenerTags; filters by name
    httpFilter     the same, in the HTTP connection manager of those chains
    virtualHost    Add | Patch | Remove, in the inline route configuration of those chains' HTTP connection
                   managers (matched by routeConfigurationName); virtual hosts by name

Origins: `inbound` is a sidecar's inbound listeners and its local clusters (`local:...`), `outbound` its outbound
listeners and every other cluster; a cluster or listener a modification added has Kuma's origin for it,
`proxy-template-modifications`, which an inbound or outbound match does not reach. Listener tags are the tags Kuma
writes in a listener's `io.kuma.tags` metadata: an inbound listener's are its inbound's tags, an outbound listener's
the outbound's `tags` without `kuma.io/mesh` (an outbound written with a `backendRef` has none: Kuma tags it with
the destination's KRI, no `kuma.io/service`); a listener that carries `metadata.filter_metadata["io.kuma.tags"]`
itself (one a patch added) has those. A listener matches when it has every tag of the match with its value, or any
value for `*` (Kuma's TagSelector). A `value` Patch merges as protobuf does (fields replaced, messages merged, lists
appended; a typed `Any` is replaced whole, but for a filter's own `typed_config`, which Kuma merges into the
filter's when both are the same type, and refuses when they are not); `jsonPatches` are RFC 6902 on the resource's
proto JSON, where a camelCase step that is not a key is read as its proto field name (`/connectTimeout` is
`connect_timeout`). Every field a modification writes is attributed to it (`MeshProxyPatch/<name> (file:line of the
modification)`). A JSON patch that cannot apply stops the render with an error at that patch's file:line; a result
that is no longer a valid Envoy resource, at the modification's.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from meshplan.envoy import names
from meshplan.envoy.typed_json import TYPE_URLS, envoy_form
from meshplan.envoy.types import HCM_NAME
from meshplan.errors import LoadError, Source, Violation
from meshplan.match.behaviour import proxy_patches
from meshplan.model import Dataplane, Policy
from meshplan.policies.base import ProxyBuild

Json = dict[str, Any]
KIND = "MeshProxyPatch"
TAGS_METADATA = "io.kuma.tags"  # Kuma's listener metadata key for the listener's tags
MESH_TAG = "kuma.io/mesh"
CLUSTER, LISTENER, NETWORK_FILTER, HTTP_FILTER, VIRTUAL_HOST = (
    "cluster", "listener", "networkFilter", "httpFilter", "virtualHost")


# What this side reads of the conf (api.py's dataclasses have this shape; the package's __init__ hands them over).


class JsonPatch(Protocol):
    @property
    def op(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def value(self) -> Any: ...
    @property
    def from_(self) -> str | None: ...
    @property
    def index(self) -> int: ...


class Match(Protocol):
    @property
    def name(self) -> str | None: ...
    @property
    def origin(self) -> str | None: ...
    @property
    def listener_name(self) -> str | None: ...
    @property
    def route_configuration_name(self) -> str | None: ...
    @property
    def listener_tags(self) -> dict[str, str] | None: ...


class Modification(Protocol):
    @property
    def target(self) -> str: ...
    @property
    def operation(self) -> str: ...
    @property
    def match(self) -> Match: ...
    @property
    def value(self) -> Json | None: ...
    @property
    def json_patches(self) -> Sequence[JsonPatch]: ...
    @property
    def index(self) -> int: ...


def selected(build: ProxyBuild) -> list[Policy]:
    """The MeshProxyPatch policies that select this proxy, in the order their modifications apply."""
    if not isinstance(build.proxy, Dataplane):
        return []
    return proxy_patches(build.desired, build.proxy)


ADDED_ORIGIN = "proxy-template-modifications"  # Kuma's origin of a cluster or listener a modification added


def modify(build: ProxyBuild, policy: Policy, modification: Modification, added: set[tuple[str, str]]) -> None:
    """One modification of `policy` on the proxy. `added` is the (cluster | listener, name) of every resource the
    proxy's modifications added so far (this one adds to it): their origin is Kuma's ADDED_ORIGIN, neither inbound
    nor outbound."""
    _Patcher(build, policy, modification, added).run()


def listener_tags(proxy: object, name: str, listener: Json) -> dict[str, str]:
    """The tags Kuma's `io.kuma.tags` listener metadata would carry for this listener of the sidecar `proxy`."""
    written = listener.get("metadata", {}).get("filter_metadata", {}).get(TAGS_METADATA)
    if isinstance(written, dict):
        return {str(k): str(v) for k, v in written.items()}
    if not isinstance(proxy, Dataplane):
        return {}
    for inbound in proxy.inbounds:
        if name == names.inbound_listener(inbound.address, inbound.port):
            return dict(inbound.tags)
    for outbound in proxy.outbounds:
        if name == names.outbound_listener(outbound.address, outbound.port):
            return {k: v for k, v in outbound.tags.items() if k != MESH_TAG}
    return {}


def modification_source(policy: Policy, index: int, *rest: str | int) -> Source:
    base = f"{policy.spec_path}.default.appendModifications[{index}]"
    candidates = [base + "".join(f"[{r}]" if isinstance(r, int) else f".{r}" for r in rest[:n])
                  for n in range(len(rest), -1, -1)]
    return next((found for c in candidates if (found := policy.source_at(c)) is not None), policy.source)


class _Patcher:
    def __init__(self, build: ProxyBuild, policy: Policy, mod: Modification, added: set[tuple[str, str]]) -> None:
        self.build, self.policy, self.mod, self.added = build, policy, mod, added
        self.origin = f"{KIND}/{policy.name} ({modification_source(policy, mod.index)})"

    def run(self) -> None:
        target = self.mod.target
        if target in (CLUSTER, LISTENER):
            self._resources(self.build.clusters if target == CLUSTER else self.build.listeners)
        elif target == NETWORK_FILTER:
            for chain in self._chains():
                self._filters(chain.setdefault("filters", []))
        elif target == HTTP_FILTER:
            for manager in self._managers():
                self._filters(manager.setdefault("http_filters", []))
        else:
            for manager in self._managers():
                config = manager.get("route_config")
                name = self.mod.match.route_configuration_name
                if isinstance(config, dict) and (name is None or config.get("name") == name):
                    self._virtual_hosts(config.setdefault("virtual_hosts", []))

    # --- what matches ---

    def _origin_of(self, kind: str, name: str) -> str:
        if (kind, name) in self.added:
            return ADDED_ORIGIN
        if kind == CLUSTER:
            return "inbound" if name.startswith("local:") else "outbound"
        return "inbound" if name.startswith("inbound:") else "outbound"

    def _resources(self, resources: dict[str, Json]) -> None:
        mod, match = self.mod, self.mod.match
        if mod.operation == "Add":
            assert mod.value is not None
            added = {"@type": TYPE_URLS[mod.target], **copy.deepcopy(mod.value)}  # as meshplan writes its own
            resources[str(added.get("name", ""))] = added
            self.added.add((mod.target, str(added.get("name", ""))))
            self._mark_all(added)
            return
        for name in sorted(resources):
            if match.name is not None and name != match.name:
                continue
            if match.origin is not None and self._origin_of(mod.target, name) != match.origin:
                continue
            if mod.target == LISTENER and not self._tags_match(name, resources[name]):
                continue
            if mod.operation == "Remove":
                del resources[name]
            else:
                resources[name] = self._patched(resources[name])

    def _listeners(self) -> Iterator[Json]:
        match = self.mod.match
        for name in sorted(self.build.listeners):
            if match.listener_name is not None and name != match.listener_name:
                continue
            if match.origin is not None and self._origin_of(LISTENER, name) != match.origin:
                continue
            if not self._tags_match(name, self.build.listeners[name]):
                continue
            yield self.build.listeners[name]

    def _tags_match(self, name: str, listener: Json) -> bool:
        selector = self.mod.match.listener_tags
        if not selector:
            return True
        tags = listener_tags(self.build.proxy, name, listener)
        return all(key in tags and (value == "*" or tags[key] == value) for key, value in selector.items())

    def _chains(self) -> Iterator[Json]:
        for listener in self._listeners():
            yield from listener.get("filter_chains", [])

    def _managers(self) -> Iterator[Json]:
        for chain in self._chains():
            for f in chain.get("filters", []):
                if f.get("name") == HCM_NAME and isinstance(f.get("typed_config"), dict):
                    yield f["typed_config"]

    def _filters(self, filters: list[Json]) -> None:
        mod, name = self.mod, self.mod.match.name
        op = mod.operation
        if op in ("AddFirst", "AddLast", "AddBefore", "AddAfter"):
            assert mod.value is not None
            added = copy.deepcopy(mod.value)
            if op == "AddFirst":
                at: int | None = 0
            elif op == "AddLast":
                at = len(filters)
            else:
                found = next((i for i, f in enumerate(filters) if f.get("name") == name), None)
                at = None if found is None else found + (1 if op == "AddAfter" else 0)
            if at is not None:
                filters.insert(at, added)
                self._mark_all(added)
            return
        for i in reversed(range(len(filters))):
            if name is not None and filters[i].get("name") != name:
                continue
            if op == "Remove":
                del filters[i]
            else:
                filters[i] = self._patched(filters[i])

    def _virtual_hosts(self, hosts: list[Json]) -> None:
        mod, name = self.mod, self.mod.match.name
        if mod.operation == "Add":
            assert mod.value is not None
            added = copy.deepcopy(mod.value)
            hosts.append(added)
            self._mark_all(added)
            return
        for i in reversed(range(len(hosts))):
            if name is not None and hosts[i].get("name") != name:
                continue
            if mod.operation == "Remove":
                del hosts[i]
            else:
                hosts[i] = self._patched(hosts[i])

    # --- patching ---

    def _patched(self, resource: Json) -> Json:
        if self.mod.value is not None:
            value = self.mod.value
            typed, old = value.get("typed_config"), resource.get("typed_config")
            if self.mod.target in (NETWORK_FILTER, HTTP_FILTER) and isinstance(typed, dict) and isinstance(old, dict):
                # Kuma merges a filter's typed config into the filter's own (MergeAnys): same type only.
                if typed.get("@type") != old.get("@type"):
                    raise LoadError([Violation(modification_source(self.policy, self.mod.index), "",
                                               f"cannot patch {self.mod.target} {resource.get('name', '')!r}: its "
                                               f"typed_config is a {old.get('@type')}, the patch's a "
                                               f"{typed.get('@type')} (a patch merges into the same type only)")])
                _merge(old, {k: v for k, v in typed.items() if k != "@type"}, self._mark)
                value = {k: v for k, v in value.items() if k != "typed_config"}
            _merge(resource, value, self._mark)
            out = resource
        else:
            out = resource
            for patch in self.mod.json_patches:
                out = self._json_patch(out, patch)
        try:
            envoy_form({k: v for k, v in out.items() if k != "@type"}, TYPE_URLS[self.mod.target])
        except ValueError as exc:
            raise LoadError([Violation(modification_source(self.policy, self.mod.index), "",
                                       f"the patched {self.mod.target} {resource.get('name', '')!r} is no longer a "
                                       f"valid Envoy resource: {exc}")]) from None
        return out

    def _mark(self, container: Json, key: str) -> None:
        self.build.replace_marks(container, key, [self.origin])

    def _mark_all(self, node: Json) -> None:
        for key in node:
            self._mark(node, key)

    def _json_patch(self, doc: Json, patch: JsonPatch) -> Json:
        try:
            result = _apply_patch(doc, patch, self._mark)
        except _PatchError as exc:
            source = modification_source(self.policy, self.mod.index, self.mod.target, "jsonPatches", patch.index)
            raise LoadError([Violation(source, f"{self.mod.target}.jsonPatches[{patch.index}]",
                                       f"cannot apply to {doc.get('name', '')!r}: {exc}")]) from None
        if not isinstance(result, dict):
            raise LoadError([Violation(modification_source(self.policy, self.mod.index), "",
                                       "a JSON patch replaced the whole resource with something not a mapping")])
        return result


def _merge(dst: Json, src: Json, mark: Any) -> None:
    """Protobuf's merge on proto JSON: scalars replaced, messages merged, lists appended, an Any replaced whole."""
    for key, value in src.items():
        old = dst.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and "@type" not in value and "@type" not in old:
            _merge(old, value, mark)
            continue
        if isinstance(value, list) and isinstance(old, list):
            dst[key] = old + copy.deepcopy(value)
        else:
            dst[key] = copy.deepcopy(value)
        mark(dst, key)


# --- RFC 6902 ---


class _PatchError(Exception):
    pass


def _snake(step: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", step).lower()


def _steps(pointer: str) -> list[str]:
    if pointer == "":
        return []
    return [s.replace("~1", "/").replace("~0", "~") for s in pointer[1:].split("/")]


def _key(node: Any, step: str, *, adding: bool) -> str | int:
    if isinstance(node, list):
        if step == "-" and adding:
            return len(node)
        if not step.isdigit() or int(step) > len(node) - (0 if adding else 1):
            raise _PatchError(f"no list position {step!r}")
        return int(step)
    if isinstance(node, dict):
        if step in node or step.startswith("@"):
            return step
        snake = _snake(step)
        if snake in node or adding:
            return snake
        raise _PatchError(f"no field {step!r}")
    raise _PatchError(f"{step!r} steps into a value that is neither a mapping nor a list")


def _parent(doc: Any, pointer: str, *, adding: bool) -> tuple[Any, str | int]:
    steps = _steps(pointer)
    if not steps:
        raise _PatchError("the path names the whole resource")
    node = doc
    for step in steps[:-1]:
        key = _key(node, step, adding=False)
        node = node[key]
    return node, _key(node, steps[-1], adding=adding)


def _get(doc: Any, pointer: str) -> Any:
    node = doc
    for step in _steps(pointer):
        node = node[_key(node, step, adding=False)]
    return node


def _apply_patch(doc: Json, patch: JsonPatch, mark: Any) -> Any:
    op = patch.op
    if op == "test":
        if _get(doc, patch.path) != patch.value:
            raise _PatchError(f"test failed: {patch.path} is not {patch.value!r}")
        return doc
    if op in ("move", "copy"):
        assert patch.from_ is not None
        value = copy.deepcopy(_get(doc, patch.from_))
        if op == "move":
            parent, key = _parent(doc, patch.from_, adding=False)
            del parent[key]
        return _put(doc, patch.path, value, insert=True, mark=mark)
    if op == "remove":
        parent, key = _parent(doc, patch.path, adding=False)
        del parent[key]
        return doc
    return _put(doc, patch.path, copy.deepcopy(patch.value), insert=op == "add", mark=mark)


def _put(doc: Json, pointer: str, value: Any, *, insert: bool, mark: Any) -> Any:
    if pointer == "":
        return value
    parent, key = _parent(doc, pointer, adding=insert)
    if isinstance(parent, list):
        assert isinstance(key, int)
        if insert:
            parent.insert(key, value)
        else:
            parent[key] = value
        if isinstance(value, dict):
            for k in value:
                mark(value, k)
    else:
        assert isinstance(key, str)
        parent[key] = value
        mark(parent, key)
    return doc
