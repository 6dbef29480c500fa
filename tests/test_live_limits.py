"""What a hostile or broken admin API can send, and what it costs: an answer past the size cap (announced, streamed,
or a gzip bomb) or nested too deep is that proxy's `bad response`, read in bounded memory. respx stands in for the
admin API: a real Envoy cannot be made to answer like this."""

from __future__ import annotations

import gc
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.observe import live
from meshplan.observe.live import Outcome
from tests.test_live import BACKEND, dump, fetch, fetch_mocked, serve

A = "http://127.0.50.1:9901"
MiB = 1024 * 1024


def streamed(chunk: bytes, count: int, sent: list[int] | None = None) -> Callable[[httpx.Request], httpx.Response]:
    """An answer of `count` times `chunk`, sent as it is read (chunked: no Content-Length). The same bytes object
    every time, so that sending it allocates nothing; `sent` counts the chunks actually asked for."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            if sent is not None:
                sent.append(1)
            yield chunk

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body(), headers={"Content-Type": "application/json"})

    return answer


def raw(body: bytes, headers: dict[str, str]) -> Callable[[httpx.Request], httpx.Response]:
    """An answer of `body` as it is, in network-sized pieces (an httpx.Response made of bytes would decode a
    compressed body as it is made, in the test)."""

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    return lambda request: httpx.Response(200, content=pieces(), headers=headers)


def gzip_bomb(size: int) -> bytes:
    """`size` bytes of JSON whitespace, gzip-compressed (about 1,000 to 1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b" " * MiB
    return b"".join([*(packer.compress(block) for _ in range(size // MiB)), packer.flush()])


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb(200 * MiB)


def test_an_answer_announced_larger_than_the_cap_is_not_read() -> None:
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    answers[live.CLUSTERS_PATH] = httpx.Response(200, content=b" " * 5000)
    result = fetch_mocked(answers, max_response_bytes=4096)
    assert result.outcome is Outcome.BAD_RESPONSE
    assert result.detail == (f"{live.CLUSTERS_PATH}: answer too large: 5000 bytes announced, more than the 4096 "
                             "bytes allowed (--max-response-bytes)")


def test_a_streamed_answer_is_given_up_at_the_cap() -> None:
    sent: list[int] = []
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    answers[live.LISTENERS_PATH] = streamed(b" " * 1024, 100_000, sent)  # 100 MB if it were read to the end
    result = fetch_mocked(answers, max_response_bytes=64 * 1024)
    assert result.outcome is Outcome.BAD_RESPONSE
    assert result.detail == (f"{live.LISTENERS_PATH}: answer too large: more, more than the 65536 bytes allowed "
                             "(--max-response-bytes)")
    assert len(sent) <= 64 + 1  # it stopped reading at the cap


def test_a_gzip_bomb_is_given_up_at_the_cap_once_decompressed(bomb: bytes) -> None:
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    answers[live.CLUSTERS_PATH] = raw(bomb, {"Content-Encoding": "gzip"})
    result = fetch_mocked(answers, max_response_bytes=MiB)
    assert result.outcome is Outcome.BAD_RESPONSE
    assert "answer too large: more once decompressed, more than the 1048576 bytes allowed" in result.detail


def test_a_compressed_answer_under_the_cap_is_read() -> None:
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    for path, coding, wbits in ((live.CLUSTERS_PATH, "gzip", 16), (live.LISTENERS_PATH, "deflate", 0)):
        packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | wbits)
        body = packer.compress(json.dumps(answers[path]).encode()) + packer.flush()
        answers[path] = raw(body, {"Content-Encoding": coding})
    result = fetch_mocked(answers)
    assert result.ok and result.resources is not None
    assert [c["name"] for c in result.resources.clusters] == ["backend"]


@pytest.mark.parametrize(("coding", "body", "detail"), [
    ("br", b"xx", "unsupported Content-Encoding 'br'"),
    ("gzip, gzip", b"xx", "unsupported Content-Encoding 'gzip, gzip'"),
    ("gzip", b"not gzip", "cannot decompress the answer (Error -3 while decompressing data: incorrect header check)"),
])
def test_an_unknown_or_broken_encoding_is_a_bad_response(coding: str, body: bytes, detail: str) -> None:
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    answers[live.CLUSTERS_PATH] = raw(body, {"Content-Encoding": coding})
    result = fetch_mocked(answers)
    assert (result.outcome, result.detail) == (Outcome.BAD_RESPONSE, f"{live.CLUSTERS_PATH}: {detail}")


def test_an_error_answer_is_read_only_as_far_as_its_message(bomb: bytes) -> None:
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    sent: list[int] = []
    answers[live.CLUSTERS_PATH] = lambda request: httpx.Response(500, content=_forever(b"boom " * 100, sent))
    result = fetch_mocked(answers)
    assert result.outcome is Outcome.BAD_RESPONSE
    assert result.detail.startswith(f"{live.CLUSTERS_PATH}: HTTP 500: boom boom") and len(result.detail) < 300
    assert len(sent) <= 6  # 2 KiB of it


async def _forever(chunk: bytes, sent: list[int]) -> AsyncIterator[bytes]:
    for _ in range(10**6):
        sent.append(1)
        yield chunk


@pytest.mark.parametrize("depth", [201, 10_000, 1_000_000])
def test_an_answer_nested_too_deep_is_a_bad_response(depth: int) -> None:
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    answers[live.CLUSTERS_PATH] = httpx.Response(200, content=b"[" * depth + b"]" * depth)
    result = fetch_mocked(answers)
    assert result.outcome is Outcome.BAD_RESPONSE
    assert result.detail == f"{live.CLUSTERS_PATH}: JSON nested {depth} levels deep, more than the 200 allowed"


def test_a_deep_but_allowed_answer_is_read() -> None:
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    deep: Any = "bottom"
    for _ in range(150):
        deep = {"k": [deep]} if len(json.dumps(deep)) % 2 else [deep]
    answers[live.CLUSTERS_PATH]["configs"][0]["dynamic_active_clusters"][0]["cluster"]["metadata"] = deep
    assert fetch_mocked(answers).ok


def _peak_while(run: Callable[[], live.LiveResult]) -> tuple[live.LiveResult, int]:
    gc.collect()
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["a 200 MiB stream", "a gzip bomb of 200 MiB"])
def test_memory_stays_bounded_by_the_cap(kind: str, bomb: bytes) -> None:
    """tracemalloc's peak over the whole fetch, with the default cap of 64 MiB: the cap (in a bytearray, which may
    keep room for an eighth more), the last piece read, and a little for httpx and asyncio. Read whole, as before,
    either would cost over 200 MiB (the bomb: 437 MiB)."""
    cap = live.DEFAULT_MAX_RESPONSE_BYTES
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    if kind == "a 200 MiB stream":
        answers[live.CLUSTERS_PATH] = streamed(b" " * MiB, 200)
    else:
        answers[live.CLUSTERS_PATH] = raw(bomb, {"Content-Encoding": "gzip"})
    with respx.mock(assert_all_called=False) as router:
        serve(router, A, answers)
        result, peak = _peak_while(lambda: fetch([("web-1", A)])["web-1"])
    assert result.outcome is Outcome.BAD_RESPONSE and "answer too large" in result.detail
    assert peak < cap + cap // 8 + 2 * MiB, f"peak {peak / MiB:.1f} MiB"
    print(f"{kind}: peak {peak / MiB:.1f} MiB")


def test_the_cap_from_the_command_line(tmp_path: Path) -> None:
    """`plan --max-response-bytes`: the proxy whose answer is larger is reported, the others are planned."""
    from meshplan.render.proxies import render_all
    from meshplan.validate.resources import load_and_parse
    from tests.builders import DEMO

    proxies = render_all(load_and_parse(DEMO))
    with respx.mock(assert_all_called=False) as router:
        for p in proxies:
            answers: dict[str, Any] = dump(p.name, clusters=list(p.clusters))
            answers[live.LISTENERS_PATH] = {"configs": [{
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "dynamic_listeners": [{"name": x["name"], "active_state": {"listener": x}} for x in p.listeners],
            }]}
            if p.name == "backend-1":
                answers[live.CLUSTERS_PATH] = streamed(b" " * 1024, 10_000)
            serve(router, p.admin_url, answers)
        result = CliRunner().invoke(app, ["plan", str(DEMO), "--json", "--state", str(tmp_path),
                                          "--max-response-bytes", "256KiB"])
    assert result.exit_code == 1, result.stderr  # incomplete
    status = {p["name"]: (p["status"], p["detail"]) for p in json.loads(result.stdout)["proxies"]}
    assert status.pop("backend-1") == (
        "bad response", f"{live.CLUSTERS_PATH}: answer too large: more, more than the 262144 bytes allowed "
                        "(--max-response-bytes)")
    assert set(status.values()) == {("ok", "")}

    wrong = CliRunner().invoke(app, ["plan", str(DEMO), "--max-response-bytes", "lots"])
    assert wrong.exit_code == 1 and "--max-response-bytes must be a size" in wrong.stderr


def test_a_snapshot_file_nested_too_deep_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "web-1.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(live.SnapshotError, match="web-1.json: cannot read a snapshot: JSON nested 100000 levels"):
        live.load_snapshot(tmp_path)
    result = CliRunner().invoke(app, ["plan", str(Path(__file__).parent.parent / "examples" / "demo"),
                                      "--live-from", str(tmp_path), "--state", str(tmp_path / "state")])
    assert result.exit_code == 1 and "cannot read a snapshot" in result.stderr
    assert isinstance(result.exception, SystemExit)
