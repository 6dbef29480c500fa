"""What the tests share to build, check and run desired meshes:

- desired meshes written as YAML: `write_mesh` (services calling each other, an egress, external services, policies)
  returning a `MeshFiles` (where each proxy, inbound and outbound listens), and `dataplane` for one Dataplane by hand;
- hand-made proxies without the renderer: `MeshBuilder` (the `mesh` fixture of tests/conftest.py);
- stable addresses for renders (`FixedAddresses`); the session's `loopback` fixture hands out others for real traffic;
- a desired directory's violations as `meshplan validate` reports them (`violations`, `split_violation`), and the
  checks of the policy tests' validation tables on them (`table_cases`, `assert_violations_start_with`, `assert_violation_reported`,
  `assert_violations_point_at`);
- a rendered proxy's one listener of a direction (`the_listener`);
- a sandbox that is always brought down with nothing left running (`running_sandbox`, `bring_down`; `start_sandbox`
  where the `sandbox_state` fixture brings it down; `running_mesh` for a module's fixture);
- copies of examples/demo on fresh loopback addresses (`copy_demo`, `DemoCopy`, `fresh_prefix`);
- Envoy's admin stats (`stat`, `stats`, `stats_by_suffix`, `wait_for_stat`).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from meshplan.errors import LoadError, Source
from meshplan.model import (
    EGRESS,
    PROTOCOL_TAG,
    SERVICE_TAG,
    SIDECAR,
    Dataplane,
    Desired,
    Endpoint,
    ExternalTLS,
    Inbound,
    Mesh,
    MeshExternalService,
    ProxyConfig,
)
from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki


class Addresses(Protocol):
    def ip(self) -> str: ...

    def port(self, ip: str) -> int: ...


class FixedAddresses:
    """Stable addresses for renders (render is pure: nothing binds them): `<network>1`, `<network>2`, ... and ports
    counting up from `first_port` (per address with `per_address=True`, otherwise across all of them)."""

    def __init__(self, network: str = "127.0.9.", first_port: int = 10001, per_address: bool = False) -> None:
        self._network = network
        self._host = 0
        self._first_port = first_port
        self._per_address = per_address
        self._next: dict[str, int] = {}

    def ip(self) -> str:
        self._host += 1
        return f"{self._network}{self._host}"

    def port(self, ip: str) -> int:
        key = ip if self._per_address else ""
        port = self._next.get(key, self._first_port)
        self._next[key] = port + 1
        return port


# --- desired meshes, written as YAML ---------------------------------------------------------------------------


# The mesh `default`, with mTLS from a builtin CA, and none of Kuma's initial default policies (a test is about the
# policies it writes; MESH_WITH_DEFAULTS is the mesh a Kuma user gets).
MESH_WITH_DEFAULTS = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n"
MESH = MESH_WITH_DEFAULTS + 'skipCreatingInitialPolicies: ["*"]\n'


def dataplane(name: str, address: str, service: str, *, admin: int = 9901, port: int = 8080, app: int = 18080,
              protocol: str = "http", tags: dict[str, str] | None = None, outbounds: str = "",
              service_address: bool = True) -> str:
    """One Dataplane: an inbound of `service` on `address:port` with its app on `app`, and `outbounds` (YAML, a list
    of outbounds at any indentation)."""
    lines = [f"{key}: {value}" for key, value in {"kuma.io/service": service, "kuma.io/protocol": protocol,
                                                   **(tags or {})}.items()]  # fmt: skip
    text = (f"type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  admin:\n"
            f"    port: {admin}\n  inbound:\n    - port: {port}\n"
            + (f"      serviceAddress: {address}\n" if service_address else "")
            + f"      servicePort: {app}\n      tags:\n" + "".join(f"        {line}\n" for line in lines))
    if outbounds:
        text += "  outbound:\n" + textwrap.indent(textwrap.dedent(outbounds).lstrip("\n"), "    ")
    return text


@dataclass(frozen=True)
class Service:
    """A dataplane (`instance`, by default named after the service) with one inbound of `name`, and an outbound to
    each of `calls` (services, or `mes:<name>` for an external service, through the egress)."""

    name: str
    protocol: str = "http"
    tags: dict[str, str] = field(default_factory=dict)
    calls: tuple[str, ...] = ()
    instance: str | None = None


@dataclass
class MeshFiles:
    """A desired directory written by `write_mesh`, and where its proxies and their outbounds listen."""

    root: Path
    outbound: dict[tuple[str, str], str] = field(default_factory=dict)  # (client, target) -> http://ip:port
    admin: dict[str, str] = field(default_factory=dict)  # proxy name -> admin URL
    address: dict[str, str] = field(default_factory=dict)  # proxy name -> its address
    inbound: dict[str, str] = field(default_factory=dict)  # dataplane name -> ip:port of its inbound
    endpoints: dict[str, list[str]] = field(default_factory=dict)  # external service -> ip:port of each endpoint

    def url(self, client: str, target: str, path: str = "/") -> str:
        return self.outbound[(client, target)] + path

    def write(self, files: dict[str, str], dedent: bool = False) -> Path:
        """Write (or overwrite) these files into the directory, as they are or dedented (for texts indented in the
        test's source); returns the directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (self.root / name).write_text(textwrap.dedent(text).lstrip("\n") if dedent else text)
        return self.root

    def write_policies(self, text: str) -> None:
        (self.root / "policies.yaml").write_text(textwrap.dedent(text).lstrip("\n"))

    def load(self) -> Desired:
        return load_and_parse(self.root)

    def render(self) -> list[ProxyConfig]:
        return render_all(self.load())

    def proxies(self) -> dict[str, ProxyConfig]:
        """The render of the directory, by proxy name."""
        return {p.name: p for p in self.render()}


def web_calling(http: tuple[str, ...] = ("backend",), tcp: tuple[str, ...] = (), grpc: tuple[str, ...] = (),
                externals: tuple[str, ...] = ()) -> list[Service]:
    """One instance (`<service>-1`) of each service, and `web` (HTTP) calling each of them and each external service."""
    called = [Service(name, protocol, instance=f"{name}-1") for protocol, names in
              (("http", http), ("tcp", tcp), ("grpc", grpc)) for name in names]  # fmt: skip
    return [*called, Service("web", calls=tuple(s.name for s in called) + tuple(f"mes:{e}" for e in externals))]


def write_mesh(
    root: Path,
    addresses: Addresses,
    services: list[Service],
    *,
    externals: dict[str, str] | None = None,  # name -> protocol
    policies: str = "",
    forbid_external: bool = False,
    external_endpoints: int = 1,
    skip_initial_policies: str | None = '["*"]',
) -> MeshFiles:
    """A mesh with mTLS (mesh.yaml), the services' dataplanes (dataplanes.yaml), an egress with the external services
    (external.yaml; each with `external_endpoints` endpoints on an address of its own) and, if given, policies
    (policies.yaml) under `root`. The Mesh skips Kuma's initial default policies as `skip_initial_policies` says (YAML;
    None: the mesh a Kuma user gets, with all of them)."""
    root.mkdir(parents=True, exist_ok=True)
    files = MeshFiles(root)
    forbid = "true" if forbid_external else "false"
    routing = f"routing:\n  zoneEgress: true\n  defaultForbidMeshExternalServiceAccess: {forbid}\n"
    skip = "" if skip_initial_policies is None else f"skipCreatingInitialPolicies: {skip_initial_policies}\n"
    (root / "mesh.yaml").write_text(MESH_WITH_DEFAULTS + skip + routing)
    docs = []
    for service in services:
        name = service.instance or service.name
        ip = addresses.ip()
        admin, inbound, app = addresses.port(ip), addresses.port(ip), addresses.port(ip)
        files.admin[name], files.address[name], files.inbound[name] = f"http://{ip}:{admin}", ip, f"{ip}:{inbound}"
        outbounds = ""
        for target in service.calls:
            port = addresses.port(ip)
            files.outbound[(name, target)] = f"http://{ip}:{port}"
            if target.startswith("mes:"):
                ref = f"backendRef:\n    kind: MeshExternalService\n    name: {target[4:]}"
            else:
                ref = f"tags:\n    kuma.io/service: {target}"
            outbounds += f"- address: {ip}\n  port: {port}\n  {ref}\n"
        docs.append(dataplane(name, ip, service.name, admin=admin, port=inbound, app=app, protocol=service.protocol,
                              tags=service.tags, outbounds=outbounds, service_address=False))
    (root / "dataplanes.yaml").write_text("---\n".join(docs))
    if externals:
        ip = addresses.ip()
        port, admin = addresses.port(ip), addresses.port(ip)
        files.admin["egress"], files.address["egress"] = f"http://{ip}:{admin}", ip
        docs = [f"type: ZoneEgress\nname: egress\nnetworking:\n  address: {ip}\n  port: {port}\n  admin:\n    port: {admin}\n"]
        for name, protocol in externals.items():
            ext_ip = addresses.ip()
            files.endpoints[name] = [f"{ext_ip}:{addresses.port(ext_ip)}" for _ in range(external_endpoints)]
            endpoints = "".join(f"    - address: {ext_ip}\n      port: {e.rpartition(':')[2]}\n" for e in files.endpoints[name])
            docs.append(
                f"type: MeshExternalService\nmesh: default\nname: {name}\nspec:\n  match:\n    type: HostnameGenerator\n"
                f"    port: 80\n    protocol: {protocol}\n  endpoints:\n{endpoints}"
            )
        (root / "external.yaml").write_text("---\n".join(docs))
    if policies:
        (root / "policies.yaml").write_text(textwrap.dedent(policies))
    return files


# --- copies of the bundled example, on loopback addresses of their own so that tests never meet -------------

DEMO = Path(__file__).parent.parent / "examples" / "demo"

_networks = itertools.count(random.Random().randrange(0, 200 * 250))


def fresh_prefix() -> str:
    """`127.A.B.`: a /24 that no other test of this session has used (and unlikely any other session)."""
    n = next(_networks) % (200 * 250)
    return f"127.{40 + n // 250}.{n % 250}."


@dataclass(frozen=True)
class DemoCopy:
    path: Path
    proxies: str  # the prefix that replaced 127.0.1.
    externals: str  # the prefix that replaced 127.0.2.

    def addr(self, original: str) -> str:
        """Where an address of examples/demo (`127.0.1.1`) lives in this copy."""
        return original.replace("127.0.1.", self.proxies).replace("127.0.2.", self.externals)

    def url(self, original: str, path: str = "/") -> str:
        return f"http://{self.addr(original)}{path}"


def copy_demo(target: Path, source: Path = DEMO) -> DemoCopy:
    """examples/demo moved from 127.0.1.x and 127.0.2.x to two fresh /24s."""
    copy = DemoCopy(target, fresh_prefix(), fresh_prefix())
    shutil.copytree(source, target)
    for path in target.rglob("*.y*ml"):
        path.write_text(copy.addr(path.read_text()))
    return copy



# --- hand-made proxies (no render): plain-text HTTP configurations for the sandbox, Envoy and serve tests --------

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
SOURCE = Source("tests/builders.py", 1)



def static_cluster(name: str, address: str, port: int, **extra: Any) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}}
    return {
        "@type": CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
        **extra,
    }


def http_listener(name: str, address: str, port: int, cluster: str) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": {"cluster": cluster}}
    manager = {
        "@type": HCM,
        "stat_prefix": name.replace(":", "_"),
        "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "@type": LISTENER,
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


@dataclass
class MeshBuilder:
    """A hand-made mesh: each sidecar has its own loopback address, one HTTP inbound and the demo app behind it."""

    loopback: Addresses  # the session's `loopback` fixture
    dataplanes: list[Dataplane] = field(default_factory=list)
    proxies: list[ProxyConfig] = field(default_factory=list)
    external_services: list[MeshExternalService] = field(default_factory=list)

    def sidecar(self, name: str, service: str = "web") -> ProxyConfig:
        ip = self.loopback.ip()
        admin, inbound, app = (self.loopback.port(ip) for _ in range(3))
        tags = {SERVICE_TAG: service, PROTOCOL_TAG: "http"}
        self.dataplanes.append(
            Dataplane(name, "default", ip, admin, (Inbound(ip, inbound, ip, app, tags),), (), SOURCE)
        )
        cluster = f"localhost:{app}"
        proxy = ProxyConfig(
            name=name,
            type=SIDECAR,
            mesh="default",
            address=ip,
            admin_port=admin,
            clusters=(static_cluster(cluster, ip, app),),
            listeners=(http_listener(f"inbound:{ip}:{inbound}", ip, inbound, cluster),),
        )
        self.proxies.append(proxy)
        return proxy

    def external(self, name: str) -> Endpoint:
        ip = self.loopback.ip()
        endpoint = Endpoint(ip, self.loopback.port(ip))
        tls = ExternalTLS(enabled=False)
        self.external_services.append(MeshExternalService(name, "default", 80, "http", (endpoint,), tls, SOURCE))
        return endpoint

    def egress(self, name: str, to: Endpoint) -> ProxyConfig:
        """A stand-in egress: one plain-text HTTP listener forwarding to one external endpoint."""
        ip = self.loopback.ip()
        admin, port = self.loopback.port(ip), self.loopback.port(ip)
        cluster = f"external:{to.address}:{to.port}"
        proxy = ProxyConfig(
            name=name,
            type=EGRESS,
            mesh=None,
            address=ip,
            admin_port=admin,
            clusters=(static_cluster(cluster, to.address, to.port),),
            listeners=(http_listener(f"egress:{ip}:{port}", ip, port, cluster),),
        )
        self.proxies.append(proxy)
        return proxy

    def change(self, proxy: str, /, **changes: Any) -> ProxyConfig:
        """Replace fields of the proxy named `proxy` (e.g. its clusters) in place; returns the new proxy."""
        index = next(i for i, p in enumerate(self.proxies) if p.name == proxy)
        self.proxies[index] = replace(self.proxies[index], **changes)
        return self.proxies[index]

    def desired(self) -> Desired:
        mesh = Mesh("default", mtls=False, source=None)
        return Desired({"default": mesh}, list(self.dataplanes), [], list(self.external_services), [])


def the_listener(proxy: ProxyConfig, direction: str = "INBOUND") -> dict[str, Any]:
    """The proxy's one listener of this `traffic_direction` (fails when there is not exactly one)."""
    (found,) = [item for item in proxy.listeners if item.get("traffic_direction") == direction]
    return found


def listener_url(proxy: ProxyConfig, index: int = 0) -> str:
    socket_address = proxy.listeners[index]["address"]["socket_address"]
    return f"http://{socket_address['address']}:{socket_address['port_value']}"


# --- validation -------------------------------------------------------------------------------------------------


def violations(root: Path) -> list[str]:
    """What `meshplan validate` reports for the desired directory `root` (one `file:line: path: message` per
    violation, file names relative to `root`); [] when it is valid. Nothing is checked twice or added."""
    try:
        load_and_parse(root)
    except LoadError as e:
        return [str(v).removeprefix(f"{root}/") for v in e.violations]
    return []


def table_cases(table: Iterable[Sequence[Any]]) -> list[Any]:
    """A validation table's rows as pytest parameters: each named by its first column (the case), carrying the rest."""
    return [pytest.param(*row[1:], id=row[0]) for row in table]


def assert_violations_start_with(found: list[str], expected: list[str]) -> None:
    """`found` (from `violations`) is one violation per item of `expected`, in order, each starting with that item."""
    assert len(found) == len(expected), found
    for line, want in zip(found, expected, strict=True):
        assert line.startswith(want), found


def assert_violation_reported(found: list[str], file: str, line: int, path: str, message: str) -> None:
    """Among `found` (from `violations`), one is at `file:line` and `path`, saying `message`; all are in `file`."""
    where = f"{file}:{line}: {path}: "
    assert any(v.startswith(where) and message in v for v in found), found
    assert all(v.startswith(f"{file}:") for v in found), found


def assert_violations_point_at(directory: Path, file: str, expected: list[tuple[str, str, str]],
                               section: str = "spec.to[0].default") -> None:
    """The desired `directory` has exactly the `expected` violations, each (path below `section`, a fragment of its
    message, text on the line of `file` it points at)."""
    lines = (directory / file).read_text().splitlines()
    found = violations(directory)
    assert len(found) == len(expected), "\n".join(found)
    for path, fragment, on_line in expected:
        want = f"{section}{path}"
        matching = [v for v in map(split_violation, found) if v[2] == want and fragment in v[3]]
        assert matching, f"no violation at {want} saying {fragment!r} in:\n" + "\n".join(found)
        where, line, _, _ = matching[0]
        assert where == file
        assert on_line in lines[line - 1], (matching[0], lines[line - 1])


# --- a sandbox that is always brought down ----------------------------------------------------------------------


def pid_running(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for this (parent) process to reap it."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _processes_under(directory: Path) -> list[int]:
    """PIDs whose working directory or command line lies in `directory`: what a sandbox there could have started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        mine = (cwd + "/").startswith(f"{directory}/") or str(directory) in cmdline
        if mine and pid_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def bring_down(state: Path) -> None:
    """Bring the sandbox under `state` down; then nothing it recorded or started under `state` may still run
    (whatever does is killed, and the caller fails)."""
    recorded = [p.pid for p in sandbox.status(state)] if (state / sandbox.SANDBOX_FILE).exists() else []
    try:
        sandbox.down(state)
    finally:
        leaked = sorted({pid for pid in recorded if pid_running(pid)} | set(_processes_under(state)))
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert not leaked, f"processes left running after the test: {leaked}"


def start_sandbox(desired: Desired | Path, state: Path) -> list[ProxyConfig]:
    """Bring up a sandbox running exactly what `desired` (or the desired directory) renders to, with certificates
    under `state`; bringing it down is the caller's (`running_sandbox`, or the `sandbox_state` fixture)."""
    if isinstance(desired, Path):
        desired = load_and_parse(desired)
    state.mkdir(parents=True, exist_ok=True)
    pki.ensure(desired, state)
    proxies = render_all(desired)
    sandbox.up(desired, proxies, state)
    return proxies


def running_mesh(root: Path, write: Callable[[Path], MeshFiles]) -> Iterator[MeshFiles]:
    """For a module's `running` fixture: the mesh `write` puts in `root/desired`, on a sandbox under `root/state`
    for as long as the fixture lives (`yield from running_mesh(...)`)."""
    files = write(root / "desired")
    with running_sandbox(files.load(), root / "state"):
        yield files


@contextmanager
def running_sandbox(desired: Desired, state: Path) -> Iterator[list[ProxyConfig]]:
    """The desired mesh on real Envoys (and demo apps) on loopback (`start_sandbox`); brought down afterwards however
    the block ended (`bring_down`)."""
    try:
        yield start_sandbox(desired, state)
    finally:
        bring_down(state)


# --- Envoy's admin stats ----------------------------------------------------------------------------------------


def stats(client: httpx.Client, admin_url: str, pattern: str) -> dict[str, int]:
    """Every counter and gauge of an Envoy whose name matches the regex `pattern` (`/stats?filter=`)."""
    answer = client.get(f"{admin_url}/stats", params={"format": "json", "filter": pattern})
    answer.raise_for_status()
    return {s["name"]: int(s["value"]) for s in answer.json()["stats"] if "name" in s and "value" in s}


def stats_by_suffix(client: httpx.Client, admin_url: str, pattern: str) -> dict[str, int]:
    """`stats`, each named by the last part of its name only (`...fault.aborts_injected` -> `aborts_injected`)."""
    return {name.rsplit(".", 1)[-1]: value for name, value in stats(client, admin_url, pattern).items()}


def stat(client: httpx.Client, admin_url: str, name: str) -> int:
    """One counter or gauge of an Envoy (0 when Envoy has not created it yet). Envoy writes the colons of resource
    names (`mes:default:httpbin`) as `_`; either spelling may be asked for."""
    name = name.replace(":", "_")
    escaped = "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in name)
    return stats(client, admin_url, f"^{escaped}$").get(name, 0)


def wait_for_stat(client: httpx.Client, admin_url: str, name: str, at_least: int, timeout: float = 3.0) -> int:
    """Envoy counts some things shortly after answering (mirrors, overflows): poll, boundedly, until the counter
    reaches `at_least`; returns the last value read."""
    deadline = time.monotonic() + timeout
    value = stat(client, admin_url, name)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        value = stat(client, admin_url, name)
    return value


def assert_timed_out(http: httpx.Client, files: MeshFiles, client: str, target: str, path: str = "/delay/1500") -> None:
    """A request from `client`'s sidecar to `target` that a route timeout shorter than the app's delay cut: Envoy's
    own 504 (the route's 15 s default would have let it answer) and the proxy's timeout counter for that cluster. No
    wall-clock bound: the 504 already says the timeout came first, on however busy a machine."""
    answer = http.get(files.url(client, target, path))
    assert (answer.status_code, answer.text) == (504, "upstream request timeout"), client
    assert wait_for_stat(http, files.admin[client], f"cluster.{target}.upstream_rq_timeout", 1) >= 1, client


def assert_answered_slowly(http: httpx.Client, files: MeshFiles, client: str, target: str,
                           path: str = "/delay/1500") -> None:
    """The same request where no short timeout applies: the app's answer after its delay, no timeout counted."""
    answer = http.get(files.url(client, target, path))
    assert answer.status_code == 200 and answer.json()["delay_ms"] == int(path.rpartition("/")[2]), client
    assert stat(http, files.admin[client], f"cluster.{target}.upstream_rq_timeout") == 0, client


def split_violation(reported: str) -> tuple[str, int, str, str]:
    """One line of `violations()` as (file, line, path, message)."""
    where, path, message = reported.split(": ", 2)
    file, _, line = where.rpartition(":")
    return file, int(line), path, message
