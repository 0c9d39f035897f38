"""A real uvicorn server (configured as `eqserve serve` configures it) on a free loopback port, run in a
thread for the length of a test."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from eqserve.service.server import listen, uvicorn_config


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app: FastAPI, send_buffer: int = 0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 and yield its base URL; shut it down afterwards. A `send_buffer`
    bounds each connection's kernel send buffer, as `eqserve serve --send-buffer` does."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, "warning"))
    sockets = [listen("127.0.0.1", port, send_buffer)] if send_buffer else None
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 60) -> None:
    """Poll `url` until it answers 200; fail with the process's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{proc.args[0]} exited:\n{log.read_text()}"
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer 200 in {timeout:.0f} s:\n{log.read_text()}"
        time.sleep(0.2)
