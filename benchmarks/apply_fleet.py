"""How long does `meshplan apply` take to deliver a change to a whole fleet through `meshplan serve`, against the
server pushing the same change by itself? Prints; asserts nothing.

    .venv/bin/python benchmarks/apply_fleet.py [N ...] [--repeat=R] [--clients=K] [--check-envoy]

For each N (default 100 1000 5000) the fleet of benchmarks/plan_fleet.py (N-1 sidecars, one egress, mesh mTLS,
mesh-wide MeshTimeout/MeshRetry/MeshCircuitBreaker) is rendered; every proxy gets its mesh certificate and its xDS
client certificate (kept between runs in the work directory: 2N keys take a while to make). Then:

    serve    a `meshplan serve` process on 127.0.0.1, with every proxy's snapshot in its store
    clients  K processes (default 2) of simulated Envoys, N ADS streams in all, each over mTLS with its own proxy's
             client certificate, speaking the protocol as Envoy does: CDS first; the secrets its clusters name
             asked for by name before the clusters are ACKed (clusters warm until they have them); LDS once the
             clusters are ACKed; every response ACKed with its version and nonce
    apply    the one-policy change (the mesh-wide MeshTimeout's connectionTimeout) that touches every sidecar, as
             `apply_plan` delivers it: snapshots built (JSON -> protobuf) and written to the store, then waited for
             until the server reports every one ACKed. Timed from the call to its return. The simulated Envoys have
             no admin API: every proxy ends `acknowledged` (the verification step finds no admin API at once).
    floor    the same kind of change pushed by the server alone: the snapshots, built and encoded beforehand, are
             renamed into the store all at once; timed from the first rename to the last ACK the clients see.

Apply and floor alternate (apply 3s -> 4s, floor 4s -> 3s, ...), R times each (default 3); figures are medians. The server's memory
per stream is its RSS with every stream connected and served, less its RSS before the first client, over N.

`--check-envoy` first runs a small fleet (N=100) in which five proxies are real Envoys started from their
`meshplan bootstrap --xds` host directories, and shows that they take a push in the same window as the simulated
ones, through the same steps (the store's status of each: acked at the pushed version), and that each real Envoy
then runs exactly its desired configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT_SIZES = (100, 1000, 5000)
SUBNET = 87  # the fleet's (unused) addresses: 127.87.x.y
WORK = Path(tempfile.gettempdir()) / "meshplan-apply-fleet"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TIMEOUTS = ("connectionTimeout: 3s", "connectionTimeout: 4s")


# --- the simulated Envoys (a child process: --clients SPEC) -------------------------------------------------------


async def _one_client(node: str, cert: bytes, key: bytes, ca: bytes, target: str, state: dict[str, Any]) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    from meshplan.xds.identity import SERVER_NAME

    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]

    async def requests(outbox: asyncio.Queue[Any]) -> Any:
        while (item := await outbox.get()) is not None:  # None: the parent is done, end the stream
            yield item

    acked: dict[str, str] = {"node": node}
    pending_cds: Any = None  # a CDS response whose ACK waits for the secrets its clusters name
    have_secrets = False
    subscribed_lds = False
    while True:
        try:
            async with grpc.aio.secure_channel(target, credentials, options=options) as channel:
                outbox: asyncio.Queue[Any] = asyncio.Queue()  # one per stream: a dead one must not take its messages
                state["outboxes"][node] = outbox
                have_secrets, pending_cds = False, None  # a new stream asks for its secrets again, as Envoy does
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(requests(outbox))
                outbox.put_nowait(discovery_pb2.DiscoveryRequest(
                    node=base_pb2.Node(id=node, cluster="default"), type_url=CLUSTER, version_info=acked.get(CLUSTER, "")))
                if subscribed_lds:
                    outbox.put_nowait(discovery_pb2.DiscoveryRequest(type_url=LISTENER, version_info=acked.get(LISTENER, "")))
                async for response in call:
                    ack = discovery_pb2.DiscoveryRequest(type_url=response.type_url, version_info=response.version_info,
                                                         response_nonce=response.nonce)
                    if response.type_url == CLUSTER:
                        if not have_secrets:
                            pending_cds = ack  # like Envoy: the clusters warm until their secrets arrive
                            outbox.put_nowait(discovery_pb2.DiscoveryRequest(
                                type_url=SECRET, resource_names=["identity:default", "ca:default"]))
                            continue
                    elif response.type_url == SECRET:
                        ack.resource_names.extend(["identity:default", "ca:default"])
                        have_secrets = True
                    outbox.put_nowait(ack)
                    _acked(state, acked, response.type_url, response.version_info)
                    if pending_cds is not None and have_secrets:
                        outbox.put_nowait(pending_cds)
                        _acked(state, acked, CLUSTER, pending_cds.version_info)
                        pending_cds = None
                    if CLUSTER in acked and not subscribed_lds:
                        subscribed_lds = True
                        outbox.put_nowait(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
        except grpc.aio.AioRpcError as e:
            state["reconnects"] = state.get("reconnects", 0) + 1
            if state["reconnects"] <= 3:
                print(f"{node}: stream ended ({e.code().name}: {e.details()}), reconnecting", file=sys.stderr, flush=True)
            await asyncio.sleep(0.25)  # Envoy's retry_back_off base interval


def _acked(state: dict[str, Any], acked: dict[str, str], type_url: str, version: str) -> None:
    """A delivery is whole once its clusters are ACKed at a final version (not a make-before-break step's `-make`):
    the benchmark's change is to clusters only, so the server sends no listeners (they did not change), except on
    a stream's first delivery, which is whole once both are ACKed."""
    acked[type_url] = version
    final = acked.get(CLUSTER, "")
    node = acked["node"]
    if final and not final.endswith("-make") and LISTENER in acked and state["finals"].get(node) != final:
        state["finals"][node] = final
        state["done"].add(node)
        state["last"] = time.time()


def run_clients(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    pki = Path(spec["pki"])
    ca = (pki / "ca.crt").read_bytes()
    state: dict[str, Any] = {"finals": {}, "done": set(), "last": 0.0, "outboxes": {}}
    nodes = spec["nodes"]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        epochs: asyncio.Queue[str] = asyncio.Queue()
        loop.add_reader(sys.stdin.fileno(), lambda: epochs.put_nowait(sys.stdin.readline()))
        tasks = []
        for node in nodes:
            cert = (pki / "proxies" / f"{node}.crt").read_bytes()
            key = (pki / "proxies" / f"{node}.key").read_bytes()
            tasks.append(asyncio.create_task(_one_client(node, cert, key, ca, spec["target"], state)))
        while True:  # one epoch per line from the parent: report once each of its streams has a new whole version
            line = await epochs.get()
            if not line:  # end every stream, then collect every task, so that none ends unobserved at exit
                for outbox in state["outboxes"].values():
                    outbox.put_nowait(None)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                return
            expected = set(line.split()[1].split(",")) & set(nodes) if len(line.split()) > 1 else set(nodes)
            state["done"] = set()
            print("ready", flush=True)  # the parent pushes only after this: no ACK can come before the epoch
            while not expected <= state["done"]:
                await asyncio.sleep(0.005)
            print(f"done {state['last']:.6f}", flush=True)

    asyncio.run(main())


# --- the parent ---------------------------------------------------------------------------------------------------


def prepare(n: int) -> tuple[Path, Path, list[Any], list[Any]]:
    """The fleet's desired directory and state (certificates kept between runs), and its proxies rendered both ways."""
    import plan_fleet

    from meshplan.render.proxies import render_all
    from meshplan.validate.resources import load_and_parse
    from meshplan.xds import identity, pki

    work = WORK / str(n)
    desired_dir, state = work / "desired", work / "state"
    if desired_dir.exists():
        shutil.rmtree(desired_dir)
    plan_fleet.write_fleet(desired_dir, n, subnet=SUBNET)
    for sub in ("xds/snapshots", "xds/acked", "xds/status", "xds/servers"):
        shutil.rmtree(state / sub, ignore_errors=True)
    began = time.monotonic()
    desired = load_and_parse(desired_dir)
    pki.ensure(desired, state)
    identity.ensure_server(state)
    for name in desired.proxy_names():
        identity.ensure_client(state, name)
    print(f"  N={n}: certificates ready in {time.monotonic() - began:.1f}s", flush=True)
    versions = []
    policies = desired_dir / "policies.yaml"
    text = policies.read_text()
    for timeout in TIMEOUTS:
        policies.write_text(text.replace(TIMEOUTS[0], timeout))
        versions.append(render_all(load_and_parse(desired_dir)))
    return desired_dir, state, versions[0], versions[1]


def changed(before: list[Any], after: list[Any]) -> list[Any]:
    """The proxies of `after` whose resources differ from `before`: what a plan would change."""
    old = {p.name: (p.clusters, p.listeners) for p in before}
    return [p for p in after if old.get(p.name) != (p.clusters, p.listeners)]


def plan_for(proxies: list[Any]) -> Any:
    """A Plan that changes these proxies (made directly: the simulated Envoys have no admin API)."""
    from meshplan.compare.canonical import fingerprint
    from meshplan.compare.diff import Action
    from meshplan.plan.model import Plan, ProxyPlan, ResourcePlan

    return Plan(tuple(ProxyPlan(
        name=p.name, type=p.type, mesh=p.mesh, admin_url="http://127.0.0.1:9", status="ok",
        desired_fingerprint=fingerprint(p.clusters + p.listeners), live_fingerprint="",
        changes=(ResourcePlan("cluster", "*", Action.UPDATE),),
        desired={"clusters": tuple(p.clusters), "listeners": tuple(p.listeners)}) for p in proxies))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Clients:
    def __init__(self, nodes: list[str], state: Path, target: str, processes: int) -> None:
        self.children: list[subprocess.Popen[str]] = []
        for k in range(processes):
            spec = state.parent / f"clients-{k}.json"
            spec.write_text(json.dumps({"nodes": nodes[k::processes], "pki": str(state / "xds" / "pki"), "target": target}))
            self.children.append(subprocess.Popen([sys.executable, __file__, "--clients", str(spec)], text=True,
                                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE))

    def epoch(self, changing: list[str] | None = None) -> None:
        """From now, wait for these nodes (all: None) to take a new version."""
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write(f"epoch {','.join(changing)}\n" if changing else "epoch\n")
            child.stdin.flush()
        for child in self.children:
            assert child.stdout is not None
            if child.stdout.readline() != "ready\n":
                raise RuntimeError("a client process did not take the epoch")

    def wait(self, timeout: float = 600.0) -> float:
        """The time of the last ACK, once every stream has a new whole version."""
        last = 0.0
        for child in self.children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line.startswith("done "):
                raise RuntimeError(f"a client process said {line!r}")
            last = max(last, float(line.split()[1]))
        return last

    def stop(self) -> None:
        for child in self.children:
            child.kill()
            child.wait()


def start_server(state: Path) -> tuple[subprocess.Popen[str], str]:
    from meshplan.xds.store import DirectoryStore

    log = (state.parent / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "meshplan.cli", "serve", "--listen", "127.0.0.1:0", "--state",
                               str(state)], stderr=log, text=True)
    store = DirectoryStore.under(state)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        mine = [s for s in store.servers() if s.pid == server.pid]
        if mine:
            return server, mine[0].listen
        time.sleep(0.05)
    raise RuntimeError("meshplan serve did not start")


def write_all(state: Path, proxies: list[Any], version: str) -> None:
    from meshplan.xds import snapshot
    from meshplan.xds.store import DirectoryStore

    store = DirectoryStore.under(state)
    for p in proxies:
        store.write_snapshot(p.name, snapshot.build(state, p.name, version, p.clusters, p.listeners))


def floor_push(state: Path, proxies: list[Any], version: str, clients: Clients) -> float:
    """The server alone: encoded snapshots renamed into its store at once; first rename to the last ACK."""
    from meshplan.xds import snapshot

    directory = state / "xds" / "snapshots"
    staged = []
    for p in proxies:
        temp = directory / f".{p.name}.staged"
        temp.write_bytes(snapshot.build(state, p.name, version, p.clusters, p.listeners).encode())
        staged.append((temp, directory / f"{p.name}.pb"))
    clients.epoch([p.name for p in proxies])
    began = time.time()
    for temp, final in staged:
        os.replace(temp, final)
    return clients.wait() - began


def apply_push(state: Path, proxies: list[Any], clients: Clients) -> dict[str, Any]:
    """apply_plan's figures: from its first snapshot written to the last ACK it saw (`apply`); its whole call; the
    snapshots' build before that; and the last ACK a client sent."""
    from meshplan.apply.deliver import apply_plan

    plan = plan_for(proxies)
    clients.epoch([p.name for p in proxies])
    began = time.time()
    results = apply_plan(plan, state, parallelism=len(proxies), wait=600, timeout=1)
    ended = time.time()
    last_ack = clients.wait()
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.outcome.value] = outcomes.get(r.outcome.value, 0) + 1
    written = max(r.written_at for r in results)
    return {"apply": max(r.answered_at for r in results) - written, "call": ended - began,
            "before": written - began, "client_last_ack": last_ack - written, "outcomes": outcomes}


def bench(n: int, repeat: int, processes: int) -> dict[str, Any]:
    desired_dir, state, first, second = prepare(n)
    write_all(state, first, "initial")
    server, target = start_server(state)
    clients = None
    try:
        time.sleep(0.5)
        before = rss_kb(server.pid)
        began = time.monotonic()
        clients = Clients([p.name for p in first], state, target, processes)
        clients.epoch()
        clients.wait()
        connected = time.monotonic() - began
        after = rss_kb(server.pid)
        runs, floors = [], []
        there, back = changed(first, second), changed(second, first)
        for r in range(repeat):  # apply there, the server alone back; again
            runs.append(apply_push(state, there, clients))
            floors.append(floor_push(state, back, f"floor-{r}", clients))
        row = {key: statistics.median(run[key] for run in runs) for key in ("apply", "call", "before", "client_last_ack")}
        return {"n": n, **row, "floor": statistics.median(floors), "applies": [r["apply"] for r in runs],
                "floors": floors, "outcomes": runs[-1]["outcomes"], "connect": connected,
                "rss_before_mb": before / 1024, "rss_after_mb": after / 1024, "kb_per_stream": (after - before) / n,
                "load": os.getloadavg()}
    finally:
        if clients is not None:
            clients.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def check_envoy(processes: int) -> None:
    """N=100 with five real Envoys among the simulated ones: same window, same steps, and each runs its config."""
    from meshplan.apply.deliver import apply_plan
    from meshplan.compare.canonical import fingerprint
    from meshplan.envoy.binary import envoy_binary
    from meshplan.observe.live import fetch_proxy, new_client
    from meshplan.xds.bootstrap import write_host_dir
    from meshplan.xds.store import DirectoryStore

    desired_dir, state, first, second = prepare(100)
    real = [p for p in first if p.type == "sidecar"][:5]
    names = {p.name for p in real}
    write_all(state, first, "initial")
    server, target = start_server(state)
    envoys = []
    clients = None
    try:
        for p in real:
            host = state.parent / "hosts" / p.name
            write_host_dir(state, p, target, host)
            envoys.append(subprocess.Popen([envoy_binary(), "-c", str(host / "bootstrap.json"),
                                            "--reject-unknown-dynamic-fields", "--disable-hot-restart",
                                            "--concurrency", "1", "-l", "error"], cwd=host,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        clients = Clients([p.name for p in first if p.name not in names], state, target, processes)
        clients.epoch()
        clients.wait()
        store = DirectoryStore.under(state)
        deadline = time.monotonic() + 30
        while not all((s := store.read_status(n)) and s.acked == "initial" for n in names):
            if time.monotonic() > deadline:
                raise RuntimeError("the real Envoys did not take their first snapshot")
            time.sleep(0.05)
        moved = changed(first, second)
        plan = plan_for(moved)
        clients.epoch([p.name for p in moved if p.name not in names])
        began = time.time()
        results = apply_plan(plan, state, parallelism=len(moved), wait=60, timeout=2)
        simulated_last = clients.wait() - began
        statuses = {p.name: store.read_status(p.name) for p in second}
        real_times = sorted(s.updated_at - began for n, s in statuses.items() if n in names and s)
        steps = {n: (s.target == s.acked, s.nacked) for n, s in statuses.items() if s}
        same_steps = len({v for v in steps.values()}) == 1

        async def verify() -> int:
            async with new_client() as client:
                same = 0
                for p in second:
                    if p.name in names:
                        live = await fetch_proxy(client, p.name, p.admin_url)
                        assert live.resources is not None
                        if fingerprint(live.resources.clusters + live.resources.listeners) == fingerprint(p.clusters + p.listeners):
                            same += 1
                return same

        verified = asyncio.run(verify())
        outcomes = sorted({r.outcome.value for r in results if r.name in names})
        print(f"--check-envoy: 5 real Envoys among 95 simulated ones; one push through apply: simulated streams all "
              f"ACKed by +{simulated_last * 1000:.0f} ms, the real ones at +{real_times[0] * 1000:.0f}..+"
              f"{real_times[-1] * 1000:.0f} ms (the server's status time); every stream acked at its pushed version "
              f"and none nacked: {same_steps}; real Envoys whose /config_dump canonicalises to their desired "
              f"configuration: {verified} of 5 (apply outcomes {outcomes})", flush=True)
    finally:
        if clients is not None:
            clients.stop()
        for envoy in envoys:
            envoy.terminate()
            envoy.wait(timeout=10)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--clients"]:
        run_clients(Path(argv[1]))
        return
    sizes = [int(a) for a in argv if a.isdigit()] or list(DEFAULT_SIZES)
    options = dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), "") for a in argv if not a.isdigit())
    repeat, processes = int(options.get("repeat", 3)), int(options.get("clients", 2))
    print(f"meshplan apply through meshplan serve: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{processes} client processes, median of {repeat}", flush=True)
    if "check-envoy" in options:
        check_envoy(processes)
    rows = [bench(n, repeat, processes) for n in sizes]
    print("\n      N   apply   floor  ratio | build+write  to last ACK  whole call | server RSS before   after  KB/stream |"
          " connect  outcomes")
    for row in rows:
        print(f"  {row['n']:5d}  {row['apply']:6.2f}  {row['floor']:6.2f}  {row['apply'] / row['floor']:5.2f} | "
              f"{row['before']:11.2f}  {row['before'] + row['apply']:11.2f}  {row['call']:10.2f} |      "
              f"{row['rss_before_mb']:6.0f} MB {row['rss_after_mb']:6.0f} MB  {row['kb_per_stream']:9.1f} |  "
              f"{row['connect']:6.1f}s  {row['outcomes']}")
    print("\napply: from apply_plan's snapshots written to the store (all of a wave at once) to the last ACK it learnt "
          "of;\nfloor: the server alone, from the first of the same snapshots renamed into its store to the last ACK "
          "a client sent; ratio = apply / floor;\nbuild+write: apply_plan before that: the snapshots' JSON -> protobuf "
          "conversion, and writing them durably;\nto last ACK: the whole apply, build+write + apply; whole call: "
          "apply_plan from call to return (with the verification, which finds no admin API); seconds.")
    for row in rows:
        print(f"  N={row['n']}: apply runs {['%.2f' % a for a in row['applies']]}, floor runs "
              f"{['%.2f' % f for f in row['floors']]}, load average after {row['load']}")


if __name__ == "__main__":
    main(sys.argv[1:])
