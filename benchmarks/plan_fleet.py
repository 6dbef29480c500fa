"""How long does `meshplan plan` take for a fleet, against merely fetching that fleet's dumps? Prints; asserts nothing.

    .venv/bin/python benchmarks/plan_fleet.py [N ...] [--repeat=R] [--parallelism=P] [--subnet=S] [--no-policies]
                                              [--check-envoy]

For each N (default 200 1000 2000) a desired mesh of N proxies is written as YAML: N-1 sidecars of N/5 services
(HTTP, gRPC and TCP, one inbound and five outbounds each, a third of them also calling an external service), one
ZoneEgress in front of six external services, mesh mTLS, and mesh-wide MeshTimeout, MeshRetry and
MeshCircuitBreaker policies with per-service overrides. A server process then answers, for every proxy, the three
admin requests `observe/live.py` makes, each proxy on its own loopback address (127.77.x.y, `--subnet` picks the 77; one
listening socket per proxy, all in one asyncio process), with the body a real Envoy would return for the rendered
resources: each resource parsed into the Envoy protos and printed back as Envoy prints it (proto field names,
defaults dropped, `0.250s`, sensitive fields `[redacted]`), pretty-printed with one space, sent chunked.
`--check-envoy` first shows how close that is: it runs real Envoys (the sandbox) for a small fleet of the same
shapes and compares their answers with the simulated ones.

Then, each in a fresh process (so that its peak RSS, `ru_maxrss`, is its own):
    plan   what `workflow.compute_plan` does: load and validate the YAML, render, fetch every proxy, canonicalise
           and diff, make the Plan; once with the live side equal to the desired one ("none"), once with 5% of
           the sidecars drifted ("drift": on each, one cluster's connect timeout changed, one listener missing,
           one stale cluster more)
    floor  fetching and JSON-parsing the same answers, with the same client and parallelism, and nothing else
Times exclude interpreter start and imports; each figure is the median of R runs (default 3).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import os
import platform
import random
import re
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SIZES = (200, 1000, 2000)
SUBNET = 77  # proxies on 127.77.0.0/16, the egress on 127.78.0.1
CHECK_SUBNET = 79  # --check-envoy: a small fleet of real Envoys on 127.79.0.0/16
ADMIN_PORT = 9901
DRIFT_EVERY = 20  # one sidecar in 20 drifted: 5%
OUTBOUNDS = 5
EXTERNALS = 6
VERSION = "v1"
LAST_UPDATED = "2026-11-25T08:49:13.305Z"
CHILD_TIMEOUT = 900.0  # seconds a measuring process may take
SERVER_START_TIMEOUT = 600.0

IDENTITY_PATH = "/config_dump?mask=bootstrap.node.id"
CLUSTERS_PATH = "/config_dump?mask=dynamic_active_clusters,dynamic_warming_clusters"
LISTENERS_PATH = "/config_dump?mask=dynamic_listeners"
PATHS = (IDENTITY_PATH, CLUSTERS_PATH, LISTENERS_PATH)


# --- the desired mesh -------------------------------------------------------------------------------------------


def proxy_address(subnet: int, i: int) -> str:
    return f"127.{subnet}.{i // 250}.{i % 250 + 1}"


def write_fleet(directory: Path, n: int, *, subnet: int = SUBNET, services: int | None = None,
                loopback_externals: bool = False, policies: bool = True) -> None:
    """A desired directory of `n` proxies: n-1 sidecars and one egress."""
    directory.mkdir(parents=True)
    sidecars = n - 1
    service_count = services or max(5, n // 5)
    service_names = [f"svc-{k:03d}" for k in range(service_count)]
    protocols = ["http", "http", "http", "grpc", "tcp"]  # by service, round robin
    mesh = ("type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n"
            "      type: builtin\nrouting:\n  zoneEgress: true\n")
    (directory / "mesh.yaml").write_text(mesh)
    egress_ip = f"127.{subnet + 1}.0.1"
    (directory / "egress.yaml").write_text(
        f"type: ZoneEgress\nname: egress\nnetworking:\n  address: {egress_ip}\n  port: 10002\n"
        f"  admin:\n    port: {ADMIN_PORT}\n")
    externals = []
    for k in range(EXTERNALS):
        kind = k % 3
        if kind == 1:  # a database by IP, plain TCP, two endpoints
            hosts = [(f"127.{subnet + 1}.1.{2 * k + 1}", 5432), (f"127.{subnet + 1}.1.{2 * k + 2}", 5432)] \
                if loopback_externals else [(f"10.20.{k}.1", 5432), (f"10.20.{k}.2", 5432)]
            externals.append(_external(f"ext-{k}", "tcp", 5432, hosts, None))
        else:  # an API by hostname over TLS, HTTP or gRPC
            host = "localhost" if loopback_externals else f"api-{k}.example.com"
            port = 19000 + k if loopback_externals else 443
            externals.append(_external(f"ext-{k}", "http" if kind == 0 else "grpc", 443, [(host, port)],
                                       f"api-{k}.example.com"))
    (directory / "external.yaml").write_text("---\n".join(externals))
    documents = []
    for i in range(sidecars):
        service = service_names[i % service_count]
        rng = random.Random(i)
        others = [s for s in service_names if s != service]
        ip = proxy_address(subnet, i)
        lines = [
            f"type: Dataplane\nmesh: default\nname: {service}-{i // service_count}\nnetworking:\n  address: {ip}\n",
            f"  admin:\n    port: {ADMIN_PORT}\n  inbound:\n    - port: 8080\n      serviceAddress: {ip}\n",
            f"      servicePort: 18080\n      tags:\n        kuma.io/service: {service}\n",
            f"        kuma.io/protocol: {protocols[i % service_count % len(protocols)]}\n",
            f"        version: v{i // service_count % 2 + 1}\n  outbound:\n",
        ]
        for j, other in enumerate(rng.sample(others, min(OUTBOUNDS, len(others)))):
            lines.append(f"    - address: {ip}\n      port: {10001 + j}\n      tags:\n"
                         f"        kuma.io/service: {other}\n")
        if rng.random() < 1 / 3:
            lines.append(f"    - address: {ip}\n      port: 10101\n      backendRef:\n"
                         f"        kind: MeshExternalService\n        name: ext-{rng.randrange(EXTERNALS)}\n")
        documents.append("".join(lines))
    # a few files, as a team would keep them
    per_file = 250
    for start in range(0, len(documents), per_file):
        chunk = documents[start:start + per_file]
        (directory / f"dataplanes-{start // per_file:02d}.yaml").write_text("---\n".join(chunk))
    if policies:
        (directory / "policies.yaml").write_text(_policies(service_names))


def _external(name: str, protocol: str, port: int, endpoints: list[tuple[str, int]], server_name: str | None) -> str:
    text = (f"type: MeshExternalService\nmesh: default\nname: {name}\nspec:\n  match:\n    type: HostnameGenerator\n"
            f"    port: {port}\n    protocol: {protocol}\n  endpoints:\n")
    text += "".join(f"    - address: {a}\n      port: {p}\n" for a, p in endpoints)
    if server_name is not None:
        text += f"  tls:\n    enabled: true\n    verification:\n      serverName: {server_name}\n"
    return text


def _policies(services: list[str]) -> str:
    head = "mesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n"
    documents = [
        "type: MeshTimeout\nname: mesh-timeouts\n" + head + "    - targetRef:\n        kind: Mesh\n      default:\n"
        "        connectionTimeout: 3s\n        idleTimeout: 10m\n        http:\n          requestTimeout: 15s\n",
        "type: MeshRetry\nname: mesh-retries\n" + head + "    - targetRef:\n        kind: Mesh\n      default:\n"
        "        tcp:\n          maxConnectAttempt: 3\n        http:\n          numRetries: 2\n",
        "type: MeshCircuitBreaker\nname: mesh-breakers\n" + head + "    - targetRef:\n        kind: Mesh\n"
        "      default:\n        connectionLimits:\n          maxConnections: 512\n          maxPendingRequests: 256\n"
        "        outlierDetection:\n          detectors:\n            totalFailures:\n              consecutive: 5\n",
    ]
    for service in services[::10]:  # one service in ten has its own request timeout
        documents.append(
            f"type: MeshTimeout\nname: timeout-{service}\n" + head + "    - targetRef:\n        kind: MeshService\n"
            f"        name: {service}\n      default:\n        http:\n          requestTimeout: 2s\n")
    return "---\n".join(documents)


# --- what Envoy would answer --------------------------------------------------------------------------------------


def envoy_printed(resource_json: dict[str, Any]) -> dict[str, Any]:
    """A rendered resource as Envoy prints it in /config_dump: parsed into its proto, sensitive fields redacted as
    Envoy's MessageUtil::redact does, printed with proto field names and without default values."""
    from google.protobuf import json_format, message_factory

    from meshplan.compare.canonical import message_descriptor

    descriptor = message_descriptor(resource_json["@type"])
    message = message_factory.GetMessageClass(descriptor)()
    json_format.ParseDict({k: v for k, v in resource_json.items() if k != "@type"}, message)
    _redact(message, sensitive=False)
    printed: dict[str, Any] = {"@type": resource_json["@type"]}
    printed.update(json_format.MessageToDict(message, preserving_proto_field_name=True))
    return printed


def _redact(message: Any, *, sensitive: bool) -> None:
    """Envoy's rule, on the message: beneath a field marked sensitive, strings and bytes become "[redacted]" and
    other scalars are cleared; an Any is unpacked, redacted and packed again."""
    from google.protobuf import descriptor_pool, message_factory
    from google.protobuf.descriptor import FieldDescriptor
    from udpa.annotations import sensitive_pb2

    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        if not message.type_url:
            return
        inner_descriptor = descriptor_pool.Default().FindMessageTypeByName(message.type_url.rpartition("/")[2])
        inner = message_factory.GetMessageClass(inner_descriptor)()
        message.Unpack(inner)
        _redact(inner, sensitive=sensitive)
        message.Pack(inner)
        return
    for field, value in message.ListFields():
        hidden = sensitive or field.GetOptions().Extensions[sensitive_pb2.sensitive]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key in list(value):
                if value_field.message_type is not None:
                    _redact(value[key], sensitive=hidden)
                elif hidden and value_field.type == FieldDescriptor.TYPE_STRING:
                    value[key] = "[redacted]"
        elif field.message_type is not None:
            for item in (value if field.is_repeated else [value]):
                _redact(item, sensitive=hidden)
        elif hidden:
            if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                redacted = "[redacted]" if field.type == FieldDescriptor.TYPE_STRING else b"[redacted]"
                if field.is_repeated:
                    value[:] = [redacted] * len(value)
                else:
                    setattr(message, field.name, redacted)
            else:
                message.ClearField(field.name)


def dump_documents(name: str, clusters: list[dict[str, Any]], listeners: list[dict[str, Any]],
                   version: str = VERSION) -> dict[str, dict[str, Any]]:
    """The three masked /config_dump answers of a proxy running these (Envoy-printed) resources, by path."""
    return {
        IDENTITY_PATH: {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                                     "bootstrap": {"node": {"id": name}}}]},
        CLUSTERS_PATH: {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                                     "dynamic_active_clusters": [
                                         {"version_info": version, "cluster": c, "last_updated": LAST_UPDATED}
                                         for c in clusters]}]},
        LISTENERS_PATH: {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                                      "dynamic_listeners": [
                                          {"name": x["name"], "active_state": {
                                              "version_info": version, "listener": x, "last_updated": LAST_UPDATED}}
                                          for x in listeners]}]},
    }


def envoy_body(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=1) + "\n").encode()


def http_answer(body: bytes, status: str = "200 OK") -> bytes:
    """As Envoy's admin API sends it: these headers, the body in one chunk."""
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-cache, max-age=0\r\n"
            f"x-content-type-options: nosniff\r\ndate: Wed, 25 Nov 2026 08:49:13 GMT\r\nserver: envoy\r\n"
            f"transfer-encoding: chunked\r\n\r\n")
    return head.encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def drift(clusters: list[dict[str, Any]], listeners: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """What someone changed behind meshplan's back: one cluster's connect timeout, one listener removed, one
    stale cluster left over."""
    clusters, listeners = copy.deepcopy(clusters), copy.deepcopy(listeners)
    outbound = next(c for c in clusters if not c["name"].startswith("local:"))
    outbound["connect_timeout"] = "1s"
    stale = copy.deepcopy(outbound)
    stale["name"] = stale["load_assignment"]["cluster_name"] = "svc-retired"
    clusters.append(stale)
    listeners.pop()
    return clusters, listeners


# --- the fleet server (its own process) --------------------------------------------------------------------------


class AdminProtocol(asyncio.Protocol):
    """Just enough HTTP/1.1 for the admin requests: keep-alive, GET without a body, a canned answer per path."""

    def __init__(self, answers: list[dict[bytes, bytes]], mode: list[int]) -> None:
        self.answers, self.mode = answers, mode
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > 65536:
            self.transport.close()
            return
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1] if len(parts) == 3 else b""
            answer = self.answers[self.mode[0]].get(path)
            self.transport.write(answer if answer is not None else http_answer(b"invalid path\n", "404 Not Found"))


def serve(root: Path) -> None:
    from meshplan.render.proxies import render_all
    from meshplan.validate.resources import load_and_parse

    proxies = render_all(load_and_parse(root / "desired"))
    plain: dict[bytes, bytes] = {}
    unchanged: list[dict[bytes, bytes]] = []
    changed: list[dict[bytes, bytes]] = []
    sizes = []
    for i, proxy in enumerate(proxies):
        clusters = [envoy_printed(c) for c in proxy.clusters]
        listeners = [envoy_printed(x) for x in proxy.listeners]
        plain = {path.encode(): http_answer(envoy_body(d)) for path, d in
                 dump_documents(proxy.name, clusters, listeners).items()}
        unchanged.append(plain)
        sizes.append(sum(len(a) for a in plain.values()))
        if proxy.type == "sidecar" and i % DRIFT_EVERY == 0:
            drifted = dump_documents(proxy.name, *drift(clusters, listeners))
            changed.append({path.encode(): http_answer(envoy_body(d)) for path, d in drifted.items()})
        else:
            changed.append(plain)
    (root / "targets.json").write_text(json.dumps([[p.name, p.admin_url] for p in proxies]))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(proxies) + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    mode = [0]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        servers = []
        for proxy, answers in zip(proxies, zip(unchanged, changed)):
            assert proxy.address.startswith("127.")  # loopback only
            listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.bind((proxy.address, proxy.admin_port))
            listening.listen(128)
            listening.setblocking(False)
            servers.append(await loop.create_server(functools.partial(AdminProtocol, list(answers), mode),
                                                    sock=listening))
        stop = asyncio.Event()

        def commands() -> None:  # from the parent, one a line: "none", "drift"; end of input stops the server
            for line in sys.stdin:
                mode[0] = 1 if line.strip() == "drift" else 0
                print(f"ok {line.strip()}", flush=True)
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=commands, daemon=True).start()
        resources = sum(len(p.clusters) + len(p.listeners) for p in proxies)
        print(f"ready {len(proxies)} {resources} {sum(sizes)}", flush=True)
        await stop.wait()
        for server in servers:
            server.close()

    asyncio.run(run())


# --- measuring (each in its own process) ------------------------------------------------------------------------


def rss_now_kb() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_plan(root: Path, parallelism: int) -> dict[str, Any]:
    started = time.perf_counter()
    from meshplan.compare.diff import Action
    from meshplan.plan import workflow
    from meshplan.plan.model import make_plan
    from meshplan.render.proxies import render_all
    from meshplan.validate.resources import load_and_parse

    imported = time.perf_counter()
    baseline = rss_now_kb()
    # the plan as `meshplan plan` makes it: workflow.compute_plan (renders in a fork while it fetches)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    plan = workflow.compute_plan(root / "desired", root / "state", parallelism=parallelism)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # then the same steps one after the other, with a clock between them, to show where the time goes
    with workflow._fewer_collections():
        t0 = time.perf_counter()
        desired = load_and_parse(root / "desired")
        t1 = time.perf_counter()
        proxies = render_all(desired)
        t2 = time.perf_counter()
        results = workflow.fetch_live(proxies, parallelism=parallelism)
        t3 = time.perf_counter()
        make_plan(proxies, results, desired_dir=str(root / "desired"))
        t4 = time.perf_counter()
    return {
        "seconds": seconds, "load": t1 - t0, "render": t2 - t1, "fetch": t3 - t2, "diff": t4 - t3,
        "imports": imported - started, "baseline_kb": baseline, "cpu": cpu, "maxrss_kb": maxrss,
        "summary": [plan.count(Action.CREATE), plan.count(Action.UPDATE), plan.count(Action.DELETE),
                    len(plan.changed_proxies), len(plan.unreachable)],
    }


def measure_floor(root: Path, parallelism: int) -> dict[str, Any]:
    import httpx

    from meshplan.observe import live

    baseline = rss_now_kb()
    targets = json.loads((root / "targets.json").read_text())
    timeout = httpx.Timeout(live.DEFAULT_TIMEOUT, pool=None)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()

    async def run() -> list[list[Any]]:
        async with live.new_client(parallelism) as client:
            slots = asyncio.Semaphore(parallelism)

            async def get(url: str) -> Any:
                response = await client.get(url, timeout=timeout)
                response.raise_for_status()
                return json.loads(response.content)

            async def one(admin_url: str) -> list[Any]:
                async with slots:
                    return list(await asyncio.gather(*(get(admin_url + path) for path in PATHS)))

            return list(await asyncio.gather(*(one(url) for _, url in targets)))

    dumps = asyncio.run(run())
    t1 = time.perf_counter()
    assert len(dumps) == len(targets)
    return {"seconds": t1 - t0, "baseline_kb": baseline, "cpu": cpu_seconds() - cpu0,
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


# --- running it all ---------------------------------------------------------------------------------------------


@contextmanager
def fleet_server(root: Path) -> Iterator[subprocess.Popen[str]]:
    server = subprocess.Popen([sys.executable, __file__, "_serve", str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        yield server
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"the fleet server did not answer within {timeout:g}s (exit code {process.poll()})")
    return line.strip()


def child(kind: str, root: Path, parallelism: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "_" + kind, str(root), str(parallelism)], capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench(sizes: list[int], repeat: int, parallelism: int, policies: bool, subnet: int) -> None:
    rows = []
    fleets = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="meshplan-fleet-") as tmp:
            root = Path(tmp)
            write_fleet(root / "desired", n, subnet=subnet, policies=policies)
            with fleet_server(root) as server:
                _, proxies, resources, size = read_line(server, SERVER_START_TIMEOUT).split()
                fleets.append(f"N={n}: {int(proxies) - 1} sidecars of {max(5, n // 5)} services and 1 egress; "
                              f"{int(resources) / int(proxies):.1f} resources and "
                              f"{int(size) / int(proxies) / 1024:.0f} KB of admin answers per proxy; "
                              f"load average before: {load_average()}")
                print(fleets[-1], file=sys.stderr, flush=True)
                for scenario in ("none", "drift"):
                    assert server.stdin is not None
                    server.stdin.write(scenario + "\n")
                    server.stdin.flush()
                    read_line(server, 30)
                    plans: list[dict[str, Any]] = []
                    floors: list[dict[str, Any]] = []
                    for i in range(repeat):
                        # alternate the order, so that neither always runs right after the other
                        for kind in (("plan", "floor") if i % 2 == 0 else ("floor", "plan")):
                            (plans if kind == "plan" else floors).append(child(kind, root, parallelism))
                    rows.append((n, scenario, plans, floors))
            fleets[-1] += f", after: {load_average()}"
    print_table(fleets, rows, repeat, parallelism)


def print_table(fleets: list[str], rows: list[tuple[int, str, list[dict[str, Any]], list[dict[str, Any]]]],
                repeat: int, parallelism: int) -> None:
    print(f"meshplan plan against a simulated fleet on loopback: {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, parallelism {parallelism}, median of {repeat} run(s); seconds, MB")
    for fleet in fleets:
        print("  " + fleet)
    print()
    print(f"{'N':>5} {'drift':>5} {'plan':>7} {'floor':>7} {'ratio':>6} | {'load':>5} {'render':>6} {'fetch':>6} "
          f"{'diff':>5} | {'plan result':<22} | {'peak RSS':>8} {'growth':>6} {'N x':>4} {'KB/proxy':>8} | "
          f"{'floor RSS':>9}")
    previous: dict[str, tuple[int, float]] = {}
    for n, scenario, plans, floors in rows:
        plan, floor = median(plans, "seconds"), median(floors, "seconds")
        add, change, destroy, changed, unreachable = plans[0]["summary"]
        result = f"+{add} ~{change} -{destroy} on {changed}" + (f", {unreachable} unreachable" if unreachable else "")
        rss = max(r["maxrss_kb"] for r in plans) / 1024
        per_proxy = (rss - statistics.median(r["baseline_kb"] for r in plans) / 1024) * 1024 / n
        growth, times = "", ""
        if scenario in previous:
            last_n, last_rss = previous[scenario]
            growth, times = f"{rss / last_rss:.2f}", f"{n / last_n:.1f}"
        previous[scenario] = (n, rss)
        print(f"{n:>5} {scenario:>5} {plan:>7.2f} {floor:>7.2f} {plan / floor:>6.2f} | {median(plans, 'load'):>5.2f} "
              f"{median(plans, 'render'):>6.2f} {median(plans, 'fetch'):>6.2f} {median(plans, 'diff'):>5.2f} | "
              f"{result:<22} | {rss:>8.0f} {growth:>6} {times:>4} {per_proxy:>8.0f} | "
              f"{max(r['maxrss_kb'] for r in floors) / 1024:>9.0f}")
    print()
    imports = statistics.median(r["imports"] for _, _, plans, _ in rows for r in plans)
    baseline = statistics.median(r["baseline_kb"] for _, _, plans, _ in rows for r in plans) / 1024
    print("plan: workflow.compute_plan, as `meshplan plan` runs it (from N=200 it renders in a fork while it fetches); "
          "load..diff: the\nsame steps one after the other, to show where the time goes; floor: the "
          "same three\nrequests per proxy with the same client and parallelism, JSON-parsed, nothing else; ratio = "
          f"plan / floor.\nNot counted: imports ({imports:.2f}s; RSS after them {baseline:.0f} MB). "
          "peak RSS: ru_maxrss "
          "of the plan's process; growth: over the\nprevious N's; N x: N over the previous N; KB/proxy: (peak RSS - "
          "RSS after imports) / N.")


# --- checking the simulation against real Envoys ----------------------------------------------------------------


def check_against_envoy(policies: bool) -> None:
    import httpx

    from meshplan.render.proxies import render_all
    from meshplan.sandbox import mesh as sandbox
    from meshplan.validate.resources import load_and_parse
    from meshplan.xds import pki

    with tempfile.TemporaryDirectory(prefix="meshplan-fleet-check-") as tmp:
        root = Path(tmp)
        write_fleet(root / "desired", 11, subnet=CHECK_SUBNET, services=5, loopback_externals=True, policies=policies)
        desired = load_and_parse(root / "desired")
        state = root / "state"
        proxies = render_all(desired)
        pki.ensure(desired, state)
        sandbox.up(desired, proxies, state)
        try:
            same = differ = 0
            for proxy in proxies:
                clusters = [envoy_printed(c) for c in proxy.clusters]
                listeners = [envoy_printed(x) for x in proxy.listeners]
                expected = dump_documents(proxy.name, clusters, listeners, version=sandbox.SANDBOX_VERSION)
                for path in PATHS:
                    real = httpx.get(proxy.admin_url + path, timeout=10).content
                    simulated = envoy_body(expected[path])
                    if _comparable(real) == _comparable(simulated):
                        same += 1
                    else:
                        differ += 1
                        print(f"{proxy.name} {path}: the simulated answer differs from Envoy's", file=sys.stderr)
                        print(f"  Envoy: {_comparable(real)[:3000]!r}\n  ours:  {_comparable(simulated)[:3000]!r}",
                              file=sys.stderr)
        finally:
            sandbox.down(state)
        print(f"--check-envoy: {len(proxies)} real Envoys, {same + differ} answers: {same} identical to the simulated "
              f"ones (once entries are sorted by name and timestamps blanked), {differ} different")


def _comparable(body: bytes) -> str:
    """An answer with its timestamps blanked and its resources in name order, re-printed as Envoy prints."""
    text = re.sub(rb'"last_updated": "[^"]*"', b'"last_updated": ""', body)
    document = json.loads(text)
    for config in document.get("configs", []):
        for key in ("dynamic_active_clusters", "dynamic_listeners"):
            if key in config:
                config[key].sort(key=lambda e: e.get("name") or e["cluster"]["name"])
    return f"{len(text)} bytes: " + json.dumps(document, indent=1)


def main(argv: list[str]) -> None:
    if argv and argv[0] == "_serve":
        serve(Path(argv[1]))
        return
    if argv and argv[0] in ("_plan", "_floor"):
        measure = measure_plan if argv[0] == "_plan" else measure_floor
        print(json.dumps(measure(Path(argv[1]), int(argv[2]))))
        return
    from meshplan import live  # noqa: F401  (fails early, before any work, if meshplan is broken)

    sizes = [int(a) for a in argv if a.isdigit()]
    options = [a for a in argv if not a.isdigit()]
    repeat, parallelism, subnet = 3, live.DEFAULT_PARALLELISM, SUBNET
    policies = "--no-policies" not in options
    for option in options:
        if option.startswith("--repeat="):
            repeat = int(option.split("=", 1)[1])
        elif option.startswith("--parallelism="):
            parallelism = int(option.split("=", 1)[1])
        elif option.startswith("--subnet="):
            subnet = int(option.split("=", 1)[1])
            if not 0 <= subnet <= 253 or subnet in (CHECK_SUBNET, CHECK_SUBNET + 1):
                raise SystemExit(f"--subnet must be 0-253 and not {CHECK_SUBNET} or {CHECK_SUBNET + 1}")
        elif option not in ("--no-policies", "--check-envoy"):
            raise SystemExit(f"unknown option {option}\n{__doc__}")
    if "--check-envoy" in options:
        check_against_envoy(policies)
    bench(sizes or list(DEFAULT_SIZES), repeat, parallelism, policies, subnet)


if __name__ == "__main__":
    main(sys.argv[1:])
