"""Helpers the policy tests share: render a desired directory, and show what a policy
changed with the origin of every field it set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshplan.compare.canonical import canonical
from meshplan.envoy.binary import validate_configs
from meshplan.model import Desired, ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki


def render(directory: Path) -> dict[str, ProxyConfig]:
    return {p.name: p for p in render_all(load_and_parse(directory))}


def touched(proxy: ProxyConfig, directory: Path) -> dict[str, Any]:
    """The resources a policy changed, with the origin of every field it set (paths inside the desired dir)."""
    out: dict[str, Any] = {}
    for kind, resources in (("cluster", proxy.clusters), ("listener", proxy.listeners)):
        origins = proxy.origins.get(kind, {})
        for resource in resources:
            marked = origins.get(resource["name"])
            if marked:
                out[f"{kind}/{resource['name']}"] = {
                    "resource": resource,
                    "origins": {_dotted(p): [o.replace(str(directory), "<desired>") for o in who] for p, who in marked.items()},
                }
    return out


def _dotted(path: Any) -> str:
    if isinstance(path, str):
        return path
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path).lstrip(".")


def envoy_validates(desired: Desired, state: Path) -> dict[str, str | None]:
    """`envoy --mode validate` of every proxy (None: accepted), with real certificates under `state`; every resource
    first parses with the xds-protos types, or this raises."""
    pki.ensure(desired, state)
    proxies = render_all(desired)
    for proxy in proxies:
        for resource in proxy.clusters + proxy.listeners:
            canonical(resource)
    return validate_configs(proxies, state / "validate")
