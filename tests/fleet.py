"""A fleet the test runs itself, the way an operator runs one on real hosts: `meshplan serve` somewhere, each Envoy
started by hand from its `meshplan bootstrap --xds` host directory, demo apps beside them — and, as root, each
host in a network namespace of its own, so that the network is the only way from one to another.

Every process is stopped by PID and every namespace and bridge deleted when the fixture ends, however the test did.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from meshplan.envoy.binary import envoy_binary
from meshplan.xds.store import DirectoryStore


def can_make_namespaces() -> bool:
    """Root with iproute2: the test can give each host a network namespace of its own (CI runs as root)."""
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Hosts:
    """Hosts as network namespaces on one bridge: 198.18.N.1 is this machine (the bridge), each host gets the next
    address. 198.18.0.0/15 is reserved for benchmarking networks: it meets no real network."""

    def __init__(self) -> None:
        self.tag = f"mp{os.getpid() % 10000}{random.randrange(100)}"
        self.bridge = f"{self.tag}br"
        taken = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, timeout=10).stdout
        subnets = [n for n in range(256) if f"198.18.{n}." not in taken and f"198.19.{n}." not in taken]
        self.prefix = f"198.18.{random.choice(subnets)}."
        self.namespaces: list[str] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.prefix}1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    @property
    def local(self) -> str:
        """This machine's address on the hosts' network."""
        return f"{self.prefix}1"

    def add(self) -> tuple[str, str]:
        """A new host: (namespace, its address)."""
        n = len(self.namespaces) + 2
        ns, veth = f"{self.tag}h{n}", f"{self.tag}v{n}"
        address = f"{self.prefix}{n}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns, address

    def close(self) -> None:
        for ns in self.namespaces:  # deleting a namespace deletes its end of the veth, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)


def in_namespace(ns: str | None, argv: Sequence[str]) -> list[str]:
    # `ip netns exec` joins the namespace and execs the command: the PID stays the command's own.
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    state: Path
    address: str
    log: Path
    argv: list[str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Fleet:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.hosts: Hosts | None = None

    def network(self) -> Hosts:
        if self.hosts is None:
            self.hosts = Hosts()
        return self.hosts

    def _start(self, argv: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        self.processes.append(child)
        return child

    def serve(self, state: Path, listen: str, timeout: float = 15.0) -> Server:
        """`meshplan serve`, waited for until its heartbeat says where it listens."""
        argv = [sys.executable, "-m", "meshplan.cli", "serve", "--listen", listen, "--state", str(state)]
        log = self.workdir / f"serve-{len(self.processes)}.log"
        child = self._start(argv, log)
        store = DirectoryStore.under(state)
        deadline = time.monotonic() + timeout
        while True:
            mine = [s for s in store.servers() if s.pid == child.pid]
            if mine:
                return Server(child, state, mine[0].listen, log, argv)
            if child.poll() is not None:
                raise AssertionError(f"meshplan serve exited with {child.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"meshplan serve not serving within {timeout:g}s: {log.read_text()}")
            time.sleep(0.02)

    def restart(self, server: Server, timeout: float = 15.0) -> Server:
        return self.serve(server.state, server.address, timeout)

    def envoy(self, host_dir: Path, ns: str | None = None) -> subprocess.Popen[bytes]:
        """An Envoy as an operator starts one on its host: from the bootstrap in its host directory."""
        argv = [envoy_binary(), "-c", str(host_dir / "bootstrap.json"), "--reject-unknown-dynamic-fields",
                "--disable-hot-restart", "--concurrency", "1", "-l", "info", "--file-flush-interval-msec", "100",
                "--log-path", str(host_dir / "envoy.log")]
        return self._start(in_namespace(ns, argv), host_dir / "envoy.out", cwd=host_dir)

    def app(self, service: str, instance: str, address: str, port: int, ns: str | None = None) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "meshplan.sandbox.demoapp", "--address", address, "--port", str(port),
                "--service", service, "--instance", instance]
        return self._start(in_namespace(ns, argv), self.workdir / "apps" / f"{service}-{instance}.log")

    def close(self) -> list[int]:
        """Stop everything; the PIDs that needed SIGKILL or would not go."""
        stubborn = []
        for child in self.processes:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.processes:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                stubborn.append(child.pid)
                child.kill()
                child.wait(timeout=5)
        if self.hosts is not None:
            self.hosts.close()
        return stubborn


def admin_get(admin_url: str, path: str, timeout: float = 2.0) -> httpx.Response:
    return httpx.get(f"{admin_url}{path}", timeout=timeout, trust_env=False)


def dynamic_clusters(admin_url: str) -> list[str]:
    dump = admin_get(admin_url, "/config_dump?mask=dynamic_active_clusters").json()
    return [c["cluster"]["name"] for config in dump.get("configs", []) for c in config.get("dynamic_active_clusters", [])]


def wait_for(what: str, check: object, timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll `check()` until it returns something truthy (returned), bounded; fail naming `what`."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError, ValueError, json.JSONDecodeError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last!r})")
