"""The demo app, as a real process on loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from conftest import Loopback, RunningApp


def test_answers_with_who_it_is_and_what_it_got(demoapp: Callable[..., RunningApp], http: httpx.Client) -> None:
    app = demoapp(service="web", instance="web-7")
    answer = http.post(f"{app.url}/some/path?x=1", content=b"hello", headers={"X-Test": "a"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["service"] == "web"
    assert body["instance"] == "web-7"
    assert body["method"] == "POST"
    assert body["path"] == "/some/path"
    assert body["query"] == "x=1"
    assert body["headers"]["x-test"] == "a"
    assert body["body_bytes"] == 5


@pytest.mark.parametrize("code", [201, 204, 418, 503])
def test_status_answers_with_that_code(demoapp: Callable[..., RunningApp], http: httpx.Client, code: int) -> None:
    app = demoapp()
    answer = http.get(f"{app.url}/status/{code}")
    assert answer.status_code == code
    if code != 204:
        assert answer.json()["status"] == code


def test_status_out_of_range_is_a_bad_request(demoapp: Callable[..., RunningApp], http: httpx.Client) -> None:
    assert http.get(f"{demoapp().url}/status/99").status_code == 400


def test_delay_waits(demoapp: Callable[..., RunningApp], http: httpx.Client) -> None:
    app = demoapp()
    began = time.monotonic()
    answer = http.get(f"{app.url}/delay/300")
    assert time.monotonic() - began >= 0.3
    assert answer.json()["delay_ms"] == 300


def test_flaky_fails_n_times_per_key(demoapp: Callable[..., RunningApp], http: httpx.Client) -> None:
    app = demoapp()
    seen = [(a.status_code, a.json()["attempt"]) for a in (http.get(f"{app.url}/flaky/2/k1") for _ in range(4))]
    assert seen == [(503, 1), (503, 2), (200, 3), (200, 4)]
    # Another key counts on its own.
    assert http.get(f"{app.url}/flaky/1/k2").status_code == 503


def test_listens_only_on_its_address(demoapp: Callable[..., RunningApp], loopback: Loopback) -> None:
    app = demoapp()
    with socket.socket() as elsewhere:
        elsewhere.settimeout(1)
        assert elsewhere.connect_ex((loopback.ip(), app.port)) != 0


def test_sigterm_exits_cleanly_even_with_a_request_in_flight(demoapp: Callable[..., RunningApp]) -> None:
    app = demoapp()

    def slow_request() -> None:
        try:
            httpx.get(f"{app.url}/delay/20000", trust_env=False, timeout=30)
        except httpx.HTTPError:
            pass  # the server going away mid-request is the point

    in_flight = threading.Thread(target=slow_request, daemon=True)
    in_flight.start()
    time.sleep(0.2)
    began = time.monotonic()
    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(timeout=5) == 0
    assert time.monotonic() - began < 10  # the request in flight would take 20 s


def test_taken_port_exits_with_a_message(demoapp: Callable[..., RunningApp]) -> None:
    app = demoapp()
    argv = [sys.executable, "-m", "meshplan.sandbox.demoapp", "--address", app.address, "--port", str(app.port)]
    second = subprocess.run(
        [*argv, "--service", "x", "--instance", "y"], capture_output=True, text=True, timeout=10, check=False
    )
    assert second.returncode == 1
    assert f"cannot listen on {app.address}:{app.port}" in second.stderr
