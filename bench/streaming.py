"""Streaming benchmark: events/s to one WebSocket client, and what streaming costs the engine.

For each model, against a real `eqserve serve`, the same solve (tol 0, a fixed budget) runs three
ways: unstreamed (POST /v1/solve), streamed with every=1 to a client that reads as fast as it can,
and streamed to a client that reads nothing for 5 s (a deadline of 5 s, against the same deadline
unstreamed). The engine's tick time comes from the server's own /metrics (eqserve_tick_seconds),
so the ratios compare like with like in one run. The server sends each stream at most
`service.streams.RATE` iterates per second, so a solve faster than that drops iterates (counted);
the non-reading client is sent events until its connection's buffers fill (the server's send
buffer is bounded by `--send-buffer`), then its solve is muted (`stalled_events` says how many it
received). The client is bench/ws_load.py, a lean reader: the websockets library's client took
~11 µs of the two cores' CPU per event.

Each model is measured on a server whose engines run in engine processes (`--engine-process on`, the
default) and on one whose engines run in the HTTP process (`off`, the baseline).

    .venv/bin/python bench/streaming.py [--quick] [--models reciprocal,deq-mlp] [--engine-process on,off]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from serving import Server
from ws_load import stream_solve

STALL_S = 5.0
"""How long the non-reading client reads nothing."""

INPUTS = {"reciprocal": {"x": [1e-6]}}
"""Inputs whose tol-0 solve runs its whole budget; other models use their example input."""


def tick_totals(url: str, model: str) -> tuple[float, float]:
    """(sum of tick seconds, number of ticks) of `model` so far."""
    total = count = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.labels.get("model") != model:
                continue
            if s.name == "eqserve_tick_seconds_sum":
                total = s.value
            elif s.name == "eqserve_tick_seconds_count":
                count = s.value
    return total, count


class TickMeter:
    """Mean engine tick over a block of code, read from /metrics before and after."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.mean_us = float("nan")

    def __enter__(self) -> TickMeter:
        self.start = tick_totals(self.url, self.model)
        return self

    def __exit__(self, *exc: object) -> None:
        total, count = tick_totals(self.url, self.model)
        self.mean_us = (total - self.start[0]) / max(count - self.start[1], 1) * 1e6


def body(model: str, inp: dict[str, Any], budget: dict[str, Any], every: int = 1) -> dict[str, Any]:
    return {"model": model, "input": inp, "budget": budget, "return": {"every": every}}


def plain(url: str, req: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Unstreamed solve; (answer, mean tick µs)."""
    with TickMeter(url, req["model"]) as meter:
        answer = httpx.post(f"{url}/v1/solve", json=req, timeout=600).json()
    return answer, meter.mean_us


def streamed(url: str, req: dict[str, Any], stall_s: float = 0.0) -> tuple[dict[str, Any], int, float, float]:
    """Streamed solve read at full speed after `stall_s`; (result, events, events/s, mean tick µs)."""
    with TickMeter(url, req["model"]) as meter:
        run = stream_solve(url, req, stall_s)
    if run.final["type"] != "result":
        raise RuntimeError(f"stream failed: {run.final}")
    first, last = run.first, run.last
    rate = (run.events - 1) / (last - first) if first and last and last > first else float("nan")
    return run.final, run.events, rate, meter.mean_us


def measure(url: str, model: str, iters: int, repeat: int) -> dict[str, Any]:
    """The three ways for one model; unstreamed and fast-reader solves alternate `repeat` times and
    their median ticks are compared (one pair moves by several per cent from run to run)."""
    inp = INPUTS.get(model) or httpx.get(f"{url}/v1/models/{model}").json()["example_input"]
    budget = {"max_iters": iters, "tol": 0}
    plain(url, body(model, inp, {"max_iters": 50, "tol": 0}))  # warm-up
    base_ticks, ticks, rates = [], [], []
    for _ in range(repeat):
        base, base_tick = plain(url, body(model, inp, budget))
        result, events, rate, tick = streamed(url, body(model, inp, budget))
        base_ticks.append(base_tick)
        ticks.append(tick)
        rates.append(rate)
    base_tick, tick, rate = (statistics.median(v) for v in (base_ticks, ticks, rates))
    stall_budget = {"max_iters": 10**9, "tol": 0, "timeout_s": STALL_S}
    stall_base, stall_base_tick = plain(url, body(model, inp, stall_budget))
    stalled, stalled_events, _, stall_tick = streamed(url, body(model, inp, stall_budget), stall_s=STALL_S)
    assert result["iterations"] == base["iterations"], (result["iterations"], base["iterations"])
    return {
        "model": model,
        "iterations": base["iterations"],
        "events": events,
        "dropped": result["dropped"],
        "events_per_s": rate,
        "tick_us_plain": base_tick,
        "tick_us_streamed": tick,
        "tick_slowdown_streamed": tick / base_tick - 1,
        "tick_slowdown_streamed_each": [t / b - 1 for t, b in zip(ticks, base_ticks, strict=True)],
        "per_iter_us_plain": base["timing"]["per_iter_us"],
        "per_iter_us_streamed": result["timing"]["per_iter_us"],
        "stalled_dropped": stalled["dropped"],
        "stalled_events": stalled_events,
        "tick_us_stall_plain": stall_base_tick,
        "tick_us_stalled": stall_tick,
        "tick_slowdown_stalled": stall_tick / stall_base_tick - 1,
        "iterations_in_5s_plain": stall_base["iterations"],
        "iterations_in_5s_stalled": stalled["iterations"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="reciprocal,deq-mlp")
    p.add_argument("--iters", type=int, default=20_000, help="budget of the streamed solve")
    p.add_argument("--repeat", type=int, default=None, help="unstreamed/streamed pairs (default 5, quick 3)")
    p.add_argument("--quick", action="store_true", help="a 5,000-iteration budget")
    p.add_argument("--engine-process", default="on,off", help="the servers measured, one per value")
    args = p.parse_args()
    iters = 5_000 if args.quick else args.iters
    repeat = args.repeat or (3 if args.quick else 5)
    models = [m for m in args.models.split(",") if m]
    flags = ["--models", ",".join(models), "--max-iters-cap", str(10**9), "--stream-buffer", "64"]
    rows = []
    for mode in args.engine_process.split(","):
        with Server([*flags, "--engine-process", mode]) as server:
            server.wait_ready()
            rows += [{"engine_process": mode} | measure(server.url, m, iters, repeat) for m in models]
    print(
        f"{'engine':<7} {'model':<11} {'iters':>7} {'events/s':>9} {'dropped':>7} {'tick µs':>8} "
        f"{'streamed':>9} {'slowdown':>8} {'stalled':>8} {'slowdown':>8} {'dropped':>8}"
    )
    for r in rows:
        print(
            f"{r['engine_process']:<7} {r['model']:<11} {r['iterations']:>7} {r['events_per_s']:>9,.0f} "
            f"{r['dropped']:>7} {r['tick_us_plain']:>8.1f} {r['tick_us_streamed']:>9.1f} "
            f"{r['tick_slowdown_streamed']:>+8.1%} "
            f"{r['tick_us_stalled']:>8.1f} {r['tick_slowdown_stalled']:>+8.1%} {r['stalled_dropped']:>8}"
        )
    print(
        json.dumps(
            {
                "bench": "streaming",
                "machine": {"cpus": os.cpu_count(), "cpu": platform.processor()},
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
