"""A real Prometheus scrapes a real eqserve; its query API returns what the traffic implies."""

from __future__ import annotations

import bisect
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.config import Settings
from eqserve.service.metrics import LATENCY_BUCKETS
from tests.live_server import free_port, live_server, wait_ready

ITERS = 200
"""Every request runs exactly this many iterations (tol 0)."""


def need(program: str) -> str:
    """The program's path; fail under CI=true (CI installs it), else skip with the reason."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not installed (./scripts/setup.sh --test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextmanager
def run_prometheus(config: Path, workdir: Path) -> Iterator[str]:
    """A real Prometheus with `config`, its data and log in `workdir`, on a free loopback port; yields
    its URL once it is ready."""
    binary = need("prometheus")
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    prom = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{prom}/-/ready", log, timeout=30)
        yield prom
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(eqserve URL, Prometheus URL), Prometheus scraping eqserve every 0.5 s."""
    need("prometheus")
    app = create_app(Settings(models=[]), {"reciprocal": Reciprocal()})
    with live_server(app) as url:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\n"
            "scrape_configs:\n  - job_name: eqserve\n    static_configs:\n"
            f"      - targets: ['{url.removeprefix('http://')}']\n"
        )
        with run_prometheus(config, tmp_path) as prom:
            yield url, prom


def query(prom: str, promql: str) -> float | None:
    """The single value of an instant query, or None when it has no sample."""
    body = httpx.get(f"{prom}/api/v1/query", params={"query": promql}).json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for(prom: str, promql: str, expected: float, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while query(prom, promql) != expected:
        assert time.monotonic() < deadline, f"{promql} never reached {expected}: {query(prom, promql)}"
        time.sleep(0.25)


def test_prometheus_sees_the_iterations_and_latencies_of_the_traffic(prometheus: tuple[str, str]) -> None:
    url, prom = prometheus
    wait_for(prom, 'eqserve_iterations_total{model="reciprocal"}', 0.0)
    body = {"model": "reciprocal", "input": {"x": [0.02]}, "budget": {"max_iters": ITERS, "tol": 0}}
    server_latencies = []
    with httpx.Client(base_url=url) as client:
        end = time.monotonic() + 4
        while time.monotonic() < end:
            r = client.post("/v1/solve", json=body).json()
            assert r["iterations"] == ITERS
            server_latencies.append((r["timing"]["queue_ms"] + r["timing"]["solve_ms"]) / 1e3)
    n = len(server_latencies)
    wait_for(prom, 'eqserve_iterations_total{model="reciprocal"}', float(n * ITERS))
    wait_for(prom, 'eqserve_requests_total{model="reciprocal",status="max_iters"}', float(n))

    window = 60
    rate = query(prom, f'rate(eqserve_iterations_total{{model="reciprocal"}}[{window}s])')
    assert rate is not None
    # rate() extrapolates to the window's edges a little; the traffic implies n*ITERS in the window
    assert 0.9 * n * ITERS <= rate * window <= 1.3 * n * ITERS

    p50_iters = query(
        prom, f"histogram_quantile(0.5, rate(eqserve_iterations_per_request_bucket[{window}s]))"
    )
    assert p50_iters is not None and 100 < p50_iters <= ITERS

    q = query(prom, f"histogram_quantile(0.5, rate(eqserve_request_latency_seconds_bucket[{window}s]))")
    median = statistics.median_low(server_latencies)
    i = bisect.bisect_left(LATENCY_BUCKETS, median)
    lower = LATENCY_BUCKETS[i - 1] if i > 0 else 0.0
    assert q is not None and lower <= q <= LATENCY_BUCKETS[i], (q, median)
