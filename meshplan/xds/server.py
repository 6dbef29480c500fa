"""`meshplan serve`: an ADS server (state of the world, gRPC over mTLS) that sends each proxy its snapshot from the
store and writes back how each delivery ended. The facts it is built on are measured in XDS-NOTES.md.

One stream per proxy. For each new snapshot the stream delivers make-before-break:

    1. clusters: the snapshot's, plus every cluster the Envoy may still hold that a current listener may route to
    2. listeners, once Envoy ACKed the clusters (it holds that ACK until new clusters are warm)
    3. the snapshot's clusters alone, if step 1 carried old ones

each step waiting for the ACK of the one before. Secrets are sent when Envoy asks for them by name (a cluster or
listener that names one warms until it has it), from that proxy's own snapshot only. The snapshot is `acked` once
step 3 (or 2) is ACKed, `nacked` as soon as Envoy refuses a step: then nothing more is sent for that version — a
NACKed version is never re-sent (go-control-plane's NACK loop) — until a new snapshot arrives (`apply`'s rollback).

The server keeps nothing of its own: targets come from the store, what each Envoy ACKed whole goes back to it, and
after a restart an Envoy's reconnect is answered from both. A request for a proxy with no snapshot is held, never
answered empty (an empty answer deletes every resource of its type).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from meshplan.envoy.types import CLUSTER, LISTENER, SECRET
from meshplan.errors import MeshplanError
from meshplan.xds import identity
from meshplan.xds.snapshot import KIND, Snapshot
from meshplan.xds.store import (
    HEARTBEAT,
    DirectoryStore,
    ProxyStatus,
    ServerInfo,
    Store,
    new_server_info,
)

POLL = 0.02  # seconds between two looks at the store for new snapshots
FLUSH = 0.02  # seconds between two appends of changed statuses to the journal
WRITE_DOWN = 0.25  # seconds between two writes of changed statuses to their own files
Log = Callable[[str], None]


class ServeError(MeshplanError):
    pass


def clean_error(message: str, limit: int = 600) -> str:
    """Envoy's NACK message, readable: without the `goo.gle/debugonly` links, the protobuf text of the whole resource
    it embeds, PEM blocks, and the random runs of spaces protobuf pads its errors with."""
    text = re.sub(r"-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|$)", "[pem]", message, flags=re.S)
    text = re.sub(r"goo\.gle/debug\S*", "", text)
    # "Proto constraint validation failed (...): <the resource as text>": the resource says nothing new
    text = re.sub(r"(Proto constraint validation failed \([^)]*\)):.*", r"\1", text, flags=re.S)
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class _Type:
    """One resource type on one stream."""

    subscribed: bool = False
    nonce: str = ""  # of the last response sent
    waiting: bool = False  # that response has not been ACKed or NACKed yet
    sent: Mapping[str, any_pb2.Any] = field(default_factory=dict)
    acked: Mapping[str, any_pb2.Any] | None = None  # what the last ACKed response held (None: unknown on this stream)
    names: frozenset[str] = frozenset()  # secrets: the names Envoy asks for


@dataclass
class _Delivery:
    target: Snapshot
    lingering: Mapping[str, any_pb2.Any]
    sent: int = 0  # steps sent so far
    over: bool = False


class _Stream:
    def __init__(self, server: AdsServer, proxy: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.server, self.proxy, self.context = server, proxy, context
        self.events: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self.types = {t: _Type() for t in (CLUSTER, LISTENER, SECRET)}
        self.counter = 0
        self.held: dict[str, any_pb2.Any] = {}  # the clusters the Envoy may hold
        self.delivery: _Delivery | None = None

    def poke(self) -> None:
        self.events.put_nowait(None)

    async def run(self, first: discovery_pb2.DiscoveryRequest, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]) -> None:
        async def read() -> None:
            async for request in requests:
                self.events.put_nowait(request)

        reader = asyncio.create_task(read())
        reader.add_done_callback(lambda _: self.events.put_nowait(None))
        try:
            await self.on_request(first)
            await self.advance()
            while not reader.done():
                event = await self.events.get()
                if event is not None:
                    await self.on_request(event)
                await self.advance()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader

    async def on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        kind = self.types.get(request.type_url)
        if kind is None:
            return  # a type meshplan never renders a reference to
        kind.subscribed = True
        if request.type_url == SECRET:
            kind.names = frozenset(request.resource_names)
        if not request.response_nonce:
            # A new subscription, or the first request after a reconnect, which says what Envoy holds: after a
            # server restart, the clusters of the snapshot it last ACKed whole (make-before-break needs them).
            if request.type_url == CLUSTER and request.version_info and not self.held:
                acked = await asyncio.to_thread(self.server.store.read_acked, self.proxy)
                if acked is not None:
                    self.held = dict(acked.of(CLUSTER))
            return
        if request.response_nonce != kind.nonce or not kind.waiting:
            return  # about an older response: the newer one's answer is still to come
        kind.waiting = False
        if request.HasField("error_detail"):
            kind.acked = None  # a refused update may have been applied in part: what Envoy holds is unknown
            if request.type_url == CLUSTER:
                self.held.update(kind.sent)
            self.end_delivery(nacked=(request.type_url, clean_error(request.error_detail.message)))
            return
        kind.acked = kind.sent
        if request.type_url == CLUSTER:
            self.held = dict(kind.sent)

    async def advance(self) -> None:
        target = self.server.targets.get(self.proxy)
        if target is None:
            return  # held: no snapshot yet
        await self.send_secrets(target)
        clusters, listeners = self.types[CLUSTER], self.types[LISTENER]
        if clusters.waiting or listeners.waiting:
            return
        delivery = self.delivery
        if delivery is not None and delivery.target.version == target.version:
            delivery.target = target  # the same snapshot, read again: never delivered twice (a NACK stays a NACK)
        elif not clusters.subscribed:
            return
        else:
            lingering = {n: c for n, c in self.held.items() if n not in target.of(CLUSTER)}
            delivery = self.delivery = _Delivery(target, lingering)
        # Each step is sent unless Envoy ACKed exactly those resources already on this stream (a change of clusters
        # alone needs no listeners, and a reconnect after a restart needs nothing new).
        while not delivery.over:
            resources: Mapping[str, any_pb2.Any]
            if delivery.sent == 0:
                type_url, version = CLUSTER, f"{target.version}-make" if delivery.lingering else target.version
                resources = {**target.of(CLUSTER), **delivery.lingering}
            elif delivery.sent == 1:
                type_url, version, resources = LISTENER, target.version, target.of(LISTENER)
            elif delivery.sent == 2 and delivery.lingering:
                type_url, version, resources = CLUSTER, target.version, target.of(CLUSTER)
            else:
                self.end_delivery()
                return
            kind = self.types[type_url]
            if kind.acked is not None and kind.acked == resources:
                delivery.sent += 1
                continue
            if not kind.subscribed:
                return  # Envoy asks for listeners once its clusters are initialised
            await self.send(type_url, version, resources)
            delivery.sent += 1
            return

    async def send_secrets(self, target: Snapshot) -> None:
        secrets = self.types[SECRET]
        if not secrets.subscribed or secrets.waiting:
            return
        mine = target.of(SECRET)
        wanted = {n: mine[n] for n in sorted(secrets.names) if n in mine}
        if wanted == secrets.sent:
            return  # the same secrets, the same content: a new snapshot need not rotate anything
        strangers = sorted(secrets.names - set(mine))
        if strangers:
            self.server.log(f"{self.proxy}: asks for secrets it has none of: {', '.join(strangers)}")
        await self.send(SECRET, target.version, wanted)

    async def send(self, type_url: str, version: str, resources: Mapping[str, any_pb2.Any]) -> None:
        self.counter += 1
        kind = self.types[type_url]
        kind.nonce, kind.waiting, kind.sent = str(self.counter), True, resources
        response = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=kind.nonce)
        response.resources.extend(resources.values())
        await self.context.write(response)

    def end_delivery(self, nacked: tuple[str, str] | None = None) -> None:
        delivery = self.delivery
        if delivery is None or delivery.over:
            return
        delivery.over = True
        version = delivery.target.version
        if nacked is None:
            self.server.set_status(self.proxy, target=version, acked=version)
            self.server.keep_acked(self.proxy, delivery.target)
        else:
            type_url, message = nacked
            self.server.log(f"{self.proxy}: Envoy refused the {KIND[type_url]}s of {version}: {message}")
            self.server.set_status(self.proxy, target=version, nacked=version, error=message, error_type=KIND[type_url])


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, store: Store, info: ServerInfo, log: Log) -> None:
        self.store, self.info, self.log = store, info, log
        self.targets: dict[str, Snapshot] = {}
        self.streams: dict[str, _Stream] = {}
        self.statuses: dict[str, ProxyStatus] = {}
        self._dirty: set[str] = set()  # statuses changed since the last journal append
        self._unwritten: set[str] = set()  # statuses changed since their files were last written
        self._acked: dict[str, Snapshot] = {}

    # --- the store side ---

    def load(self, proxies: set[str]) -> None:
        """Read these proxies' snapshots from the store (a missing one stays held)."""
        for proxy in proxies:
            try:
                snapshot = self.store.read_snapshot(proxy)
            except Exception as e:  # a snapshot the store cannot read: keep serving the previous one
                self.log(f"{proxy}: cannot read its snapshot: {e}")
                continue
            if snapshot is None:
                self.targets.pop(proxy, None)
            else:
                self.targets[proxy] = snapshot

    def set_status(self, proxy: str, **changes: Any) -> None:
        current = self.statuses.get(proxy) or self.store.read_status(proxy) or ProxyStatus(proxy)
        self.statuses[proxy] = current.evolve(server=self.info.id, **changes)
        self._dirty.add(proxy)

    def keep_acked(self, proxy: str, snapshot: Snapshot) -> None:
        self._acked[proxy] = snapshot

    def flush(self) -> None:
        """The statuses that changed, appended to the journal in one write: what `apply` waits for."""
        dirty, self._dirty = self._dirty, set()
        if dirty:
            try:
                self.store.append_statuses(self.info.id, [self.statuses[p] for p in sorted(dirty)])
            except OSError:
                self._dirty |= dirty
                raise
            self._unwritten |= dirty

    def write_down(self) -> None:
        """Each changed status to its own file (what `drift` and a restarted server read), and each snapshot ACKed
        whole kept: less urgent, and a file each."""
        self.flush()
        unwritten, self._unwritten = self._unwritten, set()
        acked, self._acked = self._acked, {}
        try:
            while acked:
                proxy, snapshot = next(iter(acked.items()))
                self.store.write_acked(proxy, snapshot)
                del acked[proxy]
            while unwritten:
                proxy = next(iter(unwritten))
                self.store.write_status(self.statuses[proxy])
                unwritten.discard(proxy)
        except OSError:
            self._acked = {**acked, **self._acked}
            self._unwritten |= unwritten
            raise

    # --- the Envoy side ---

    async def StreamAggregatedResources(  # noqa: N802 - the gRPC method's name
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        peer = context.peer()
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            return
        proxy = first.node.id
        claimed = identity.proxy_of(_uri_sans(context))
        if not proxy or claimed != proxy:
            who = f"the certificate of {claimed!r}" if claimed else "a certificate that names no proxy"
            self.log(f"refused {peer}: node id {proxy!r} presented {who}")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"node id {proxy!r} does not match {who}")
            return
        stream = _Stream(self, proxy, context)
        previous = self.streams.get(proxy)
        self.streams[proxy] = stream
        if previous is not None:
            self.log(f"{proxy}: a new stream replaces the one before")
        self.log(f"{proxy}: connected from {peer}")
        self.set_status(proxy, connected=True)
        try:
            await stream.run(first, request_iterator)
        finally:
            if self.streams.get(proxy) is stream:
                del self.streams[proxy]
                self.set_status(proxy, connected=False)
                self.log(f"{proxy}: disconnected")

    async def DeltaAggregatedResources(  # noqa: N802
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "meshplan serve speaks state-of-the-world ADS (api_type GRPC)")


def _uri_sans(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    auth = context.auth_context()
    values = auth.get("x509_uri_subject_alternative_name") or auth.get("x509_subject_alternative_name") or []
    return [v.decode(errors="replace") for v in values]


# --- running it -----------------------------------------------------------------------------------------------


async def _every(seconds: float, action: Callable[[], Any], log: Log) -> None:
    """Run `action` every so often, for ever. A failure (a full disk, say) is said once and tried again: streams
    keep being served meanwhile, and what was not written is written once it can be."""
    failing = ""
    while True:
        await asyncio.sleep(seconds)
        try:
            await action()
        except OSError as e:
            if str(e) != failing:
                log(f"cannot write to the store, will try again: {e}")
            failing = str(e)
        else:
            if failing:
                log("writing to the store works again")
            failing = ""


async def serve(state_dir: Path, listen: str, *, log: Log, on_ready: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM). `on_ready` gets the address actually listened on."""
    store = DirectoryStore.under(state_dir)
    files = identity.ensure_server(state_dir)
    credentials = grpc.ssl_server_credentials(
        [(files.key.read_bytes(), files.cert.read_bytes())], root_certificates=files.ca.read_bytes(),
        require_client_auth=True,
    )
    # SO_REUSEPORT off: a second server on the same address must fail, not silently take half the Envoys.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.keepalive_time_ms", 30_000),
                                      ("grpc.keepalive_permit_without_calls", 1)])
    try:
        port = server.add_secure_port(listen, credentials)
    except RuntimeError as e:
        raise ServeError(f"cannot listen on {listen}: {e}") from None
    if port == 0:
        raise ServeError(f"cannot listen on {listen} (is another server there?)")
    host = listen.rpartition(":")[0]
    address = f"{host}:{port}"
    info = new_server_info(address)
    ads = AdsServer(store, info, log)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)

    cursor: object | None = None

    async def watch() -> None:
        nonlocal cursor
        cursor, changed = await asyncio.to_thread(store.snapshot_changes, cursor)
        if changed:
            await asyncio.to_thread(ads.load, changed)
            for proxy in changed:
                stream = ads.streams.get(proxy)
                if stream is not None:
                    stream.poke()

    async def flush() -> None:
        await asyncio.to_thread(ads.flush)

    async def write_down() -> None:
        await asyncio.to_thread(ads.write_down)

    async def beat() -> None:
        await asyncio.to_thread(store.beat, info)

    await watch()
    await server.start()
    store.beat(info)
    log(f"serving {len(ads.targets)} snapshots from {store.root} on {address} (server {info.id})")
    if on_ready is not None:
        on_ready(address)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(_every(seconds, action, log))
             for seconds, action in ((POLL, watch), (FLUSH, flush), (WRITE_DOWN, write_down), (HEARTBEAT, beat))]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await server.stop(grace=1.0)
        for proxy in list(ads.streams):
            ads.set_status(proxy, connected=False)
        with contextlib.suppress(OSError):
            ads.write_down()
            store.forget_server(info.id)
        log("stopped")


def main_log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
    sys.stderr.flush()
