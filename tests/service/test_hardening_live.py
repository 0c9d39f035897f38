"""Hardening against a real server: a body refused before it is read, an event loop a slow encode
cannot stall, slow and idle connections closed, no key in the log, and a drain on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

import httpx
from websockets.sync.client import connect

from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.config import Settings
from tests.fake_models import GatedEncode
from tests.live_server import free_port, live_server, wait_ready
from tests.test_cli import EQSERVE

SOCKET_BOUND_S = 20.0
"""How long a raw-socket test waits for the server at most (a bound, not a measurement)."""


def serve(models: dict, **settings: object) -> AbstractContextManager[str]:
    """A live server of an app serving `models` with the given settings."""
    return live_server(create_app(Settings(models=[], **settings), models))  # type: ignore[arg-type]


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails after SOCKET_BOUND_S)."""
    sock.settimeout(SOCKET_BOUND_S)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_declared_body_over_the_cap_is_413_before_it_is_sent() -> None:
    with serve({"reciprocal": Reciprocal()}) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = "POST /v1/solve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            sock.sendall(f"{head}Content-Length: 1000000000\r\n\r\n".encode() + b"[" * 100)
            answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "body_too_large"


def test_health_answers_while_a_slow_encode_runs() -> None:
    """The encode holds its request until the test releases it: /healthz must answer meanwhile."""
    model = GatedEncode(wait_s=SOCKET_BOUND_S / 2)
    with serve({"gated": model}) as url:
        answers: list[int] = []
        body = {"model": "gated", "input": {"x": [GatedEncode.GATED_X]}}
        solver = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{url}/v1/solve", json=body, timeout=60).status_code)
        )
        solver.start()
        assert model.entered.wait(SOCKET_BOUND_S)
        health = httpx.get(f"{url}/healthz", timeout=SOCKET_BOUND_S)
        answered_during_encode = not model.returned.is_set()
        model.release.set()
        solver.join()
    assert health.status_code == 200 and answered_during_encode
    assert answers == [200]


def test_a_connection_trickling_its_headers_is_closed() -> None:
    """Slowloris: a byte every 0.1 s would hold the connection for ever; the header deadline ends it."""
    with serve({"reciprocal": Reciprocal()}, header_timeout_s=0.5) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            deadline = time.monotonic() + SOCKET_BOUND_S
            closed = False
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                sock.settimeout(0.1)
                with suppress(TimeoutError):
                    closed = sock.recv(1) == b""
                if closed or time.monotonic() > deadline:
                    break
    assert closed


def test_requests_over_the_connection_limit_get_503() -> None:
    with serve({"reciprocal": Reciprocal()}, max_connections=3) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            deadline = time.monotonic() + SOCKET_BOUND_S
            while (status := httpx.get(f"{url}/healthz").status_code) != 503 and time.monotonic() < deadline:
                time.sleep(0.05)  # the server may not have accepted the idle ones yet
            assert status == 503
        finally:
            for s in idle:
                s.close()


@contextmanager
def eqserve(tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """`eqserve serve --models reciprocal ARGS` on a free port with EQSERVE_* variables `env`, logging
    to a file; killed if still up."""
    port = free_port()
    log = tmp_path / "eqserve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [EQSERVE, "serve", "--port", str(port), "--models", "reciprocal", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {f"EQSERVE_{k.upper()}": v for k, v in env.items()},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{url}/readyz", log)
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_key_never_reaches_the_log(tmp_path: Path) -> None:
    """The live page's WebSocket carries the key in its URL; the access log must not."""
    key = "k-9f8e7d6c5b4a"
    with eqserve(tmp_path, api_key=key) as (proc, url, log):
        ws_url = url.replace("http", "ws", 1) + f"/v1/solve/stream?token={key}"
        with connect(ws_url) as ws:
            ws.send(json.dumps({"model": "reciprocal", "input": {"x": [0.5]}}))
            events = [json.loads(m) for m in ws]
        assert events[-1]["type"] == "result"
        assert httpx.get(f"{url}/v1/models?token={key}").status_code == 401
        proc.terminate()
        proc.wait(SOCKET_BOUND_S)
    text = log.read_text()
    assert "/v1/solve/stream?token=" in text and "/v1/models?token=" in text
    assert key not in text


def test_sigterm_drains_in_flight_solves_and_streams_then_exits_0(tmp_path: Path) -> None:
    """Solves that end by themselves within the drain are answered as usual, one that would run past
    it is answered `cancelled`; meanwhile readiness and new solves answer 503; the exit status is 0."""
    drain_s, short_s = 6.0, 2.0
    args = ("--max-iters-cap", str(10**9), "--timeout-cap-s", "120")
    with eqserve(tmp_path, *args, drain_timeout_s=str(drain_s)) as (proc, url, log):
        endless = {"model": "reciprocal", "input": {"x": [1e-6]}, "budget": {"tol": 0, "max_iters": 10**9}}
        short = endless | {"budget": endless["budget"] | {"timeout_s": short_s}}
        long_ = endless | {"budget": endless["budget"] | {"timeout_s": 60}}
        answers: dict[str, dict] = {}

        def post(name: str, body: dict) -> None:
            answers[name] = httpx.post(f"{url}/v1/solve", json=body, timeout=60).json()

        def stream() -> None:
            with connect(url.replace("http", "ws", 1) + "/v1/solve/stream") as ws:
                ws.send(json.dumps(short | {"return": {"every": 10**6}}))
                answers["stream"] = [json.loads(m) for m in ws][-1]
                answers["stream_close"] = {"code": ws.close_code}

        clients = [
            threading.Thread(target=post, args=("short", short)),
            threading.Thread(target=post, args=("long", long_)),
            threading.Thread(target=stream),
        ]
        for t in clients:
            t.start()
        metrics = f"{url}/metrics"
        while 'eqserve_requests_running{model="reciprocal"} 3.0' not in httpx.get(metrics).text:
            assert proc.poll() is None and clients[0].is_alive()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        ready = httpx.get(f"{url}/readyz")
        refused = httpx.post(f"{url}/v1/solve", json=short)
        for t in clients:
            t.join(drain_s + SOCKET_BOUND_S)
        code = proc.wait(SOCKET_BOUND_S)
    assert ready.status_code == 503
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert answers["short"]["status"] == "deadline"
    assert answers["stream"]["type"] == "result" and answers["stream"]["status"] == "deadline"
    assert answers["stream_close"]["code"] == 1000
    assert answers["long"]["status"] == "cancelled"
    assert code == 0, log.read_text()
