"""POST /v1/analyze: E_t and L_t through the engine, as the paper measures them; capped."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient

from eqserve.models.reciprocal import Reciprocal
from tests.conftest import make_client


@pytest.fixture
def client() -> TestClient:
    with make_client({"reciprocal": Reciprocal()}, analyze_cap=50_000) as c:
        yield c


def test_error_falls_and_lipschitz_matches_the_t_step_map(client: TestClient) -> None:
    """From y0 = 0 the t-step map of G(y) = y − η(x y − 1) is y_t = (1 − (1 − ηx)^t) / x: E_t against
    1/x is known in closed form, and its gradient grows from (0, 1) at t = 1 to (−1/x², 0)."""
    x = 0.5
    body = {"model": "reciprocal", "iters": [1, 2, 4, 8, 16, 32], "pairs": 3, "delta": 1e-6,
            "inputs": [{"input": {"x": [x], "eta": 1.0}, "reference": {"y": [1 / x]}}]}  # fmt: skip
    r = client.post("/v1/analyze", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["t"] == body["iters"]
    for t, err, lip in zip(out["t"], out["error"], out["lipschitz"], strict=True):
        y_t = (1 - (1 - x) ** t) / x
        assert err == pytest.approx(abs(y_t - 1 / x) / (1 / x), rel=1e-6, abs=1e-12)
        # the perturbation moves x and eta together: |dy_t| / |d(x, eta)| averaged over random directions
        assert 0 < lip < 4.0 / x**2
    assert out["error"] == sorted(out["error"], reverse=True)  # test-time compute buys accuracy
    assert out["lipschitz"][-1] > out["lipschitz"][0]  # and the t-step map grows more expressive


def test_the_stream_reports_progress_then_the_result(client: TestClient) -> None:
    body = {"model": "reciprocal", "iters": [1, 4], "pairs": 2, "stream": True}
    with client.stream("POST", "/v1/analyze", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 3
    assert events[-1]["type"] == "result" and events[-1]["error"] is None
    assert all(math.isfinite(v) for v in events[-1]["lipschitz"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"iters": [1, 100_000]}, "iters"),
        ({"iters": [4000], "pairs": 16}, "iters"),
        ({"iters": [0]}, "iters"),
        ({"pairs": 99}, "pairs"),
        ({"inputs": [{"input": {"x": [0.5]}, "reference": {"y": [1.0, 2.0]}}]}, "inputs.reference"),
    ],
)
def test_work_over_the_cap_and_bad_fields_are_refused(client: TestClient, body: dict, field: str) -> None:
    r = client.post("/v1/analyze", json={"model": "reciprocal", **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert client.post("/v1/analyze", json={"model": "nope"}).status_code == 404
