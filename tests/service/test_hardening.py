"""Hardening against hostile or unlucky clients, in process: bounded bodies, bad JSON, honest 5xx,
cross-origin requests, the OpenAPI document and Retry-After."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.config import Settings
from tests.conftest import make_client
from tests.fake_models import BROKEN_X, RAISE_X, BrokenShape, SleepyStep

SOLVE = {"model": "reciprocal", "input": {"x": [0.5, 0.25]}}


def test_a_chunked_body_over_the_cap_is_413(client: TestClient) -> None:
    """No Content-Length to check up front: the cap counts the bytes as they arrive."""
    with make_client({"reciprocal": Reciprocal()}, max_body_bytes=1000) as small:
        chunks = iter([b'{"model": "reciprocal", "input": {"x": [', b"0.5, " * 400, b"0.5]}}"])
        r = small.post("/v1/solve", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert r.json()["error"]["type"] == "body_too_large"
        assert small.post("/v1/solve", json=SOLVE).status_code == 200


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_422_not_500(client: TestClient, depth: int) -> None:
    raw = '{"model": "reciprocal", "input": {"x": ' + "[" * depth + "]" * depth + "}}"
    r = client.post("/v1/solve", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["type"] in ("invalid_json", "invalid_request")


def test_deeply_nested_json_over_the_websocket_is_an_error_event(client: TestClient) -> None:
    with client.websocket_connect("/v1/solve/stream") as ws:
        ws.send_text("[" * 100_000 + "]" * 100_000)
        event = ws.receive_json()
    assert event["type"] == "error" and event["error"]["type"] == "invalid_json"


def test_a_model_fault_answers_500_without_its_internals_and_logs_them(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        r = client.post("/v1/solve", json={"model": "faulty", "input": {"x": [RAISE_X]}})
    assert r.status_code == 500
    message = r.json()["error"]["message"]
    assert "boom" not in r.text and "RuntimeError" not in r.text
    request_id = message.rsplit(" ", 1)[-1]
    logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert logged and "boom" in str(logged[0].exc_info[1])


def test_an_unhandled_error_answers_a_generic_500_with_a_request_id(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(models=[]), {"broken-shape": BrokenShape()})
    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR):
        r = c.post("/v1/solve", json={"model": "broken-shape", "input": {"x": [BROKEN_X]}})
    assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
    assert BrokenShape.SECRET not in r.text and "ValueError" not in r.text
    request_id = r.json()["error"]["message"].rsplit(" ", 1)[-1]
    assert any(request_id in rec.getMessage() for rec in caplog.records)


def test_errors_do_not_reflect_unbounded_input(client: TestClient) -> None:
    name = "m" * 5_000_000
    r = client.post("/v1/solve", json={"model": name, "input": {"x": [0.5]}})
    assert r.status_code == 404 and r.json()["error"]["field"] == "model"
    assert len(r.content) < 1000
    r = client.post("/v1/solve", json=SOLVE | {"budget": {name: 1}})
    assert r.status_code == 422 and len(r.content) < 1000


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_solve_must_declare_json(client: TestClient, content_type: str | None) -> None:
    """The types a browser may send cross-origin without asking the server first are refused."""
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/solve", content='{"model": "reciprocal", "input": {"x": [0.5]}}', headers=headers)
    assert r.status_code == 415 and r.json()["error"]["field"] == "content-type"


@pytest.fixture
def origin_client() -> Iterator[TestClient]:
    with make_client({"reciprocal": Reciprocal()}, allowed_origins=["https://ok.example"]) as c:
        yield c


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        (None, True),  # not a browser
        ("http://testserver", True),  # the server's own page
        ("https://ok.example", True),  # --allowed-origins
        ("https://evil.example", False),
        ("http://testserver.evil.example", False),
    ],
)
def test_the_stream_checks_the_origin(origin_client: TestClient, origin: str | None, accepted: bool) -> None:
    headers = {"origin": origin} if origin else {}
    if not accepted:
        with (
            pytest.raises(WebSocketDisconnect) as exc,
            origin_client.websocket_connect("/v1/solve/stream", headers=headers),
        ):
            pass
        assert exc.value.code == 1008
        return
    with origin_client.websocket_connect("/v1/solve/stream", headers=headers) as ws:
        ws.send_json(SOLVE)
        events = [ws.receive_json()]
        while events[-1]["type"] != "result":
            events.append(ws.receive_json())
    assert events[-1]["status"] == "converged"


def test_the_spec_and_its_viewers_follow_the_key() -> None:
    with make_client({"reciprocal": Reciprocal()}, api_key="k3y") as c:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers={"authorization": "Bearer k3y"}).status_code == 200
    with make_client({"reciprocal": Reciprocal()}) as c:
        assert c.get("/openapi.json").status_code == 200


def test_the_api_key_can_come_from_a_file(tmp_path) -> None:
    path = tmp_path / "key"
    path.write_text("s3cret\n")
    with make_client({"reciprocal": Reciprocal()}, api_key_file=str(path)) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"authorization": "Bearer s3cret"}).status_code == 200
    with pytest.raises(ValueError, match="api_key_file"):
        Settings(models=[], api_key_file=str(tmp_path / "missing"))


def test_a_binary_or_non_json_control_message_leaves_the_stream_controllable(client: TestClient) -> None:
    """Each bad message gets an error event; the solve goes on, and a later cancel still stops it."""
    slow = {"model": "reciprocal", "input": {"x": [1e-4]}, "budget": {"tol": 0, "max_iters": 5000}}
    slow |= {"return": {"every": 50}}
    with client.websocket_connect("/v1/solve/stream") as ws:
        ws.send_json(slow)
        assert ws.receive_json()["type"] == "iterate"
        ws.send_bytes(b"\x00\x01")
        ws.send_text("not json")
        ws.send_json({"type": "cancel"})
        events = [ws.receive_json()]
        while events[-1]["type"] != "result":
            events.append(ws.receive_json())
    errors = [e["error"]["type"] for e in events if e["type"] == "error"]
    assert errors == ["invalid_message", "invalid_json"]
    assert events[-1]["status"] == "cancelled" and events[-1]["iterations"] < 5000


def test_retry_after_follows_the_measured_drain_rate() -> None:
    """Under steady overload, Retry-After is about the time the full queue takes to empty at the rate
    the test sees solves finish, not a multiple of it."""
    sleep_s, iters, queue, clients, run_s = 0.005, 10, 8, 12, 2.0
    body = {"model": "sleepy", "input": {"x": [0.5]}, "budget": {"tol": 0, "max_iters": iters}}
    answers: list[tuple[float, int, str | None]] = []
    with make_client({"sleepy": SleepyStep(sleep_s)}, max_batch_rows=1, max_queue=queue) as c:

        def client_loop(end: float) -> None:
            while time.monotonic() < end:
                r = c.post("/v1/solve", json=body)
                answers.append((time.monotonic(), r.status_code, r.headers.get("Retry-After")))
                if r.status_code == 429:
                    time.sleep(0.01)

        start = time.monotonic()
        threads = [threading.Thread(target=client_loop, args=(start + run_s,)) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    solved = sum(1 for _, status, _ in answers if status == 200)
    advised = [int(retry) for at, status, retry in answers if status == 429 and at > start + run_s / 2]
    assert solved and advised
    drain_s = queue / (solved / elapsed)
    assert 1 <= max(advised) <= math.ceil(drain_s) + 1


def test_draining_readiness_and_analysis_answer_503(client: TestClient) -> None:
    """Once the drain begins, the v2 readiness routes say not ready and an analysis (its rows are
    solves) is refused like a solve."""
    analysis = {"model": "reciprocal", "iters": [1, 2], "inputs": [{"input": {"x": [0.5]}}]}
    routes = ("/readyz", "/v2/health/ready", "/v2/models/reciprocal/ready")
    assert [client.get(r).status_code for r in routes] == [200, 200, 200]
    client.app.state.drain.begin()  # type: ignore[attr-defined]
    assert [client.get(r).status_code for r in routes] == [503, 503, 503]
    refused = client.post("/v1/analyze", json=analysis)
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "draining"
    assert int(refused.headers["Retry-After"]) >= 1
