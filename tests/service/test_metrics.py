"""Each /metrics series moves as the traffic says it should."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from eqserve.models.reciprocal import Reciprocal
from eqserve.service.metrics import iteration_buckets, recurrence_buckets
from tests.conftest import make_client, one_running_one_waiting
from tests.fake_models import NAN_X, Faulty


def scrape(client: TestClient) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_and_histograms_follow_the_traffic() -> None:
    with make_client({"reciprocal": Reciprocal(), "faulty": Faulty()}) as client:
        iters = []
        for max_iters in (3, 5, 8):
            body = {
                "model": "reciprocal",
                "input": {"x": [0.5]},
                "budget": {"max_iters": max_iters, "tol": 0},
            }
            iters.append(client.post("/v1/solve", json=body).json()["iterations"])
        converged = client.post("/v1/solve", json={"model": "reciprocal", "input": {"x": [0.5]}}).json()
        client.post("/v1/solve", json={"model": "faulty", "input": {"x": [NAN_X]}})
        client.post("/v1/solve", json={"model": "reciprocal", "input": {"x": [0.5]}, "budget": {"tol": -1}})
        client.post("/v1/solve", json={"model": "reciprocal", "input": {"x": [9.0]}})
        text = client.get("/metrics").text
        for family in ("eqserve_requests_running", "eqserve_requests_total", "eqserve_tick_seconds"):
            assert text.count(f"# TYPE {family} ") == 1, family  # Prometheus rejects a repeated family
        m = scrape(client)
        r = {"model": "reciprocal"}
        assert value(m, "eqserve_requests_total", model="reciprocal", status="max_iters") == 3
        assert value(m, "eqserve_requests_total", model="reciprocal", status="converged") == 1
        assert value(m, "eqserve_requests_total", model="faulty", status="diverged") == 1
        total = sum(iters) + converged["iterations"]
        assert value(m, "eqserve_iterations_total", **r) == total
        assert value(m, "eqserve_iterations_per_request_sum", **r) == total
        assert value(m, "eqserve_iterations_per_request_count", **r) == 4
        assert value(m, "eqserve_iterations_per_request_bucket", model="reciprocal", le="5.0") == 2
        assert value(m, "eqserve_tick_seconds_count", **r) == total
        assert value(m, "eqserve_request_latency_seconds_count", **r) == 4
        assert value(m, "eqserve_queue_wait_seconds_count", **r) == 4
        assert value(m, "eqserve_time_to_first_iterate_seconds_count", **r) == 4
        assert value(m, "eqserve_final_residual_count", **r) == 4
        assert value(m, "eqserve_final_residual_bucket", model="reciprocal", le="1e-05") >= 1
        assert value(m, "eqserve_rejected_total", model="reciprocal", reason="invalid_input") == 1
        assert value(m, "eqserve_requests_running", **r) == 0
        assert value(m, "eqserve_batch_rows", **r) == 0


def test_gauges_show_running_waiting_and_queue_refusals() -> None:
    with make_client({"reciprocal": Reciprocal()}, max_batch_rows=1, max_queue=1) as client:
        slow = {
            "model": "reciprocal",
            "input": {"x": [1e-5]},
            "budget": {"tol": 0, "max_iters": 10**4, "timeout_s": 3},
        }
        with one_running_one_waiting(client, "reciprocal", slow):
            assert client.post("/v1/solve", json=slow).status_code == 429
            m = scrape(client)
            assert value(m, "eqserve_requests_running", model="reciprocal") == 1
            assert value(m, "eqserve_requests_waiting", model="reciprocal") == 1
            assert value(m, "eqserve_batch_rows", model="reciprocal") == 1
            assert value(m, "eqserve_rejected_total", model="reciprocal", reason="queue_full") == 1


def test_stream_clients_gauge_counts_open_streams() -> None:
    with make_client({"reciprocal": Reciprocal()}) as client:
        body = {"model": "reciprocal", "input": {"x": [0.5]}, "budget": {"max_iters": 3, "tol": 0}}
        with client.websocket_connect("/v1/solve/stream") as ws:
            ws.send_json(body)
            events = []
            while not events or events[-1]["type"] != "result":
                events.append(ws.receive_json())
            assert value(scrape(client), "eqserve_stream_clients", model="reciprocal") == 1
        deadline = time.monotonic() + 5
        while (
            value(scrape(client), "eqserve_stream_clients", model="reciprocal")
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert value(scrape(client), "eqserve_stream_clients", model="reciprocal") == 0


def test_iteration_buckets_reach_the_cap() -> None:
    assert iteration_buckets(10_000)[-1] == 10_000
    assert iteration_buckets(3_000) == (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 3000)
    assert recurrence_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert recurrence_buckets(100) == (1, 2, 4, 8, 16, 32, 64, 100)
