"""Engine processes: solves, streams, cancel and extend through the channel give what the in-process
engine gives; an engine process that is killed, crashes in its step or outgrows its memory bound
answers its requests, is restarted, and the other models never notice."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from eqserve.engine.core import Engine
from eqserve.engine.supervisor import ProcessEngine, rss_mib
from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.config import Settings
from tests.process_models import HOG_MIB, HOG_X, crash_file

BOUND_S = 60.0
"""Longest any wait lasts (a hang guard, not a measurement)."""

LONG = {"max_iters": 10**7, "tol": 0.0}
"""A budget no test waits out: with SLOW's step size the solve runs until something stops it."""

SLOW = {"x": [0.5], "eta": 1e-6}

ERRORS = 'eqserve_requests_total{model="crashing",status="error"}'


def until(check: Callable[[], bool]) -> bool:
    """Whether `check()` comes true within BOUND_S."""
    deadline = time.monotonic() + BOUND_S
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def serve(*specs: str, **settings: object) -> TestClient:
    """A TestClient of a server whose models run in engine processes."""
    cfg = Settings(models=list(specs), max_iters_cap=10**7, **settings)  # type: ignore[arg-type]
    return TestClient(create_app(cfg))


@pytest.fixture(scope="module")
def both() -> Iterator[TestClient]:
    """reciprocal and the crashing model, each in its engine process."""
    with serve("reciprocal", "tests.process_models:Crashing") as c:
        yield c


def solve(
    client: TestClient, model: str, x: list[float], eta: float = 1.0, **budget: float
) -> httpx.Response:
    body = {"model": model, "input": {"x": x, "eta": eta}, "budget": budget}
    return client.post("/v1/solve", json=body)


def engine(client: TestClient, model: str) -> ProcessEngine:
    found = client.app.state.eq.served[model].engine  # type: ignore[attr-defined]
    assert isinstance(found, ProcessEngine)
    return found


def in_background(fn: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


def test_off_keeps_the_engine_in_process() -> None:
    with serve("reciprocal", engine_process="off") as c:
        assert isinstance(c.app.state.eq.served["reciprocal"].engine, Engine)  # type: ignore[attr-defined]
        assert solve(c, "reciprocal", [0.5]).json()["status"] == "converged"


def test_model_objects_stay_in_process() -> None:
    with TestClient(create_app(Settings(models=[]), {"reciprocal": Reciprocal()})) as c:
        assert isinstance(c.app.state.eq.served["reciprocal"].engine, Engine)  # type: ignore[attr-defined]


def test_solve_trace_and_state_match_the_in_process_engine(both: TestClient) -> None:
    body = {"model": "reciprocal", "input": {"x": [0.3, 1.2]}, "return": {"trace": True, "state": True}}
    with serve("reciprocal", engine_process="off") as local:
        expected = local.post("/v1/solve", json=body).json()
    got = both.post("/v1/solve", json=body).json()
    for key in ("status", "iterations", "residual", "output", "trace", "state"):
        assert got[key] == expected[key]
    assert engine(both, "reciprocal").pid != os.getpid()


def test_stream_every_iterate_extend_and_metrics(both: TestClient) -> None:
    before = _counter(both, 'eqserve_requests_total{model="reciprocal",status="max_iters"}')
    with both.websocket_connect("/v1/solve/stream") as ws:
        ws.send_text(json.dumps({"model": "reciprocal", "input": {"x": [0.5]}, "budget": {"max_iters": 5}}))
        first = _events(ws)
        ws.send_text(json.dumps({"type": "extend", "max_iters": 4}))
        second = _events(ws)
    assert [e["t"] for e in first[:-1]] == [1, 2, 3, 4, 5]
    assert first[-1]["status"] == "max_iters" and first[-1]["dropped"] == 0
    assert [e["t"] for e in second[:-1]] == [6, 7, 8, 9]
    assert second[-1]["iterations"] == 9
    assert _counter(both, 'eqserve_requests_total{model="reciprocal",status="max_iters"}') == before + 2


def test_cancel_reaches_the_engine_process(both: TestClient) -> None:
    e = engine(both, "reciprocal")
    with both.websocket_connect("/v1/solve/stream") as ws:
        ws.send_text(json.dumps({"model": "reciprocal", "input": SLOW, "budget": LONG}))
        assert ws.receive_json()["type"] == "iterate"
        steps = e.steps
        ws.send_text(json.dumps({"type": "cancel"}))
        events = _events(ws)
    assert events[-1]["status"] == "cancelled"
    assert until(lambda: e.running == 0 and e.idle)
    assert e.steps > steps


def test_kill_9_answers_restarts_and_spares_the_other_model(both: TestClient) -> None:
    crashing, recip = engine(both, "crashing"), engine(both, "reciprocal")
    pid, other_pid = crashing.pid, recip.pid
    steps = crashing.steps  # the counters come with the engine's messages: wait for this solve's steps
    errors = _counter(both, ERRORS)
    thread, answer = in_background(lambda: solve(both, "crashing", [0.5], 1e-6, **LONG))
    assert until(lambda: crashing.running == 1 and crashing.steps > steps)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
    thread.join(BOUND_S)
    answered_s = time.monotonic() - killed
    assert answer[0].status_code == 500 and answer[0].json()["error"]["type"] == "model_error"
    assert _counter(both, ERRORS) == errors + 1  # the request the process died with is counted
    assert both.get("/v2/models/crashing/ready").status_code == 503 or crashing.pid != pid
    assert solve(both, "reciprocal", [0.5]).json()["status"] == "converged"  # meanwhile
    assert until(lambda: both.get("/readyz").status_code == 200)
    assert crashing.pid != pid and recip.pid == other_pid and crashing.restarts >= 1
    assert solve(both, "crashing", [0.5]).json()["status"] == "converged"
    assert answered_s < BOUND_S


def test_a_crash_in_step_fails_its_requests_and_the_model_comes_back(both: TestClient) -> None:
    crashing = engine(both, "crashing")
    assert until(lambda: crashing.alive)
    pid = crashing.pid
    steps = crashing.steps  # the counters come with the engine's messages: wait for this solve's steps
    thread, answer = in_background(lambda: solve(both, "crashing", [0.5], 1e-6, **LONG))
    assert until(lambda: crashing.running == 1 and crashing.steps > steps)  # the front saw it start
    trigger = crash_file(os.getpid())
    trigger.touch()
    try:
        thread.join(BOUND_S)
        assert until(lambda: crashing.pid != pid or not crashing.alive)
    finally:
        trigger.unlink()
    assert answer[0].status_code == 500, answer[0].text
    assert "crashing" in answer[0].json()["error"]["message"]
    refused = solve(both, "crashing", [0.5])  # while it restarts: 503, retry later
    assert refused.status_code == 503 or refused.json()["status"] == "converged"
    if refused.status_code == 503:
        assert refused.json()["error"]["type"] == "engine_restarting" and "retry-after" in refused.headers
        assert _counter(both, 'eqserve_rejected_total{model="crashing",reason="engine_restarting"}') >= 1
    assert until(lambda: both.get("/v2/models/crashing/ready").status_code == 200)
    assert crashing.pid != pid
    assert solve(both, "crashing", [0.5]).json()["status"] == "converged"


def test_an_engine_past_its_memory_bound_is_drained_and_restarted() -> None:
    with serve("tests.process_models:Hog", max_model_rss=10**6) as c:
        hog = engine(c, "hog")
        assert hog.max_rss_mib == 10**6
        pid = hog.pid
        hog.max_rss_mib = int(rss_mib(pid)) + HOG_MIB // 2  # the bound: what it uses now, and some
        assert solve(c, "hog", [HOG_X]).json()["status"] == "converged"  # drained: answered first
        assert until(lambda: hog.pid != pid and hog.alive)
        assert rss_mib(hog.pid) < hog.max_rss_mib
        assert solve(c, "hog", [0.5]).json()["status"] == "converged"


def _events(ws: object) -> list[dict]:
    out = []
    while True:
        event = ws.receive_json()  # type: ignore[attr-defined]
        out.append(event)
        if event["type"] in ("result", "error"):
            return out


def _counter(client: TestClient, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series}")
