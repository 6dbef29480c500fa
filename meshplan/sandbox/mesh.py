"""A local mesh of real Envoys and demo apps on loopback: the embedded default for trying meshplan.

`up` starts one demo app per inbound, one stand-in per external-service endpoint, a `meshplan serve` on the state
directory, and one Envoy per proxy from a host directory of its own (`meshplan bootstrap --xds`), exactly as a real
fleet runs: the Envoys get their configuration from the server and nothing else. It records each PID in
<state>/sandbox.json the moment it exists, and returns once every Envoy is connected and runs what it was given (a
proxy given no resources waits for its first `apply`). `down` stops exactly the recorded processes. Nothing binds
outside 127.0.0.0/8.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import meshplan
from meshplan.envoy.binary import envoy_binary, proxy_dir
from meshplan.errors import SandboxError
from meshplan.model import Desired, ProxyConfig
from meshplan.sandbox.loopback import LocalApp, free_port, preflight
from meshplan.util.fsutil import write_atomic
from meshplan.util.processes import (
    Liveness,
    StopOutcome,
    Stopped,
    TrackedProcess,
    liveness,
    spawn,
    stop,
)
from meshplan.xds import snapshot
from meshplan.xds.bootstrap import write_host_dir
from meshplan.xds.store import DirectoryStore

SANDBOX_FILE = "sandbox.json"
FORMAT_VERSION = 1
SANDBOX_VERSION = "sandbox-1"  # the version of the snapshots `up` writes

ENVOY = "envoy"
SERVER = "server"
SERVER_ADDRESS = "127.0.0.1"

_POLL_INTERVAL = 0.05
# Log lines every Envoy writes that say nothing about why this one failed.
_LOG_NOISE = ("no configured limit to the number of allowed active downstream connections",)


@dataclass(frozen=True)
class ProcessStatus:
    role: str  # envoy | app | external
    name: str  # proxy name; `<service>/<instance>` for apps and external stand-ins
    pid: int
    alive: bool
    admin_url: str | None  # envoys only
    address: str  # where it listens (the admin address for envoys)
    port: int


@dataclass(frozen=True)
class SandboxInfo:
    state_file: Path
    version: str
    processes: tuple[TrackedProcess, ...]
    seconds: float  # how long `up` took

    def envoys(self) -> list[TrackedProcess]:
        return [p for p in self.processes if p.role == ENVOY]


def _client() -> httpx.Client:
    # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback admin calls.
    return httpx.Client(trust_env=False, timeout=httpx.Timeout(1.0))


def _read_state(state_dir: Path) -> list[TrackedProcess]:
    path = state_dir / SANDBOX_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [TrackedProcess.from_json(p) for p in data["processes"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as e:
        raise SandboxError(f"{path} is not a sandbox record ({e}); stop its processes by hand and remove it") from e


def _write_state(state_dir: Path, version: str, processes: list[TrackedProcess]) -> None:
    record = {"format_version": FORMAT_VERSION, "version": version, "processes": [p.to_json() for p in processes]}
    write_atomic(state_dir / SANDBOX_FILE, (json.dumps(record, indent=2) + "\n").encode())


def _log_excerpt(path: str, limit: int = 12) -> str:
    """The warning and error lines of a process log (Envoy's or an app's), newest last."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    levelled = [line for line in lines if re.search(r"\]\[(warning|error|critical)\]\[", line)]
    picked = [line for line in (levelled or lines) if not any(noise in line for noise in _LOG_NOISE)]
    # Envoy's prefix (timestamp, thread, level, source file) is noise here; keep the level and the message.
    prefix = re.compile(r"^\[[^\]]*\]\[\d+\]\[(\w+)\]\[[^\]]*\] (?:\[[^\]]*\] )?")
    # Protobuf pads its messages with random runs of spaces; squeezed, they read (and grep) the same every time.
    cleaned = [re.sub(r"\s+", " ", prefix.sub(r"\1: ", line)) for line in picked]
    return "\n".join(f"    {line}" for line in cleaned[-limit:]) or f"    (nothing in {path})"


def _env_for_apps() -> dict[str, str]:
    # The apps must import this very meshplan, however the CLI was started (installed, or from a checkout).
    env = dict(os.environ)
    root = str(Path(meshplan.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start_app(state_dir: Path, app: LocalApp) -> tuple[TrackedProcess, subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "meshplan.sandbox.demoapp", "--address", app.address, "--port", str(app.port)]
    argv += ["--service", app.service, "--instance", app.instance]
    output = state_dir / "sandbox" / f"{app.role}-{re.sub(r'[^A-Za-z0-9._-]+', '_', app.name)}.log"
    return spawn(app.role, app.name, argv, output=output, address=app.address, port=app.port, cwd=state_dir,
                 env=_env_for_apps())  # fmt: skip


def _start_server(state_dir: Path, port: int) -> tuple[TrackedProcess, subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "meshplan.cli", "serve", "--listen", f"{SERVER_ADDRESS}:{port}", "--state", str(state_dir)]
    output = state_dir / "sandbox" / "serve.log"
    return spawn(SERVER, "meshplan-serve", argv, output=output, address=SERVER_ADDRESS, port=port, cwd=state_dir,
                 env=_env_for_apps())  # fmt: skip


def host_dir(state_dir: Path, proxy: str) -> Path:
    """The sandbox's stand-in for the host of one proxy: what `meshplan bootstrap --xds` writes, and its logs."""
    return proxy_dir(state_dir, proxy)


def _start_envoy(binary: str, state_dir: Path, proxy: ProxyConfig, xds: str) -> tuple[TrackedProcess, subprocess.Popen[bytes]]:
    here = host_dir(state_dir, proxy.name)
    write_host_dir(state_dir, proxy, xds, here)
    log = here / "envoy.log"
    log.unlink(missing_ok=True)  # Envoy appends; only this run's lines explain a failure
    argv = [
        binary,
        "-c", str(here / "bootstrap.json"),
        "--disable-hot-restart",  # several Envoys on one machine would otherwise fight over one shared-memory base id
        "--reject-unknown-dynamic-fields",
        "--concurrency", "1",
        "--log-path", str(log),
        "--file-flush-interval-msec", "100",  # the default leaves the log 10 s behind a failure
        "-l", "info",
    ]  # fmt: skip
    # envoy.out only holds what Envoy prints before its log is set up; failures are read from the log.
    return spawn(ENVOY, proxy.name, argv, output=here / "envoy.out", log=log, address=proxy.address,
                 port=proxy.admin_port, cwd=here)  # fmt: skip


def _config_path(process: TrackedProcess) -> str:
    return process.argv[process.argv.index("-c") + 1]


def _stats(client: httpx.Client, admin: str) -> dict[str, Any]:
    pattern = (
        r"^(cluster_manager\.cds|listener_manager\.lds)\.(version_text|update_rejected|update_failure)$"
        r"|^listener_manager\.total_listeners_warming$|^cluster_manager\.warming_clusters$"
    )
    answer = client.get(f"{admin}/stats", params={"format": "json", "filter": pattern})
    answer.raise_for_status()
    return {s["name"]: s["value"] for s in answer.json()["stats"] if "name" in s}


def _is_ours(client: httpx.Client, process: TrackedProcess) -> bool:
    if process.role != ENVOY:
        return False
    # A second Envoy with a taken admin port exits, while the first keeps answering at that address; its node id
    # and bootstrap path say whose it is.
    info = client.get(f"http://{process.address}:{process.port}/server_info").json()
    options = info.get("command_line_options", {})
    return bool(info.get("node", {}).get("id") == process.name and options.get("config_path") == _config_path(process))


def _envoy_state(client: httpx.Client, store: DirectoryStore, process: TrackedProcess, version: str | None) -> str | None:
    """None once this Envoy is connected to the server and runs `version` (None: was given nothing, and waits);
    else why not yet. Raises SandboxError if it never will."""
    admin = f"http://{process.address}:{process.port}"
    status = store.read_status(process.name)
    if version is not None and status is not None and status.nacked == version:
        raise SandboxError(f"Envoy refused the {status.error_type}s of proxy {process.name}: {status.error}")
    try:
        answer = client.get(f"{admin}/server_info")
        if answer.status_code != 200:
            return f"admin API answers HTTP {answer.status_code}"
        if not _is_ours(client, process):
            raise SandboxError(f"{admin} is answered by another Envoy")
        if status is None or not status.connected:
            return "not connected to meshplan serve yet"
        if version is None:
            return None
        if status.acked != version:
            return f"the server has not had {version!r} ACKed yet"
        warming = sum(int(v) for k, v in _stats(client, admin).items() if "warming" in k)
    except (httpx.HTTPError, ValueError) as e:
        return f"admin API not answering yet ({type(e).__name__})"
    # A warming listener does not serve traffic yet, though its update is already ACKed.
    return f"{warming} clusters or listeners still warming" if warming else None


def _server_state(store: DirectoryStore, process: TrackedProcess) -> str | None:
    if any(s.pid == process.pid and s.alive() for s in store.servers()):
        return None
    return "not serving yet"


def _app_state(client: httpx.Client, process: TrackedProcess) -> str | None:
    url = f"http://{process.address}:{process.port}/"
    try:
        answer = client.get(url).json()
    except (httpx.HTTPError, ValueError) as e:
        return f"not answering yet ({type(e).__name__})"
    if f"{answer.get('service')}/{answer.get('instance')}" != process.name:
        raise SandboxError(f"{url} is answered by something else: {answer!r:.200}")
    return None


def _wait_ready(
    client: httpx.Client,
    store: DirectoryStore,
    started: dict[TrackedProcess, subprocess.Popen[bytes]],
    versions: dict[str, str | None],
    timeout: float,
) -> None:
    waiting = dict(started)
    why: dict[TrackedProcess, str] = {}
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / _POLL_INTERVAL) + 1):
        for process, child in list(waiting.items()):
            code = child.poll()
            if code is not None:
                raise _failed(process, f"exited with code {code}")
            try:
                if process.role == ENVOY:
                    state = _envoy_state(client, store, process, versions.get(process.name))
                elif process.role == SERVER:
                    state = _server_state(store, process)
                else:
                    state = _app_state(client, process)
            except SandboxError as e:
                raise _failed(process, str(e)) from None
            if state is None:
                del waiting[process]
            else:
                why[process] = state
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)
    if waiting:
        lines = []
        for process in waiting:
            lines.append(f"  {process.role} {process.name} (pid {process.pid}): {why.get(process, 'not checked')}")
            if Path(process.log).is_file() and Path(process.log).stat().st_size:
                lines.append(_log_excerpt(process.log, limit=5))
        raise SandboxError(f"not ready within {timeout:g}s:\n" + "\n".join(lines))


def _failed(process: TrackedProcess, reason: str) -> SandboxError:
    # Envoy flushes its log every 100 ms here; give it that long so the excerpt holds the reason.
    time.sleep(0.25)
    logs = [process.log]
    if process.role == ENVOY:
        # What Envoy prints before its log is set up (bad flags, an unreadable bootstrap) goes to stdout/stderr.
        logs.append(str(Path(process.log).with_name("envoy.out")))
    excerpts = [f"  {log}:\n{_log_excerpt(log)}" for log in logs if Path(log).exists() and Path(log).stat().st_size]
    return SandboxError("\n".join([f"{process.role} {process.name} (pid {process.pid}) {reason}", *excerpts]))


def _ask_envoy_to_quit(client: httpx.Client) -> Callable[[TrackedProcess], bool]:
    def ask(process: TrackedProcess) -> bool:
        if process.role != ENVOY:
            return False
        admin = f"http://{process.address}:{process.port}"
        try:
            # Only our own Envoy may be told to quit: the address might be answered by another one.
            if not _is_ours(client, process):
                return False
            return client.post(f"{admin}/quitquitquit").status_code == 200
        except (httpx.HTTPError, ValueError):
            return False

    return ask


def _stop_all(client: httpx.Client, processes: list[TrackedProcess]) -> list[Stopped]:
    return stop(processes, ask=_ask_envoy_to_quit(client))


def up(
    desired: Desired,
    proxies: list[ProxyConfig],
    state_dir: Path,
    *,
    log: Callable[[str], None] | None = None,
    ready_timeout: float = 20.0,
) -> SandboxInfo:
    """Start the sandbox and wait until every proxy serves its configuration; on any failure stop what started."""
    say = log or (lambda message: None)
    began = time.monotonic()
    state_dir = state_dir.absolute()
    running = [p for p in _read_state(state_dir) if liveness(p) is Liveness.RUNNING]
    if running:
        names = ", ".join(f"{p.role} {p.name} (pid {p.pid})" for p in running)
        raise SandboxError(f"a sandbox is already running in {state_dir}: {names}; run `meshplan sandbox down`")

    apps = preflight(desired, proxies)
    binary = envoy_binary()
    store = DirectoryStore.under(state_dir)
    # What each Envoy starts with: a snapshot for a proxy given resources; none (it waits for `apply`) otherwise.
    versions: dict[str, str | None] = {}
    for proxy in proxies:
        store.forget(proxy.name)
        if proxy.clusters or proxy.listeners:
            store.write_snapshot(proxy.name, snapshot.build(state_dir, proxy.name, SANDBOX_VERSION, proxy.clusters, proxy.listeners))
            versions[proxy.name] = SANDBOX_VERSION
        else:
            versions[proxy.name] = None

    started: dict[TrackedProcess, subprocess.Popen[bytes]] = {}
    with _client() as client:
        try:
            for app in apps:
                process, child = _start_app(state_dir, app)
                started[process] = child
                _write_state(state_dir, SANDBOX_VERSION, list(started))
                say(f"started {app.role} {app.name} on {app.address}:{app.port} (pid {process.pid})")
            port = free_port(SERVER_ADDRESS)
            process, child = _start_server(state_dir, port)
            started[process] = child
            _write_state(state_dir, SANDBOX_VERSION, list(started))
            xds = f"{SERVER_ADDRESS}:{port}"
            say(f"started meshplan serve on {xds} (pid {process.pid})")
            for proxy in proxies:
                process, child = _start_envoy(binary, state_dir, proxy, xds)
                started[process] = child
                _write_state(state_dir, SANDBOX_VERSION, list(started))
                say(f"started envoy {proxy.name}, admin {proxy.admin_url} (pid {process.pid})")
            _wait_ready(client, store, started, versions, ready_timeout)
        except BaseException:
            # BaseException: a Ctrl-C while waiting must not leave half a sandbox behind either.
            survivors = [s.process for s in _stop_all(client, list(started)) if s.outcome is StopOutcome.STILL_RUNNING]
            if survivors:
                _write_state(state_dir, SANDBOX_VERSION, survivors)
            else:
                (state_dir / SANDBOX_FILE).unlink(missing_ok=True)
            raise
    seconds = time.monotonic() - began
    say(f"sandbox ready: {len(proxies)} envoys, {len(apps)} apps in {seconds:.2f}s")
    return SandboxInfo(state_dir / SANDBOX_FILE, SANDBOX_VERSION, tuple(started), seconds)


def server_address(state_dir: Path) -> str | None:
    """HOST:PORT of the sandbox's `meshplan serve`, if one is recorded."""
    for process in _read_state(state_dir.absolute()):
        if process.role == SERVER:
            return f"{process.address}:{process.port}"
    return None


def status(state_dir: Path) -> list[ProcessStatus]:
    return [
        ProcessStatus(
            role=p.role,
            name=p.name,
            pid=p.pid,
            alive=liveness(p) is Liveness.RUNNING,
            admin_url=f"http://{p.address}:{p.port}" if p.role == ENVOY else None,
            address=p.address,
            port=p.port,
        )
        for p in _read_state(state_dir.absolute())
    ]


def down(state_dir: Path) -> list[Stopped]:
    """Stop the recorded processes that are still ours and forget the sandbox. Safe to run again."""
    state_dir = state_dir.absolute()
    processes = _read_state(state_dir)
    if not processes:
        (state_dir / SANDBOX_FILE).unlink(missing_ok=True)
        return []
    with _client() as client:
        stopped = _stop_all(client, processes)
    survivors = [s.process for s in stopped if s.outcome is StopOutcome.STILL_RUNNING]
    if survivors:
        names = ", ".join(f"{p.role} {p.name} (pid {p.pid})" for p in survivors)
        _write_state(state_dir, SANDBOX_VERSION, survivors)
        raise SandboxError(f"could not stop {names}; {state_dir / SANDBOX_FILE} still records them")
    (state_dir / SANDBOX_FILE).unlink(missing_ok=True)
    return stopped
