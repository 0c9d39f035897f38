"""`eqserve serve --api-workers 2`: two front processes share the port and the engine process; every
front's /metrics counts the solves of both; a killed engine process is followed by both fronts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.live_server import free_port, wait_ready

BOUND_S = 60.0
"""Longest any wait lasts (a hang guard)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`eqserve serve reciprocal --api-workers 2` on a free port, its metrics folder given."""
    port = free_port()
    tmp = tmp_path_factory.mktemp("api-workers")
    log, shared = tmp / "server.log", tmp / "metrics"
    shared.mkdir()
    eqserve = str(Path(sys.executable).parent / "eqserve")
    args = [
        eqserve,
        "serve",
        "reciprocal",
        "--port",
        str(port),
        "--api-workers",
        "2",
        "--log-level",
        "warning",
    ]
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{url}/readyz", log)
        assert until(lambda: len(fronts(shared)) == 2), log.read_text()
        yield url, proc, shared
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(BOUND_S)
        except subprocess.TimeoutExpired:
            proc.kill()


def until(check: Callable[[], bool]) -> bool:
    """Whether `check()` comes true within BOUND_S."""
    deadline = time.monotonic() + BOUND_S
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def fronts(shared: Path) -> dict[int, float]:
    """Each front process (those that write metrics) and the reciprocal solves it counted."""
    out = {}
    for path in shared.glob("counter_*.db"):
        samples = [s for m in MultiProcessCollector.merge([str(path)]) for s in m.samples]
        out[int(path.stem.split("_")[1])] = sum(
            s.value
            for s in samples
            if s.name == "eqserve_requests_total" and s.labels["model"] == "reciprocal"
        )
    return out


def solved(url: str) -> float:
    """eqserve_requests_total of reciprocal, all statuses, as one scrape shows it."""
    text = httpx.get(f"{url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "eqserve_requests_total" and s.labels.get("model") == "reciprocal"
    )


def engine_pids(main: int, shared: Path) -> set[int]:
    """The engine processes: the main front's spawned children that are no fronts."""
    spawned = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == main and b"spawn_main" in cmdline:
            spawned.append(int(stat.parent.name))
    return set(spawned) - set(fronts(shared))


def solve_many(url: str, n: int) -> None:
    for i in range(n):
        with httpx.Client() as c:  # each on a new connection: the kernel picks a front for it
            r = c.post(f"{url}/v1/solve", json={"model": "reciprocal", "input": {"x": [0.5 + i / 100]}})
            assert r.status_code == 200 and r.json()["status"] == "converged", (r.status_code, r.text)


def test_two_fronts_share_the_engine_and_the_metrics(server: tuple[str, subprocess.Popen, Path]) -> None:
    url, proc, shared = server
    before = solved(url)
    solve_many(url, 40)
    counts = fronts(shared)
    assert proc.pid in counts and all(n > 0 for n in counts.values())  # both fronts solved some
    for _ in range(4):  # whichever front answers the scrape counts both fronts' solves
        assert solved(url) == before + 40


def test_both_fronts_follow_a_restarted_engine(server: tuple[str, subprocess.Popen, Path]) -> None:
    url, proc, shared = server
    (pid,) = engine_pids(proc.pid, shared)
    os.kill(pid, signal.SIGKILL)
    assert until(lambda: bool(engine_pids(proc.pid, shared) - {pid}))
    assert until(lambda: all(httpx.get(f"{url}/readyz").status_code == 200 for _ in range(10)))
    solve_many(url, 20)
