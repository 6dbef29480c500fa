"""The sandbox's demo app and external-service stand-in: a tiny httpbin.

    python -m meshplan.demoapp --address 127.0.0.2 --port 8080 --service web --instance web-1

Every answer is JSON naming the service and instance that answered and echoing the request, so a test can see
where traffic went and what a policy did to it on the way:

    GET /status/{code}      answers with that status
    GET /delay/{ms}         answers after that many milliseconds (at most 60 s)
    GET /flaky/{n}/{key}    503 to the first n requests with that key, 200 after; `attempt` counts them
    anything else           200
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

MAX_DELAY_MS = 60_000
# Statuses that must not carry a body (RFC 9110); HEAD answers never do.
_NO_BODY = {204, 304}


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a SIGTERM should not wait for a /delay/60000 in flight
    request_queue_size = 128  # circuit-breaker tests open many connections at once

    def __init__(self, address: str, port: int, service: str, instance: str) -> None:
        self.service = service
        self.instance = instance
        self._attempts: dict[str, int] = {}
        self._attempts_lock = threading.Lock()
        super().__init__((address, port), DemoHandler)

    def next_attempt(self, key: str) -> int:
        with self._attempts_lock:
            self._attempts[key] = self._attempts.get(key, 0) + 1
            return self._attempts[key]


class DemoHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so that Envoy's upstream connections are kept alive, as they would be with a real app.
    protocol_version = "HTTP/1.1"
    server: DemoServer

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _headers(self) -> dict[str, str]:
        # Lower-case names, repeated headers joined, as an HTTP/2 hop or Envoy would present them.
        seen: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            seen[key] = f"{seen[key]}, {value}" if key in seen else value
        return seen

    def _answer(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        answer: dict[str, Any] = {
            "service": self.server.service,
            "instance": self.server.instance,
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": self._headers(),
            "body_bytes": len(body),
            "client": "{}:{}".format(*self.client_address[:2]),
        }
        status = 200
        if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            status = int(parts[1])
            if not 200 <= status <= 599:
                status, answer["error"] = 400, "status must be between 200 and 599"
        elif len(parts) == 2 and parts[0] == "delay" and parts[1].isdigit():
            delay_ms = min(int(parts[1]), MAX_DELAY_MS)
            time.sleep(delay_ms / 1000)
            answer["delay_ms"] = delay_ms
        elif len(parts) == 3 and parts[0] == "flaky" and parts[1].isdigit():
            attempt = self.server.next_attempt(parts[2])
            answer["attempt"] = attempt
            status = 503 if attempt <= int(parts[1]) else 200
        answer["status"] = status
        self._send(status, answer)

    def _send(self, status: int, answer: dict[str, Any]) -> None:
        payload = b"" if status in _NO_BODY else json.dumps(answer).encode() + b"\n"
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        self.send_response(status, reason)
        if payload:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)


def serve(address: str, port: int, service: str, instance: str) -> int:
    server = DemoServer(address, port, service, instance)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # serve_forever runs in a thread because shutdown() blocks until that loop ends and so cannot be called from
    # the loop's own thread (where a signal handler would run).
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    loop.start()
    host, bound_port = server.server_address[:2]
    print(f"demoapp {service}/{instance} listening on {host!s}:{bound_port}", flush=True)
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshplan.demoapp", description="a tiny httpbin for the meshplan sandbox"
    )
    parser.add_argument("--address", required=True, help="the one address to listen on (loopback)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--instance", required=True)
    args = parser.parse_args(argv)
    try:
        return serve(args.address, args.port, args.service, args.instance)
    except OSError as e:
        print(f"demoapp: cannot listen on {args.address}:{args.port}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
