"""POST /v1/solve, the model listing, health, and every error shape."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from eqserve.models.reciprocal import Reciprocal
from tests.conftest import make_client, one_running_one_waiting
from tests.fake_models import NAN_X, RAISE_X


def solve(client: TestClient, **body: object):
    return client.post("/v1/solve", json={"model": "reciprocal", "input": {"x": [0.5, 0.25]}} | body)


def test_solve_answers_with_output_status_and_timing(client: TestClient) -> None:
    r = solve(client, budget={"tol": 1e-10}, **{"return": {"trace": True, "state": True}})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "converged"
    assert body["output"]["y"] == pytest.approx([2.0, 4.0], abs=1e-9)
    assert body["residual"] <= 1e-10
    assert len(body["trace"]) == body["iterations"]
    assert [p["t"] for p in body["trace"]] == list(range(1, body["iterations"] + 1))
    assert body["state"] == pytest.approx(body["output"]["y"])
    assert set(body["timing"]) == {"queue_ms", "solve_ms", "per_iter_us"}
    assert body["model"] == "reciprocal" and body["id"].startswith("req-")


def test_trace_every_and_budget(client: TestClient) -> None:
    body = solve(client, budget={"max_iters": 7, "tol": 0}, **{"return": {"trace": True, "every": 3}}).json()
    assert body["status"] == "max_iters" and body["iterations"] == 7
    assert [p["t"] for p in body["trace"]] == [3, 6, 7]


def test_rel_stop_mode_and_warm_start(client: TestClient) -> None:
    cold = solve(client, budget={"tol": 1e-6, "stop_mode": "rel"}).json()
    warm = solve(client, budget={"tol": 1e-6, "stop_mode": "rel"}, warm_start=[2.0, 4.0]).json()
    assert cold["rel_residual"] <= 1e-6 and cold["iterations"] > 5
    assert warm["iterations"] == 1


def test_anderson_needs_fewer_iterations_than_picard_over_http(client: TestClient) -> None:
    body = {"input": {"x": [0.05, 0.1]}, "budget": {"tol": 1e-8, "max_iters": 2000}}
    picard = solve(client, **body).json()
    anderson = solve(client, solver={"method": "anderson", "m": 3}, **body).json()
    assert anderson["status"] == picard["status"] == "converged"
    assert anderson["iterations"] < picard["iterations"] / 5


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"model": "nope"}, 404, "model"),
        ({"budget": {"tol": -1}}, 422, "budget.tol"),
        ({"budget": {"max_iters": 0}}, 422, "budget.max_iters"),
        ({"budget": {"max_iters": 5001}}, 422, "budget.max_iters"),
        ({"budget": {"timeout_s": 61}}, 422, "budget.timeout_s"),
        ({"budget": {"stop_mode": "sideways"}}, 422, "budget.stop_mode"),
        ({"budget": {"tol": "small"}}, 422, "budget.tol"),
        ({"solver": {"method": "newton"}}, 422, "solver.method"),
        ({"solver": {"damping": 1.5}}, 422, "solver.damping"),
        ({"solver": {"m": 100}}, 422, "solver.m"),
        ({"input": {"x": [0.5, 3.0]}}, 422, "input.x.1"),
        ({"input": {"x": []}}, 422, "input.x"),
        ({"input": {"x": "0.5"}}, 422, "input.x"),
        ({"input": {"y": [0.5]}}, 422, "input.x"),
        ({"input": {"x": [0.5], "colour": 1}}, 422, "input.colour"),
        ({"warm_start": [1.0]}, 422, "warm_start"),
        ({"surprise": True}, 422, "surprise"),
        ({"return": {"every": 0}}, 422, "return.every"),
    ],
)
def test_bad_requests_name_their_field(client: TestClient, body: dict, status: int, field: str) -> None:
    r = solve(client, **body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field
    assert err["type"] and err["message"]


@pytest.mark.parametrize(
    "raw",
    [
        '{"model": "reciprocal", "input": {"x": [NaN]}}',
        '{"model": "reciprocal", "input": {"x": [0.5]}, "warm_start": [Infinity]}',
    ],
)
def test_non_finite_numbers_are_refused(client: TestClient, raw: str) -> None:
    r = client.post("/v1/solve", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["field"] in ("input.x.0", "warm_start.0")


def test_malformed_json_is_422(client: TestClient) -> None:
    r = client.post("/v1/solve", content=b'{"model": ', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "invalid_json"


def test_missing_model_field(client: TestClient) -> None:
    r = client.post("/v1/solve", json={"input": {"x": [0.5]}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "model"


def test_model_fault_is_500_naming_the_model_and_serving_goes_on(client: TestClient) -> None:
    r = client.post("/v1/solve", json={"model": "faulty", "input": {"x": [RAISE_X]}})
    assert r.status_code == 500
    assert "faulty" in r.json()["error"]["message"]
    ok = client.post("/v1/solve", json={"model": "faulty", "input": {"x": [0.5]}})
    assert ok.status_code == 200 and ok.json()["status"] == "converged"


def test_diverged_row_answers_200_with_null_output(client: TestClient) -> None:
    r = client.post("/v1/solve", json={"model": "faulty", "input": {"x": [NAN_X]}})
    assert r.status_code == 200
    assert r.json()["status"] == "diverged" and r.json()["output"] is None


def test_queue_full_is_429_with_retry_after() -> None:
    with make_client({"reciprocal": Reciprocal()}, max_batch_rows=1, max_queue=1) as client:
        slow = {
            "model": "reciprocal",
            "input": {"x": [1e-4]},
            "budget": {"tol": 0, "max_iters": 10**4, "timeout_s": 2},
        }
        with one_running_one_waiting(client, "reciprocal", slow) as answers:
            r = solve(client)
            assert r.status_code == 429
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "overloaded"
        assert answers == [200, 200]


def test_models_listing_and_health(client: TestClient) -> None:
    listing = client.get("/v1/models").json()["models"]
    assert {m["name"] for m in listing} == {"reciprocal", "faulty"}
    one = client.get("/v1/models/reciprocal").json()
    assert one["example_input"] == {"x": [0.25, 0.5, 1.0, 1.5], "eta": 1.0}
    assert "x" in one["input_schema"]["properties"]
    assert one["defaults"]["budget"]["max_iters"] == 200
    assert client.get("/v1/models/nope").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    example = solve(client, input=one["example_input"]).json()
    assert example["status"] == "converged"


def test_unknown_route_uses_the_error_shape(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


class _RaggedEncode(Reciprocal):
    """An encode that fails the way user code does on a bad input: torch refuses a ragged list."""

    def encode(self, inp: Any) -> dict[str, torch.Tensor]:
        if len(inp.x) == 3:
            torch.tensor([[1.0, 2.0], [3.0]])
        return super().encode(inp)


def test_an_encode_that_raises_is_the_requests_fault_and_the_model_keeps_serving() -> None:
    with make_client({"ragged": _RaggedEncode()}) as client:
        bad = client.post("/v1/solve", json={"model": "ragged", "input": {"x": [0.5, 0.5, 0.5]}})
        assert bad.status_code == 422, bad.text
        err = bad.json()["error"]
        assert err["field"] == "input" and "cannot encode this input" in err["message"]
        assert client.post("/v1/solve", json={"model": "ragged", "input": {"x": [0.5]}}).status_code == 200
