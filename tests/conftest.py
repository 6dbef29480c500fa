"""Fixtures that start real processes (Envoys, demo apps) on loopback, and make sure every one of them is stopped.

`mesh` is a MeshBuilder (tests/builders.py: hand-made proxies on the session's loopback addresses); `sandbox_state`
is a state directory whose sandbox is torn down after the test however it ended, and which fails the test if any
process started under it is still running afterwards.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshplan.model import (
    ProxyConfig,
)
from tests.builders import MeshBuilder, bring_down, pid_running
from tests.otlp_collector import Collector, running_collector


class Loopback:
    """Loopback addresses and free ports, none handed out twice in a session.

    Each session draws its own random 127.x.y.0/24, so two sessions running at once (two checkouts, two engineers)
    are unlikely to meet; x is 240 or more, apart from the 127.40-239 networks of tests/builders.py's `fresh_prefix`.
    Binding to port 0 can return a port it returned before; those are skipped.
    """

    def __init__(self) -> None:
        rng = random.Random()
        self._network = (rng.randint(240, 254), rng.randint(0, 250))
        self._host = 1
        self._given: set[tuple[str, int]] = set()

    def ip(self) -> str:
        self._host += 1
        if self._host > 254:
            self._network, self._host = (self._network[0], (self._network[1] + 1) % 256), 2
        return f"127.{self._network[0]}.{self._network[1]}.{self._host}"

    def port(self, ip: str) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((ip, 0))
                port = int(probe.getsockname()[1])
            if (ip, port) not in self._given:
                self._given.add((ip, port))
                return port
        raise RuntimeError(f"no free port on {ip}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", help="rewrite golden files from the current output")


@pytest.fixture(scope="session")
def loopback() -> Loopback:
    return Loopback()


@pytest.fixture(scope="module")
def otlp_collector(loopback: Loopback) -> Iterator[Collector]:
    """A stand-in OpenTelemetry collector (OTLP/gRPC) on a loopback address of its own, for a module's tests; its
    `address` is what a policy's `endpoint` names (tests/otlp_collector.py)."""
    ip = loopback.ip()
    with running_collector(ip, loopback.port(ip)) as collector:
        yield collector


@pytest.fixture
def mesh(loopback: Loopback) -> MeshBuilder:
    return MeshBuilder(loopback)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    # trust_env=False: a proxy configured in the environment must not intercept loopback traffic.
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        yield client


def deliver(state_dir: Path, proxy: ProxyConfig, version: str, timeout: float = 10.0) -> None:
    """Hand a proxy new clusters and listeners behind meshplan's back, as another tool writing the server's store
    would, and wait (bounded) until the server says the Envoy ACKed them."""
    from meshplan.xds import snapshot
    from meshplan.xds.store import DirectoryStore

    store = DirectoryStore.under(state_dir)
    store.write_snapshot(proxy.name, snapshot.build(state_dir, proxy.name, version, proxy.clusters, proxy.listeners))
    deadline = time.monotonic() + timeout
    while (status := store.read_status(proxy.name)) is None or version not in (status.acked, status.nacked):
        assert time.monotonic() < deadline, f"{proxy.name} did not take {version} within {timeout:g}s: {status}"
        time.sleep(0.02)
    assert status.acked == version, f"{proxy.name} refused {version}: {status.error}"


@pytest.fixture
def sandbox_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory; afterwards its sandbox is brought down and nothing started under it may still run."""
    state = tmp_path / "state"
    state.mkdir()
    with _torn_down(state):
        yield state


@pytest.fixture(scope="module")
def module_sandbox_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`sandbox_state` shared by the tests of one module: for tests that only read a sandbox, which one start serves."""
    state = tmp_path_factory.mktemp("module") / "state"
    state.mkdir()
    with _torn_down(state):
        yield state


@contextmanager
def _torn_down(state: Path) -> Iterator[None]:
    """Bring the sandbox under `state` down however the block ended, and fail if anything started there still runs."""
    try:
        yield
    finally:
        bring_down(state)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Any]:
    """Processes (and, as root, network namespaces) the test starts itself, as an operator would on real hosts;
    all stopped by PID and deleted afterwards (tests/fleet.py)."""
    from tests.fleet import Fleet

    started = Fleet(tmp_path / "fleet")
    try:
        yield started
    finally:
        started.close()
        leaked = [p.pid for p in started.processes if pid_running(p.pid)]
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout if started.hosts else ""
        assert not leaked, f"processes left running after the test: {leaked}"
        assert not (started.hosts and started.hosts.tag in left), f"network namespaces left behind: {left}"


@dataclass
class RunningApp:
    url: str
    address: str
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture
def demoapp(loopback: Loopback) -> Iterator[Callable[..., RunningApp]]:
    """Start `python -m meshplan.demoapp` processes; each is stopped (and, if need be, killed) afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(service: str = "web", instance: str = "web-1") -> RunningApp:
        ip = loopback.ip()
        port = loopback.port(ip)
        argv = [sys.executable, "-m", "meshplan.sandbox.demoapp", "--address", ip, "--port", str(port)]
        child = subprocess.Popen(
            [*argv, "--service", service, "--instance", instance],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(child)
        app = RunningApp(f"http://{ip}:{port}", ip, port, child)
        wait_until_answers(app.url, child)
        return app

    try:
        yield start
    finally:
        for child in started:
            if child.poll() is None:
                child.terminate()
        for child in started:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)


def wait_until_answers(url: str, child: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        for _ in range(int(timeout / 0.02)):
            if child.poll() is not None:
                raise AssertionError(f"{url}: process exited with code {child.returncode}")
            try:
                client.get(url)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
    raise AssertionError(f"{url} did not answer within {timeout}s")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount a small tmpfs (a full disk or a read-only one, for real): `tmpfs("name", size="64k", readonly=False)`.
    Needs root, as CI has; skipped otherwise. Every mount is unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "64k", readonly: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (CI runs as root)")
        where = tmp_path / name
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
        mounted.append(where)
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", str(where)], check=True)


def fill(directory: Path) -> None:
    """Write into `directory` until its file system is full."""
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            for _ in range(1 << 20):
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return
    raise AssertionError(f"{directory} never filled up")
