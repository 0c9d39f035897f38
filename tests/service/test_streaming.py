"""WS /v1/solve/stream and SSE: events, cancel, extend, disconnect, slow readers, auth."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import torch
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob, SolveResult
from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.client import Client, EqserveError
from eqserve.service.config import Settings
from eqserve.service.streams import STRIDE_MARGIN, EventStream, Iterate, iterate_encoder
from tests.live_server import live_server
from tests.service.test_disconnect import assert_engine_goes_idle

SLOW = {"x": [1e-5]}
"""An input whose solve with tol 0 runs as long as its budget allows."""

Y = torch.zeros(1, 1)


def encode_t(item: Iterate) -> str:
    """An iterate event that carries only its t."""
    return json.dumps({"type": "iterate", "t": item[0]})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, object]]:
    settings = Settings(models=[], max_iters_cap=10**8, stream_buffer=100_000, stream_grace_s=5)
    app = create_app(settings, {"reciprocal": Reciprocal()})
    with live_server(app) as url:
        yield url, app


def ws_url(url: str) -> str:
    return url.replace("http", "ws") + "/v1/solve/stream"


def request(**kw: object) -> dict:
    body: dict = {"model": "reciprocal", "input": {"x": [0.5, 0.25]}, "budget": {"tol": 1e-10}}
    return body | kw


def drain(ws) -> list[dict]:
    events = []
    while True:
        events.append(json.loads(ws.recv(timeout=10)))
        if events[-1]["type"] in ("result", "error"):
            return events


def test_every_iterate_then_the_result(server) -> None:
    url, _ = server
    with connect(ws_url(url)) as ws:
        ws.send(json.dumps(request(**{"return": {"every": 1, "output": True}})))
        events = drain(ws)
    result = events[-1]
    iterates = events[:-1]
    assert result["status"] == "converged" and result["dropped"] == 0
    assert [e["t"] for e in iterates] == list(range(1, result["iterations"] + 1))
    assert all(e["type"] == "iterate" and "output" in e and "y" not in e for e in iterates)
    assert iterates[-1]["residual"] == result["residual"]
    assert iterates[-1]["output"] == result["output"]
    plain = httpx.post(f"{url}/v1/solve", json=request()).json()
    assert plain["output"] == result["output"] and plain["iterations"] == result["iterations"]


def test_every_k_with_state(server) -> None:
    url, _ = server
    with connect(ws_url(url)) as ws:
        ws.send(
            json.dumps(request(budget={"max_iters": 10, "tol": 0}, **{"return": {"every": 4, "state": True}}))
        )
        events = drain(ws)
    assert [e["t"] for e in events[:-1]] == [4, 8, 10]
    assert all(len(e["y"]) == 2 and "output" not in e for e in events[:-1])


def test_cancel_stops_the_solve(server) -> None:
    url, app = server
    with connect(ws_url(url)) as ws:
        ws.send(
            json.dumps(
                request(input=SLOW, budget={"tol": 0, "max_iters": 10**8}, **{"return": {"every": 1000}})
            )
        )
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "iterate"
        ws.send(json.dumps({"type": "cancel"}))
        result = drain(ws)[-1]
    assert result["status"] == "cancelled"
    assert_engine_goes_idle(app.state.eq.served["reciprocal"].engine)


def test_extend_goes_on_from_where_the_budget_stopped(server) -> None:
    url, _ = server
    with connect(ws_url(url)) as ws:
        ws.send(json.dumps(request(input={"x": [0.1]}, budget={"max_iters": 5, "tol": 0})))
        first = drain(ws)
        assert first[-1]["status"] == "max_iters" and first[-1]["iterations"] == 5
        ws.send(json.dumps({"type": "extend", "max_iters": 4}))
        second = drain(ws)
    assert [e["t"] for e in second[:-1]] == [6, 7, 8, 9]
    assert second[-1]["iterations"] == 9
    assert second[-1]["output"]["y"][0] == pytest.approx((1 - 0.9**9) / 0.1)


def test_a_converged_stream_closes_instead_of_extending(server) -> None:
    url, _ = server
    with connect(ws_url(url)) as ws:
        ws.send(json.dumps(request()))
        assert drain(ws)[-1]["status"] == "converged"
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=5)


def test_disconnect_cancels_within_an_iteration(server) -> None:
    url, app = server
    engine = app.state.eq.served["reciprocal"].engine
    with connect(ws_url(url)) as ws:
        ws.send(
            json.dumps(
                request(input=SLOW, budget={"tol": 0, "max_iters": 10**8}, **{"return": {"every": 1000}})
            )
        )
        assert json.loads(ws.recv(timeout=10))["type"] == "iterate"
        ws.close()
        assert_engine_goes_idle(engine)


def test_slow_reader_gets_the_result_and_an_honest_dropped_count() -> None:
    app = create_app(Settings(models=[], stream_buffer=8), {"reciprocal": Reciprocal()})
    with live_server(app) as url, connect(ws_url(url)) as ws:
        engine = app.state.eq.served["reciprocal"].engine
        ws.send(json.dumps(request(input=SLOW, budget={"tol": 0, "max_iters": 3000})))
        while engine.running == 0:
            time.sleep(0.005)
        while engine.running:  # read nothing until the solve is over
            time.sleep(0.01)
        events = drain(ws)
    result = events[-1]
    assert result["iterations"] == 3000 and result["status"] == "max_iters"
    # whether iterates were dropped depends on how much the sockets buffered; none may be lost
    assert len(events) - 1 + result["dropped"] == 3000
    ts = [e["t"] for e in events[:-1]]
    assert ts == sorted(ts) and ts[-1] == 3000


def test_a_client_that_stops_reading_mutes_its_solve_through_the_sockets() -> None:
    """End to end over real sockets (4 KiB server send buffer, 4 KiB client receive buffer): the
    batched sends block on the transport's flow control, the stream mutes its job, and once the
    client reads again it gets a cancelled result whose events plus `dropped` are every iteration."""
    app = create_app(Settings(models=[], max_iters_cap=10**8, stream_buffer=64), {"reciprocal": Reciprocal()})
    with live_server(app, send_buffer=4096) as url:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        with connect(ws_url(url), sock=sock) as ws:
            engine = app.state.eq.served["reciprocal"].engine
            ws.send(json.dumps(request(input=SLOW, budget={"tol": 0, "max_iters": 10**7})))
            deadline = time.monotonic() + 20
            while not any(row is not None and row.job.watch.muted for row in engine.scheduler.rows):
                assert time.monotonic() < deadline, "the solve was never muted"
                time.sleep(0.01)
            ws.send(json.dumps({"type": "cancel"}))
            events = drain(ws)
    result = events[-1]
    assert result["status"] == "cancelled"
    assert len(events) - 1 + result["dropped"] == result["iterations"]
    assert events[-2]["t"] == result["iterations"]  # the last iterate is never dropped


def test_bad_request_over_ws_is_an_error_event(server) -> None:
    url, _ = server
    with connect(ws_url(url)) as ws:
        ws.send(json.dumps(request(budget={"tol": -1})))
        event = json.loads(ws.recv(timeout=5))
    assert event["type"] == "error" and event["error"]["field"] == "budget.tol"


def test_sse_sends_the_same_events(server) -> None:
    url, _ = server
    with httpx.stream(
        "POST", f"{url}/v1/solve", json=request(stream=True, budget={"max_iters": 6, "tol": 0})
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: ") :]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["iterate"] * 6 + ["result"]
    assert events[-1]["iterations"] == 6


def test_python_client_streams_extends_and_cancels(server) -> None:
    url, _ = server
    with Client(url) as client:
        with client.stream("reciprocal", {"x": [0.1]}, max_iters=3, tol=0.0) as s:
            assert [e["t"] for e in s if e["type"] == "iterate"] == [1, 2, 3]
            s.extend(2)
            assert [e["t"] for e in s if e["type"] == "iterate"] == [4, 5]
            assert s.result is not None and s.result["iterations"] == 5
        with client.stream("reciprocal", SLOW, max_iters=10**8, tol=0.0, every=500) as s:
            for event in s:
                if event.get("t") == 500:
                    s.cancel()
            assert s.result is not None and s.result["status"] == "cancelled"
        with pytest.raises(EqserveError, match=r"budget\.tol"):
            list(client.stream("reciprocal", {"x": [0.5]}, tol=-1.0))


def test_auth_guards_models_and_streams_but_not_health() -> None:
    app = create_app(Settings(models=[], api_key="s3cret"), {"reciprocal": Reciprocal()})
    with live_server(app) as url:
        body = request()
        assert httpx.post(f"{url}/v1/solve", json=body).status_code == 401
        wrong = httpx.post(f"{url}/v1/solve", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "unauthorized"
        ok = httpx.post(f"{url}/v1/solve", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{url}/v1/models").status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{url}{open_path}").status_code == 200
        with connect(ws_url(url)) as ws:  # refused before the request is read
            assert json.loads(ws.recv(timeout=5))["error"]["type"] == "unauthorized"
        with connect(ws_url(url) + "?token=s3cret") as ws:
            ws.send(json.dumps(body))
            assert drain(ws)[-1]["status"] == "converged"
        with Client(url, api_key="s3cret") as client:
            assert client.solve("reciprocal", {"x": [0.5]})["status"] == "converged"


def test_event_stream_drops_oldest_iterates_never_the_result() -> None:
    async def scenario() -> tuple[list[dict], int]:
        stream = EventStream(asyncio.get_running_loop(), 8, encode_t)
        for t in range(1, 101):
            stream.push(t, 0.0, 0.0, Y)
        stream.finish({"type": "result"})
        return [json.loads(t) async for batch in stream.batches() for t in batch], stream.dropped

    events, dropped = asyncio.run(scenario())
    assert dropped == 92
    assert [e.get("t") for e in events] == [*range(93, 101), None]
    assert events[-1] == {"type": "result", "dropped": 92}


def test_iterate_event_text_is_the_json_of_the_event() -> None:
    model = Reciprocal()
    ctx = model.encode(model.Input.model_validate({"x": [0.5, 0.25]}))
    y = torch.tensor([[1.5, 2.0]])
    encode = iterate_encoder(model, ctx, state=True, output=True)
    event = json.loads(encode((7, 0.125, 1e-7, y)))
    assert event == {
        "type": "iterate",
        "t": 7,
        "residual": 0.125,
        "rel_residual": 1e-7,
        "y": [1.5, 2.0],
        "output": model.decode(y, ctx),
    }
    diverged = json.loads(encode((8, math.inf, math.nan, y)))
    assert diverged["residual"] is None and diverged["rel_residual"] is None and "output" not in diverged
    plain = json.loads(iterate_encoder(model, ctx, state=False, output=False)((9, 0.5, 0.25, y)))
    assert plain == {"type": "iterate", "t": 9, "residual": 0.5, "rel_residual": 0.25}


def test_a_stalled_reader_costs_the_worker_no_wakeups_and_drops_are_exact() -> None:
    async def scenario() -> tuple[list[dict], int, int]:
        stream = EventStream(asyncio.get_running_loop(), 64, encode_t)
        socket_full = asyncio.Event()
        got: list[dict] = []

        async def consume() -> None:
            async for batch in stream.batches():
                got.extend(json.loads(t) for t in batch)
                await socket_full.wait()  # a send that blocks until the client reads again

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)  # the consumer is asleep waiting for an iterate
        await asyncio.to_thread(stream.push, 1, 1.0, 1.0, Y)
        while not got:
            await asyncio.sleep(0.001)
        stalled_from = stream.wakeups
        await asyncio.to_thread(lambda: [stream.push(t, 1.0, 1.0, Y) for t in range(2, 20_001)])
        stalled_wakeups = stream.wakeups - stalled_from
        socket_full.set()
        stream.finish({"type": "result"})
        await task
        return got, stalled_from, stalled_wakeups

    events, before, during = asyncio.run(scenario())
    assert before == 1 and during == 0
    result, iterates = events[-1], events[:-1]
    ts = [e["t"] for e in iterates]
    assert ts[0] == 1 and ts[-1] == 20_000 and ts == sorted(set(ts))
    assert result == {"type": "result", "dropped": 20_000 - len(iterates)}
    assert len(iterates) <= 1 + 64


def test_a_reading_consumer_is_paced_and_woken_at_most_once_per_batch() -> None:
    rate, batch_s, capacity, n = 2000.0, 0.01, 64, 30_000
    sizes: list[int] = []

    async def scenario() -> tuple[EventStream, list[dict], float]:
        stream = EventStream(asyncio.get_running_loop(), capacity, encode_t, rate=rate, batch_s=batch_s)
        got: list[dict] = []

        async def consume() -> None:
            async for batch in stream.batches():
                sizes.append(len(batch))
                got.extend(json.loads(t) for t in batch)

        def produce() -> None:
            for t in range(1, n + 1):
                stream.push(t, 1.0, 1.0, Y)
                if t % 100 == 0:
                    time.sleep(0.001)  # a worker that ticks, not one burst

        start = time.monotonic()
        task = asyncio.create_task(consume())
        await asyncio.to_thread(produce)
        elapsed = time.monotonic() - start
        stream.finish({"type": "result"})
        await task
        return stream, got, elapsed

    stream, events, elapsed = asyncio.run(scenario())
    iterates = events[:-1]
    assert stream.pushed == n and len(iterates) + events[-1]["dropped"] == n
    assert len(iterates) <= capacity + rate * elapsed + capacity  # the burst, the rate, the final flush
    assert stream.wakeups <= elapsed / batch_s + 2
    assert [e["t"] for e in iterates] == sorted({e["t"] for e in iterates}) and iterates[-1]["t"] == n
    assert min(sizes) > 0 and len(sizes) <= elapsed / batch_s + 2  # no empty batches, one per batch_s


def test_a_stream_keeps_y_only_when_its_events_need_it() -> None:
    def encode(item: Iterate) -> str:
        return json.dumps({"type": "iterate", "t": item[0], "y": item[3] is not None})

    async def scenario(keep_y: bool) -> list[dict]:
        stream = EventStream(asyncio.get_running_loop(), 8, encode, keep_y)
        stream.push(1, 0.0, 0.0, Y)
        stream.finish({"type": "error"})
        return [json.loads(t) async for batch in stream.batches() for t in batch]

    assert asyncio.run(scenario(True)) == [{"type": "iterate", "t": 1, "y": True}, {"type": "error"}]
    assert asyncio.run(scenario(False))[0]["y"] is False


@pytest.mark.parametrize("stall", [False, True])
def test_the_worker_is_spared_the_iterates_a_stream_would_drop(stall: bool) -> None:
    """A solve faster than the stream's rate gets a stride (the worker hands over a fraction of its
    iterates); a client that stops reading mutes it (none at all) until it reads again. Either
    way the events sent plus `dropped` are exactly the iterations, and the last iterate is sent."""
    model = Reciprocal()
    engine = Engine(model)
    engine.start()
    iterations = 20_000
    ctx = model.encode(model.Input.model_validate({"x": [1e-6]}))  # G moves y by ~1 per step
    # The stream's rate is set from this machine's own speed, so that the solve outruns it ~8 times.
    probe = engine.submit(SolveJob(id="probe", ctx=ctx, y0=model.init(ctx), max_iters=2000, tol=0.0))
    measured = probe.result(timeout=60)
    per_s = measured.iterations / (measured.solve_ms / 1e3)
    rate = per_s / (8 * STRIDE_MARGIN)

    async def scenario() -> tuple[EventStream, list[dict], SolveResult, list[int]]:
        stream = EventStream(asyncio.get_running_loop(), 64, encode_t, rate=rate)
        job = SolveJob(id="s", ctx=ctx, y0=model.init(ctx), max_iters=iterations, tol=0.0)
        stream.attach(job)
        got: list[dict] = []
        reading = asyncio.Event()
        if not stall:
            reading.set()

        async def consume() -> None:
            async for batch in stream.batches():
                got.extend(json.loads(t) for t in batch)
                await reading.wait()  # stalled: a send that blocks until the client reads again

        task = asyncio.create_task(consume())
        fut = asyncio.wrap_future(engine.submit(job))
        muted_pushes: list[int] = []
        if stall:
            deadline = time.monotonic() + 10
            while not stream.muted:
                assert time.monotonic() < deadline and not fut.done(), "never muted"
                await asyncio.sleep(0.005)
            muted_pushes.append(stream.pushed)
            await asyncio.sleep(0.2)  # the worker goes on iterating, handing nothing over
            muted_pushes.append(stream.pushed)
            assert not fut.done() and stream.muted
            reading.set()
        result = await fut
        stream.finish({"type": "result", "dropped": 0})
        await task
        return stream, got, result, muted_pushes

    try:
        stream, events, result, muted = asyncio.run(scenario())
    finally:
        engine.stop()
    iterates = events[:-1]
    assert result.iterations == iterations
    assert len(iterates) + events[-1]["dropped"] == iterations
    ts = [e["t"] for e in iterates]
    assert ts == sorted(set(ts)) and ts[-1] == iterations
    assert stream.pushed < iterations / 3  # throttled: most iterates never left the worker
    if stall:
        assert muted[0] == muted[1]
