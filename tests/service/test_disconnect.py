"""A client that goes away mid-solve cancels its row: no work is done for it afterwards."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn

from models.reciprocal import Reciprocal
from service.app import create_app
from service.config import Settings
from service.engine import NullObserver
from tests.test_cli import free_port


def test_client_disconnect_cancels_the_solve() -> None:
    app = create_app(Settings(models=[], max_iters_cap=10**8), {"reciprocal": Reciprocal()})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        engine = app.state.eq.served["reciprocal"].engine
        finished = []

        class Recorder(NullObserver):
            def finished(self, job, result):
                finished.append(result)

        engine.observer = Recorder()
        body = {"model": "reciprocal", "input": {"x": [1e-5]}, "budget": {"tol": 0, "max_iters": 10**8}}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"http://127.0.0.1:{port}/v1/solve", json=body, timeout=0.5)
        deadline = time.monotonic() + 5
        while engine.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.running == 0
        assert [r.status for r in finished] == ["cancelled"]
        ticks = engine.ticks
        time.sleep(0.2)
        assert engine.ticks == ticks
    finally:
        server.should_exit = True
        thread.join(10)
