"""What running proxies report: their admin API's `/config_dump`, fetched over many proxies at once.

Per proxy, three small requests run concurrently, each trimmed with `?mask=` to what is compared:

    /config_dump?mask=bootstrap.node.id                                   who answered (~160 bytes)
    /config_dump?mask=dynamic_active_clusters,dynamic_warming_clusters    the clusters
    /config_dump?mask=dynamic_listeners                                   the listeners

`mask=` keeps the dump's own shape (active and warming clusters stay apart, which `?resource=` loses), and the
node id costs 160 bytes where `/server_info` costs ~125 KB, most of it the extension list. The three answers
together form one `/config_dump` document, kept in the result and written as-is by `save_snapshot`.

Outcome of one proxy (`Outcome`):
    ok            the proxy answered; resources, warming and errored ones in `resources`
    unreachable   no connection (refused, reset, no route, connect timeout): `detail` says which
    timeout       connected, but no whole answer in time
    bad response  an HTTP error status, a body that is not JSON, JSON nested deeper than 200 levels, JSON that is
                  not a config dump, or an answer larger than `max_response_bytes` (decompressed)
    wrong proxy   the admin port belongs to another proxy: `answered_by` names it
One slow or dead proxy never holds up or fails the others.

Memory is bounded whatever a proxy sends: each answer is read as a stream and given up once it passes
`max_response_bytes` (64 MiB unless told), counted after decompression, which is done here a step of 64 KiB at a
time (httpx would inflate a whole network read at once: 64 KiB of a gzip bomb is 64 MiB); and its nesting is
measured before it is parsed (`jsonlimits`). At most `parallelism` proxies of three answers each are read at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import httpx

from meshplan.envoy import config_dump
from meshplan.envoy.config_dump import (
    CLUSTERS_PATH,
    IDENTITY_PATH,
    LISTENERS_PATH,
    SECRETS_PATH,
    ManagedResources,
    NotAConfigDump,
    managed_resources,
)
from meshplan.envoy.types import (
    BOOTSTRAP_CONFIG_DUMP,
    CLUSTERS_CONFIG_DUMP,
    LISTENERS_CONFIG_DUMP,
    SECRETS_CONFIG_DUMP,
)
from meshplan.errors import MeshplanError
from meshplan.util import jsonlimits
from meshplan.util.fsutil import read_bounded, write_atomic

DEFAULT_PARALLELISM = 32  # proxies fetched at once; each holds up to three connections
DEFAULT_TIMEOUT = 5.0  # seconds, for connecting and for each read
DEFAULT_RETRIES = 2  # further attempts after a connection error, and only then
DEFAULT_BACKOFF = 0.1  # seconds before the first retry, doubled for each next one
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # one answer, decompressed; a 1,000-cluster proxy's is ~1.5 MB
MAX_SNAPSHOT_FILE_BYTES = 256 * 1024 * 1024  # a snapshot file holds three answers, indented
_ERROR_BODY_BYTES = 2048  # what is read of an error answer, for its message
_INFLATE_STEP = 64 * 1024  # the most one step of decompression may produce
# Envoy never compresses its admin answers; gzip and deflate are still decoded (bounded) from anything in between.
_HEADERS = {"Accept-Encoding": "identity"}

SNAPSHOT_FORMAT = 1


class Outcome(str, Enum):
    OK = "ok"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    BAD_RESPONSE = "bad response"
    WRONG_PROXY = "wrong proxy"


@dataclass(frozen=True)
class LiveResult:
    proxy: str
    admin_url: str
    outcome: Outcome
    detail: str = ""  # why, for any outcome but ok
    resources: ManagedResources | None = None  # for ok
    answered_by: str | None = None  # the node id that answered, when known
    config_dump: dict[str, Any] | None = None  # the answers as one /config_dump document, for ok
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def __str__(self) -> str:
        return f"{self.proxy} ({self.admin_url}): {self.outcome.value}" + (f": {self.detail}" if self.detail else "")


class SnapshotError(MeshplanError, ValueError):
    """A snapshot file that cannot be read (a ValueError too, as it always was)."""


class _Failed(Exception):
    def __init__(self, outcome: Outcome, detail: str, answered_by: str | None = None) -> None:
        super().__init__(detail)
        self.outcome, self.detail, self.answered_by = outcome, detail, answered_by


def new_client(parallelism: int = DEFAULT_PARALLELISM) -> httpx.AsyncClient:
    """An admin-API client fit for `fetch_all`: no proxy settings from the environment, and no pool limit that
    would keep a fetch waiting for a connection (the semaphore in `fetch_all` bounds the work instead).

    No connection is kept alive: `fetch_all` asks each proxy once, its three requests at once, so a connection
    serves one request and is never reused; and httpcore's pool scans every connection for each idle one it keeps
    (quadratic), which with 96 kept cost twice the CPU of the requests themselves (benchmarks/plan_fleet.py).
    `parallelism` is accepted for callers that size the client by it."""
    return httpx.AsyncClient(
        trust_env=False,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    )


async def fetch_all(
    client: httpx.AsyncClient,
    targets: Iterable[tuple[str, str]],
    *,
    parallelism: int = DEFAULT_PARALLELISM,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    on_result: Callable[[LiveResult], None] | None = None,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> dict[str, LiveResult]:
    """Fetch every target, a (proxy name, admin URL) pair, at most `parallelism` at a time.

    Returns one LiveResult per target, in target order; never raises for a proxy's failure. `on_result` is
    called as each proxy finishes (for progress output).
    """
    if parallelism < 1:
        raise ValueError("parallelism must be at least 1")
    target_list = list(targets)
    names = [name for name, _ in target_list]
    if len(set(names)) != len(names):
        raise ValueError("two targets have the same proxy name")
    slots = asyncio.Semaphore(parallelism)

    async def one(name: str, url: str) -> LiveResult:
        async with slots:
            result = await fetch_proxy(client, name, url, timeout=timeout, retries=retries, backoff=backoff,
                                       max_response_bytes=max_response_bytes)
        if on_result is not None:
            on_result(result)
        return result

    results = await asyncio.gather(*(one(name, url) for name, url in target_list))
    return {result.proxy: result for result in results}


async def fetch_proxy(
    client: httpx.AsyncClient,
    name: str,
    admin_url: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    with_secrets: bool = False,
) -> LiveResult:
    """Fetch one proxy's managed resources and check that the proxy answering is `name`. `with_secrets` asks for
    its SDS secrets too, a fourth request, into `config_dump` (Envoy redacts their private keys)."""
    base = admin_url.rstrip("/")
    started = time.monotonic()
    request_timeout = httpx.Timeout(timeout, pool=None)
    # A server that trickles bytes defeats a per-read timeout: bound the whole proxy too.
    deadline = timeout * (retries + 2) + backoff * (2**retries)

    async def get(path: str) -> Any:
        return await _get_json(client, base, path, request_timeout, retries, backoff, max_response_bytes)

    try:
        async with asyncio.timeout(deadline):
            paths = [IDENTITY_PATH, CLUSTERS_PATH, LISTENERS_PATH] + ([SECRETS_PATH] if with_secrets else [])
            answers = await asyncio.gather(*(get(path) for path in paths), return_exceptions=True)
        # the identity decides first: a wrong proxy's other answers say nothing about this one
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, _Failed):
                raise answer
        identity, clusters, listeners = answers[:3]
        node_id = _node_id(identity)
        if node_id != name:
            raise _Failed(Outcome.WRONG_PROXY, _answered_by(node_id), answered_by=node_id)
        for answer in answers:
            if isinstance(answer, _Failed):
                raise answer
        dump = {"configs": [_config(identity, BOOTSTRAP_CONFIG_DUMP, IDENTITY_PATH),
                            _config(clusters, CLUSTERS_CONFIG_DUMP, CLUSTERS_PATH),
                            _config(listeners, LISTENERS_CONFIG_DUMP, LISTENERS_PATH)]}
        if with_secrets:
            dump["configs"].append(_config(answers[3], SECRETS_CONFIG_DUMP, SECRETS_PATH))
        try:
            resources = managed_resources(dump)
        except NotAConfigDump as exc:
            raise _Failed(Outcome.BAD_RESPONSE, str(exc)) from None
    except _Failed as failure:
        return LiveResult(name, admin_url, failure.outcome, failure.detail, answered_by=failure.answered_by,
                          seconds=time.monotonic() - started)
    except TimeoutError:
        return LiveResult(name, admin_url, Outcome.TIMEOUT, f"no complete answer within {deadline:g}s",
                          seconds=time.monotonic() - started)
    return LiveResult(name, admin_url, Outcome.OK, resources=resources, answered_by=node_id, config_dump=dump,
                      seconds=time.monotonic() - started)


async def _get_json(
    client: httpx.AsyncClient, base: str, path: str, timeout: httpx.Timeout, retries: int, backoff: float,
    max_bytes: int,
) -> Any:
    for attempt in range(retries + 1):
        try:
            async with client.stream("GET", base + path, timeout=timeout, headers=_HEADERS) as response:
                if response.status_code != 200:
                    error = await _read_body(response, path, _ERROR_BODY_BYTES, cut=True)
                    body = error.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
                    raise _Failed(Outcome.BAD_RESPONSE,
                                  f"{path}: HTTP {response.status_code}" + (f": {body}" if body else ""))
                content = await _read_body(response, path, max_bytes)
            break
        except httpx.ConnectTimeout:
            raise _Failed(Outcome.UNREACHABLE, f"connect timed out after {timeout.connect:g}s") from None
        except httpx.ConnectError as exc:
            if attempt == retries:
                raise _Failed(Outcome.UNREACHABLE, _cause(exc)) from None
            await asyncio.sleep(backoff * 2**attempt)
        except httpx.TimeoutException:
            raise _Failed(Outcome.TIMEOUT, f"{path}: no answer within {timeout.read:g}s") from None
        except httpx.NetworkError as exc:
            raise _Failed(Outcome.UNREACHABLE, f"{path}: {_cause(exc)}") from None
        except httpx.TransportError as exc:  # a protocol error: something that does not speak HTTP
            raise _Failed(Outcome.BAD_RESPONSE, f"{path}: {_cause(exc)}") from None
    try:
        return jsonlimits.loads(content)
    except jsonlimits.TooDeep as exc:
        raise _Failed(Outcome.BAD_RESPONSE, f"{path}: {exc}") from None
    except ValueError as exc:
        raise _Failed(Outcome.BAD_RESPONSE, f"{path}: not JSON ({exc})") from None


async def _read_body(response: httpx.Response, path: str, limit: int, *, cut: bool = False) -> bytearray:
    """The body of a streamed answer, decoded, up to `limit` bytes: past that, a failure ("too large"), or with
    `cut` its first `limit` bytes. Holds at most `limit` bytes (in a bytearray, which may have room for an eighth
    more) and one network read or one step of decompression."""
    codings = [c.strip().lower() for c in response.headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
        raise _Failed(Outcome.BAD_RESPONSE, f"{path}: unsupported Content-Encoding {', '.join(codings)!r}")
    declared = response.headers.get("content-length", "")
    if not codings and not cut and declared.isdigit() and int(declared) > limit:
        raise _Failed(Outcome.BAD_RESPONSE, _too_large(path, limit, f"{int(declared)} bytes announced"))
    # wbits 47 (15 + 32): a zlib or a gzip header, whichever comes; "deflate" means zlib's format in HTTP
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32) if codings else None
    body = bytearray()
    async for raw in response.aiter_raw():
        for piece in _inflate(inflater, raw, path) if inflater is not None else (raw,):
            if len(body) + len(piece) > limit:
                if cut:
                    return body + piece[: limit - len(body)]
                coded = " once decompressed" if codings else ""
                raise _Failed(Outcome.BAD_RESPONSE, _too_large(path, limit, f"more{coded}"))
            body += piece
        if inflater is not None and inflater.eof:
            break
    return body


def _inflate(inflater: Any, data: bytes, path: str) -> Iterator[bytes]:
    """`data` decompressed, in pieces of at most _INFLATE_STEP bytes."""
    while data and not inflater.eof:
        try:
            piece = inflater.decompress(data, _INFLATE_STEP)
        except zlib.error as exc:
            raise _Failed(Outcome.BAD_RESPONSE, f"{path}: cannot decompress the answer ({exc})") from None
        if not piece and inflater.unconsumed_tail == data:
            return  # no progress: wait for more input
        yield piece
        data = inflater.unconsumed_tail


def _too_large(path: str, limit: int, seen: str) -> str:
    return f"{path}: answer too large: {seen}, more than the {limit} bytes allowed (--max-response-bytes)"


def _cause(exc: BaseException) -> str:
    """The most telling words for a failure: the innermost OS error ("Connection refused") if there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            # a negative errno is a resolver error (socket.gaierror), whose own words are the telling ones
            return os.strerror(seen.errno) if seen.errno > 0 else str(seen.strerror)
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _config(answer: Any, type_url: str, path: str) -> dict[str, Any]:
    """The one config of `type_url` in a masked /config_dump answer."""
    try:
        return config_dump.section(answer, type_url)
    except NotAConfigDump as exc:
        raise _Failed(Outcome.BAD_RESPONSE, f"{path}: {exc}") from None


def _node_id(identity: Any) -> str:
    """Who answered: "" (no proxy meshplan knows) if Envoy left an empty node id out."""
    if isinstance(identity, _Failed):
        raise identity
    try:
        return config_dump.node_id(identity)
    except NotAConfigDump as exc:
        raise _Failed(Outcome.BAD_RESPONSE, f"{IDENTITY_PATH}: {exc}") from None


def _answered_by(node_id: str) -> str:
    return f"answered by {node_id!r}" if node_id else "answered by a proxy without a node id"


# --- snapshots: one JSON file per proxy ---------------------------------------------------------------------------


def snapshot_file(directory: Path, proxy: str) -> Path:
    if not proxy or "/" in proxy or "\\" in proxy or proxy.startswith(".") or "\0" in proxy:
        raise ValueError(f"proxy name {proxy!r} cannot name a snapshot file")
    return directory / f"{proxy}.json"


def save_snapshot(results: Iterable[LiveResult], directory: Path) -> list[Path]:
    """Write each result to `<directory>/<proxy>.json` (atomically), failures too, so that reading the
    snapshot back reproduces every outcome. Returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for result in results:
        document = {
            "meshplan_snapshot": SNAPSHOT_FORMAT,
            "proxy": result.proxy,
            "admin_url": result.admin_url,
            "outcome": result.outcome.value,
            "detail": result.detail,
            "answered_by": result.answered_by,
            "config_dump": result.config_dump,
        }
        path = snapshot_file(directory, result.proxy)
        write_atomic(path, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())
        written.append(path)
    return written


def load_snapshot(directory: Path, targets: Iterable[tuple[str, str]] | None = None) -> dict[str, LiveResult]:
    """The results saved in `directory`, as `fetch_all` would return them.

    A file is either one `save_snapshot` wrote or a plain `/config_dump` saved by hand (`curl .../config_dump >
    web-1.json`), named after its proxy. With `targets`, returns exactly those proxies, in order: a proxy without
    a file is unreachable ("not in snapshot"). Raises SnapshotError for a file that cannot be read as either form
    (more than MAX_SNAPSHOT_FILE_BYTES, or nested deeper than jsonlimits.MAX_DEPTH, included).
    """
    found: dict[str, LiveResult] = {}
    for path in sorted(directory.glob("*.json")):
        result = _read_snapshot_file(path)
        found[result.proxy] = result
    if targets is None:
        return found
    return {
        name: found.get(name) or LiveResult(name, url, Outcome.UNREACHABLE, f"not in snapshot {directory}")
        for name, url in targets
    }


def _read_snapshot_file(path: Path) -> LiveResult:
    try:
        document = jsonlimits.loads(read_bounded(path, MAX_SNAPSHOT_FILE_BYTES))
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path}: cannot read a snapshot: {exc}") from None
    if not isinstance(document, dict):
        raise SnapshotError(f"{path}: not a snapshot")
    if "meshplan_snapshot" not in document:  # a plain /config_dump
        document = {"proxy": path.stem, "admin_url": f"file://{path}", "outcome": Outcome.OK.value,
                    "config_dump": document}
    elif document["meshplan_snapshot"] != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{path}: snapshot format {document['meshplan_snapshot']!r}, expected {SNAPSHOT_FORMAT}")
    try:
        proxy, url, outcome = str(document["proxy"]), str(document["admin_url"]), Outcome(document["outcome"])
    except (KeyError, ValueError) as exc:
        raise SnapshotError(f"{path}: not a snapshot: {exc}") from None
    answered_by = document.get("answered_by")
    if outcome is not Outcome.OK:
        return LiveResult(proxy, url, outcome, str(document.get("detail", "")), answered_by=answered_by)
    dump = document.get("config_dump")
    try:
        resources = managed_resources(dump if isinstance(dump, dict) else {})
    except NotAConfigDump as exc:
        raise SnapshotError(f"{path}: {exc}") from None
    if resources.node_id is not None and resources.node_id != proxy:
        return LiveResult(proxy, url, Outcome.WRONG_PROXY, _answered_by(resources.node_id),
                          answered_by=resources.node_id)
    return LiveResult(proxy, url, Outcome.OK, resources=resources, answered_by=resources.node_id,
                      config_dump=dump if isinstance(dump, dict) else None)
