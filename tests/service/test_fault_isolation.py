"""Fault isolation: a model whose step raises, returns NaN or hangs fails only its own requests; the
other models, and the faulty one's later requests, are served throughout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient

from eqserve.models.reciprocal import Reciprocal
from tests.conftest import make_client
from tests.fake_models import (
    BLOWUP_X,
    COLLATE_X,
    HANG_X,
    NAN_X,
    PAIR_X,
    RAISE_X,
    BadCollate,
    Faulty,
    Hanging,
)

BOUND_S = 20.0
"""Longest any wait in these tests lasts (a bound on a broken server, not a measurement)."""

STUCK_S = 0.5
"""The server's `stuck_tick_s` here, and each hanging request's deadline."""


def solve(client: TestClient, model: str, x: list[float], **budget: float) -> httpx.Response:
    """POST /v1/solve of `x` to `model`."""
    return client.post("/v1/solve", json={"model": model, "input": {"x": x}, "budget": budget})


def until(check: Callable[[], bool]) -> bool:
    """Whether `check()` comes true within BOUND_S."""
    deadline = time.monotonic() + BOUND_S
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@contextmanager
def served_throughout(client: TestClient) -> Iterator[list[httpx.Response]]:
    """Reciprocal solves posted back to back on another thread for the length of the block; the list
    receives their answers."""
    answers: list[httpx.Response] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set() and len(answers) < 10_000:
            answers.append(solve(client, "reciprocal", [0.5, 0.25]))

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join(BOUND_S)


def expect_reciprocal(answers: list[httpx.Response]) -> None:
    """Every answer a converged solve of x = (0.5, 0.25): y = 1/x (to the default tolerance)."""
    assert answers
    for r in answers:
        assert r.status_code == 200 and r.json()["status"] == "converged"
        assert r.json()["output"]["y"] == pytest.approx([2.0, 4.0], rel=1e-6)


def test_a_raising_or_nan_step_fails_only_its_own_requests() -> None:
    with (
        make_client({"faulty": Faulty(), "reciprocal": Reciprocal()}) as client,
        served_throughout(client) as answers,
    ):
        assert until(lambda: len(answers) > 0)
        raised = solve(client, "faulty", [RAISE_X])
        nan = solve(client, "faulty", [NAN_X])
        blowup = solve(client, "faulty", [BLOWUP_X])
        after = solve(client, "faulty", [0.5])
        seen = len(answers)
        until(lambda: len(answers) > seen)  # one more after the faults, on the same server
    assert raised.status_code == 500 and raised.json()["error"]["type"] == "model_error"
    for r in (nan, blowup):
        assert r.status_code == 200 and r.json()["status"] == "diverged" and r.json()["output"] is None
    assert after.status_code == 200 and after.json()["status"] == "converged"
    assert len(answers) > seen
    expect_reciprocal(answers)


def test_a_context_the_model_cannot_collate_fails_its_request_not_the_server() -> None:
    """A request whose context the model fails to collate alone gets 500 `model_error` and its model
    goes on; one that fails only beside others fails the batch it joins — every request in it
    answered 500, none lost — and the model serves the next request."""
    with (
        make_client({"bad-collate": BadCollate(sleep_s=0.01), "reciprocal": Reciprocal()}) as client,
        served_throughout(client) as answers,
    ):
        assert until(lambda: len(answers) > 0)
        alone = solve(client, "bad-collate", [COLLATE_X])
        inflight: list[httpx.Response] = []
        long = threading.Thread(
            target=lambda: inflight.append(solve(client, "bad-collate", [0.5], max_iters=10_000, tol=0))
        )
        long.start()
        running = 'eqserve_requests_running{model="bad-collate"} 1.0'
        assert until(lambda: running in client.get("/metrics").text)
        company = solve(client, "bad-collate", [PAIR_X])
        long.join(BOUND_S)
        after = solve(client, "bad-collate", [0.5])
        seen = len(answers)
        until(lambda: len(answers) > seen)
    for r in (alone, company, *inflight):
        assert r.status_code == 500 and r.json()["error"]["type"] == "model_error"
        assert "RuntimeError" not in r.text and "collate failed" not in r.text  # no internals
    assert len(inflight) == 1
    assert after.status_code == 200 and after.json()["status"] == "converged"
    assert len(answers) > seen
    expect_reciprocal(answers)


def test_a_hung_step_is_answered_by_the_deadline_and_reported_not_ready() -> None:
    """While the step blocks: the hung request, one waiting behind it and a stream are answered 503
    `stuck` soon after their deadline (the worker cannot answer them), readiness names the stuck model,
    and the other model solves. Once the step returns, the model is ready and solves again."""
    model = Hanging(wait_s=BOUND_S)
    with make_client({"hanging": model, "reciprocal": Reciprocal()}, stuck_tick_s=STUCK_S) as client:
        answers: dict[str, httpx.Response] = {}
        answered_while_stuck: dict[str, bool] = {}

        def post(name: str, x: float) -> None:
            answers[name] = solve(client, "hanging", [x], timeout_s=STUCK_S)
            answered_while_stuck[name] = not model.release.is_set()

        hung = threading.Thread(target=post, args=("hung", HANG_X))
        hung.start()
        assert model.entered.wait(BOUND_S)
        queued = threading.Thread(target=post, args=("queued", 0.5))
        queued.start()
        with served_throughout(client) as others:
            assert until(lambda: client.get("/readyz").status_code == 503)
            readyz = client.get("/readyz").json()["error"]["message"]
            v2 = [client.get(p).status_code for p in ("/v2/health/ready", "/v2/models/hanging/ready")]
            other_ready = client.get("/v2/models/reciprocal/ready").status_code
            hung.join(BOUND_S)
            queued.join(BOUND_S)
            with client.websocket_connect("/v1/solve/stream") as ws:
                ws.send_json({"model": "hanging", "input": {"x": [0.5]}, "budget": {"timeout_s": STUCK_S}})
                streamed = ws.receive_json()
            answered_while_stuck["stream"] = not model.release.is_set()
            seen = len(others)
            until(lambda: len(others) > seen)  # still served while the hanging model is stuck
            stuck_served = len(others) > seen and not model.release.is_set()
        model.release.set()
        assert until(lambda: client.get("/readyz").status_code == 200)
        recovered = solve(client, "hanging", [0.5])
    assert "'hanging'" in readyz and "'reciprocal'" not in readyz
    assert v2 == [503, 503] and other_ready == 200
    assert answered_while_stuck == {"hung": True, "queued": True, "stream": True}
    assert streamed["type"] == "error" and streamed["error"]["type"] == "stuck"
    for name in ("hung", "queued"):
        assert answers[name].status_code == 503 and answers[name].json()["error"]["type"] == "stuck"
        assert int(answers[name].headers["Retry-After"]) >= 1
    assert stuck_served
    expect_reciprocal(others)
    assert recovered.status_code == 200 and recovered.json()["status"] == "converged"
