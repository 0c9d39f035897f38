"""Fault isolation of engine processes: `kill -9` of one model's engine process under load.

One `eqserve serve reciprocal deq-mlp` (engine processes on); C closed-loop clients per model send
solves for the whole run. The run has three phases of equal length: before, during (the `reciprocal`
engine process is killed at its start) and after. Measured: how long after the kill every
`reciprocal` request in flight was answered, and how they were answered; how long until the model was
ready again (`/v2/models/reciprocal/ready`, polled every 10 ms); `deq-mlp`'s p99 latency and
requests/s in each phase (the other model should not notice: ratio of the during phase to the
before phase). A table, then one JSON line.

    .venv/bin/python bench/engine_kill.py [--phase-s 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from http_load import Connection, HttpError
from serving import Server, asyncio_run, cpu_model

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sent:
    """One request: when it was sent and answered, its status code."""

    model: str
    start: float
    end: float
    code: int


@dataclass
class Run:
    """Everything the clients saw."""

    sent: list[Sent] = field(default_factory=list)
    killed_at: float = math.nan
    ready_again_at: float = math.nan


def engine_pid(server_pid: int, model_count: int) -> dict[str, int]:
    """The server's engine processes, by the order they were started (models in the order given)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == server_pid and b"spawn_main" in cmdline:
            children.append((int(fields[19]), int(stat.parent.name)))  # start time, pid
    pids = [pid for _, pid in sorted(children)]
    return dict(zip(("reciprocal", "deq-mlp"), pids[:model_count], strict=True))


def body(model: str, rng: random.Random) -> bytes:
    if model == "reciprocal":
        inp = {"x": [rng.uniform(0.05, 1.95) for _ in range(4)], "eta": 0.05}  # ~ hundreds of steps
    else:
        inp = {"x": [rng.uniform(0.05, 1.0) for _ in range(4)]}
    return json.dumps({"model": model, "input": inp, "budget": {"tol": 1e-6}}).encode()


async def client(conn: Connection, model: str, until: float, run: Run, seed: int) -> None:
    rng = random.Random(seed)
    while time.perf_counter() < until:
        start = time.perf_counter()
        try:
            code = (await conn.post("/v1/solve", body(model, rng))).status
        except (HttpError, OSError):
            code = 0
        run.sent.append(Sent(model, start, time.perf_counter(), code))
        if code == 503:
            await asyncio.sleep(0.05)  # as a client honouring Retry-After would, sooner


async def killer(url: str, pid: int, at: float, run: Run) -> None:
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    run.killed_at = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    async with httpx.AsyncClient(base_url=url) as http:
        await asyncio.sleep(0.05)
        while True:
            if (await http.get("/v2/models/reciprocal/ready")).status_code == 200:
                run.ready_again_at = time.perf_counter()
                return
            await asyncio.sleep(0.01)


def p99_ms(xs: list[Sent]) -> float:
    lat = sorted(s.end - s.start for s in xs)
    return 1e3 * lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] if lat else math.nan


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase-s", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=8, help="clients per model")
    args = p.parse_args()
    flags = ["--models", "reciprocal,deq-mlp", "--max-queue", "1000"]
    run = Run()
    with Server(flags) as server:
        server.wait_ready()
        pids = engine_pid(server.proc.pid, 2)

        async def go() -> None:
            t0 = time.perf_counter()
            until = t0 + 3 * args.phase_s
            conns = {m: [Connection("127.0.0.1", server.port) for _ in range(args.concurrency)] for m in pids}
            tasks = [
                client(c, m, until, run, seed=hash((m, i)) & 0xFFFF)
                for m, cs in conns.items()
                for i, c in enumerate(cs)
            ]
            tasks.append(killer(server.url, pids["reciprocal"], t0 + args.phase_s, run))
            await asyncio.gather(*tasks)
            for cs in conns.values():
                for c in cs:
                    await c.close()

        asyncio_run(go())
    kill = run.killed_at
    phases = {"before": (kill - args.phase_s, kill), "during": (kill, kill + args.phase_s),
              "after": (kill + args.phase_s, kill + 2 * args.phase_s)}  # fmt: skip
    in_flight = [s for s in run.sent if s.model == "reciprocal" and s.start < kill <= s.end]
    answered_s = max((s.end - kill for s in in_flight), default=math.nan)
    codes: dict[int, int] = {}
    for s in in_flight:
        codes[s.code] = codes.get(s.code, 0) + 1
    other: dict[str, dict[str, float]] = {}
    for name, (a, b) in phases.items():
        done = [s for s in run.sent if s.model == "deq-mlp" and a <= s.end < b]
        other[name] = {"p99_ms": round(p99_ms(done), 2), "rps": round(len(done) / (b - a), 1),
                       "errors": sum(s.code != 200 for s in done)}  # fmt: skip
    print(
        f"kill -9 of reciprocal's engine process at t = {args.phase_s:.0f} s; "
        f"{args.concurrency} clients per model"
    )
    print(
        f"  its {len(in_flight)} requests in flight answered within {answered_s * 1e3:.0f} ms: codes {codes}"
    )
    print(f"  ready again {(run.ready_again_at - kill) * 1e3:.0f} ms after the kill")
    print(f"{'deq-mlp':<8}{'p99 ms':>9}{'req/s':>8}{'errors':>8}")
    for name, o in other.items():
        print(f"{name:<8}{o['p99_ms']:>9.1f}{o['rps']:>8.1f}{o['errors']:>8}")
    report = {
        "bench": "engine_kill",
        "in_flight": len(in_flight),
        "in_flight_codes": codes,
        "answered_within_s": round(answered_s, 3),
        "ready_again_s": round(run.ready_again_at - kill, 3),
        "other_model": other,
        "ratio_other_p99_during_vs_before": round(other["during"]["p99_ms"] / other["before"]["p99_ms"], 3),
        "ratio_other_rps_during_vs_before": round(other["during"]["rps"] / other["before"]["rps"], 3),
        "phase_s": args.phase_s,
        "concurrency": args.concurrency,
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model()},
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
