"""Reading an Envoy `/config_dump` document: the dynamic resources a proxy runs, which are the managed ones.

Static bootstrap resources are never managed and never read. Works on a whole dump and on one trimmed with
`?mask=` (which keeps the dump's shape: active and warming clusters apart, each listener with its states), such as
the three answers observe/live.py asks a proxy for (the paths below) joined into one dump.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplan.envoy.types import (
    BOOTSTRAP_CONFIG_DUMP,
    CLUSTERS_CONFIG_DUMP,
    LISTENERS_CONFIG_DUMP,
    SECRETS_CONFIG_DUMP,
)
from meshplan.errors import MeshplanError

# What meshplan asks a proxy's admin API for, each trimmed with `?mask=` to what is compared: who answered (its
# BOOTSTRAP_CONFIG_DUMP section), the clusters (CLUSTERS_CONFIG_DUMP), the listeners (LISTENERS_CONFIG_DUMP).
IDENTITY_PATH = "/config_dump?mask=bootstrap.node.id"
CLUSTERS_PATH = "/config_dump?mask=dynamic_active_clusters,dynamic_warming_clusters"
LISTENERS_PATH = "/config_dump?mask=dynamic_listeners"
SECRETS_PATH = "/config_dump?mask=dynamic_active_secrets"  # only for `meshplan inspect`: plan compares no secrets


class NotAConfigDump(MeshplanError):
    """A document that is not (or not a readable part of) an Envoy /config_dump."""


@dataclass(frozen=True)
class ErroredResource:
    """A dynamic resource Envoy refused (a listener's `error_state`): what it said and the config it refused."""

    name: str
    details: str
    failed_configuration: dict[str, Any] | None = None


@dataclass(frozen=True)
class ManagedResources:
    """The dynamic resources a proxy runs, as Envoy reports them (raw proto-JSON, not yet canonical)."""

    clusters: tuple[dict[str, Any], ...]
    listeners: tuple[dict[str, Any], ...]
    warming_clusters: tuple[str, ...] = ()  # names; not yet active (a new one) or not yet replacing the active one
    warming_listeners: tuple[str, ...] = ()
    errored_listeners: tuple[ErroredResource, ...] = ()
    node_id: str | None = None  # from the bootstrap section, when the dump has one


def managed_resources(config_dump: Mapping[str, Any]) -> ManagedResources:
    """The managed resources in a `/config_dump` document, whole or trimmed with `?mask=` (static ones never).

    Raises NotAConfigDump for a document that is not a config dump.
    """
    configs = config_dump.get("configs") if isinstance(config_dump, Mapping) else None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise NotAConfigDump("not an Envoy config dump: no 'configs' list")
    clusters: list[dict[str, Any]] = []
    listeners: list[dict[str, Any]] = []
    warming_clusters: list[str] = []
    warming_listeners: list[str] = []
    errored: dict[str, ErroredResource] = {}
    node_id: str | None = None
    for config in configs:
        kind = config.get("@type")
        if kind == BOOTSTRAP_CONFIG_DUMP:
            node = config.get("bootstrap", {}).get("node", {})
            node_id = node.get("id") if isinstance(node, dict) else None
        elif kind == CLUSTERS_CONFIG_DUMP:
            for entry in _entries(config, "dynamic_active_clusters"):
                clusters.append(_resource(entry, "cluster", "dynamic_active_clusters"))
            for entry in _entries(config, "dynamic_warming_clusters"):
                warming_clusters.append(_name(_resource(entry, "cluster", "dynamic_warming_clusters")))
        elif kind == LISTENERS_CONFIG_DUMP:
            for entry in _entries(config, "dynamic_listeners"):
                active = entry.get("active_state")
                if isinstance(active, dict):
                    listeners.append(_resource(active, "listener", "dynamic_listeners[].active_state"))
                warming = entry.get("warming_state")
                if isinstance(warming, dict):
                    warming_listeners.append(
                        entry.get("name") or _name(_resource(warming, "listener", "warming_state"))
                    )
                error = entry.get("error_state")
                if isinstance(error, dict):
                    failed = error.get("failed_configuration")
                    failed = failed if isinstance(failed, dict) else None
                    name = entry.get("name") or (failed or {}).get("name") or "?"
                    # Envoy may list one failure more than once (and once without a name): keep the first.
                    errored.setdefault(name, ErroredResource(name, str(error.get("details", "")), failed))
    return ManagedResources(
        clusters=tuple(clusters),
        listeners=tuple(listeners),
        warming_clusters=tuple(warming_clusters),
        warming_listeners=tuple(warming_listeners),
        errored_listeners=tuple(errored.values()),
        node_id=node_id,
    )


def section(answer: Any, type_url: str) -> dict[str, Any]:
    """The one section of `type_url` in a /config_dump answer (trimmed with `?mask=` or not).

    Raises NotAConfigDump when the answer has none.
    """
    configs = answer.get("configs") if isinstance(answer, dict) else None
    if not isinstance(configs, list):
        raise NotAConfigDump("not an Envoy config dump (no 'configs' list)")
    for config in configs:
        if isinstance(config, dict) and config.get("@type") == type_url:
            return config
    raise NotAConfigDump(f"not an Envoy config dump (no {type_url.rpartition('.')[2]})")


def node_id(identity: Any) -> str:
    """The node id of the proxy that gave the answer to IDENTITY_PATH: "" if it has none (Envoy leaves an empty node
    id out). Raises NotAConfigDump for an answer that is not a config dump."""
    bootstrap = section(identity, BOOTSTRAP_CONFIG_DUMP).get("bootstrap")
    node = bootstrap.get("node") if isinstance(bootstrap, dict) else None
    found = node.get("id") if isinstance(node, dict) else None
    return found if isinstance(found, str) else ""


def dynamic_secrets(config_dump: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """The SDS secrets a proxy holds (active ones), as Envoy reports them: its own redaction of private keys
    included, nothing more (`meshplan inspect` redacts again before it shows anything). Raises NotAConfigDump."""
    configs = config_dump.get("configs") if isinstance(config_dump, Mapping) else None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise NotAConfigDump("not an Envoy config dump: no 'configs' list")
    secrets: list[dict[str, Any]] = []
    for config in configs:
        if config.get("@type") == SECRETS_CONFIG_DUMP:
            secrets += [_resource(entry, "secret", "dynamic_active_secrets")
                        for entry in _entries(config, "dynamic_active_secrets")]
    return tuple(secrets)


def _entries(config: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = config.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise NotAConfigDump(f"not an Envoy config dump: {key} is not a list of objects")
    return entries


def _resource(entry: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    resource = entry.get(key)
    if not isinstance(resource, dict) or not isinstance(resource.get("name"), str):
        raise NotAConfigDump(f"not an Envoy config dump: an entry of {where} has no named {key}")
    return resource


def _name(resource: dict[str, Any]) -> str:
    name: str = resource["name"]
    return name
