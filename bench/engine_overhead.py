"""Engine overhead: the engine's time per iteration against a bare torch loop of the same G-step and
residual norms, for one row alone and for 64 rows; and how long a newcomer waits for a row while a
long solve runs.

- 1 row (`reciprocal`, `deq-mlp`): one solve of N iterations that never converges (tol < 0), timed from
  submit to answer, per iteration; the bare side iterates y ← G(y) with `residuals(y, G(y))` in a
  perf_counter loop on the same context.
- 64 rows (`deq-mlp`): 64 held-out inputs submitted before the worker starts, so they share every
  step; the engine's time per batch step (its observer's run seconds over steps) against the bare loop
  on the collated (64, 256) batch.
- Admission wait: while one long `deq-mlp` solve runs, newcomers arrive one at a time at random
  moments; each one's wait from submit to admission (the observer's `admitted`), p99, against the goal
  max(1 ms, one G-step).

Rounds alternate engine and bare; each side keeps its best round. One torch thread. A table, then
with --json one line of ratios.

    .venv/bin/python bench/engine_overhead.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import load_file

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob
from eqserve.engine.observer import NullObserver
from eqserve.kernels.reference import residuals
from eqserve.models.base import Ctx, ImplicitModel
from eqserve.models.deq_mlp.model import HELDOUT_FILE
from eqserve.models.registry import load_model
from eqserve.models.shipped import WEIGHTS_DIR

ROWS = 64
THREADS = 1
NEVER = -1.0
"""A tolerance no residual meets: every row runs its whole budget."""
GOALS = {"ratio_1row_reciprocal": 1.5, "ratio_1row_deq_mlp": 1.2, "ratio_64rows_deq_mlp": 1.1}


class Log(NullObserver):
    """Run seconds and steps, and every admission wait."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0
        self.waits: list[float] = []
        self.done = threading.Event()
        self.target = 0

    def ran(self, seconds: float, steps: int, rows: int, row_steps: int) -> None:
        """Count the run."""
        self.seconds += seconds
        self.steps += steps
        if self.target and self.steps >= self.target:
            self.done.set()

    def admitted(self, job: SolveJob, wait_s: float) -> None:
        """Keep the wait."""
        self.waits.append(wait_s)


def bare_s(model: ImplicitModel, ctx: Ctx, y0: torch.Tensor, n: int) -> float:
    """Seconds per iteration of y ← G(y) with the residual norms, on the batch of `y0`."""
    y = y0
    with torch.inference_mode():
        for _ in range(10):
            g = model.step(y, ctx)
            residuals(y, g)
            y = g
        start = time.perf_counter()
        for _ in range(n):
            g = model.step(y, ctx)
            residuals(y, g)
            y = g
        return (time.perf_counter() - start) / n


def one_row_s(model: ImplicitModel, ctx: Ctx, n: int) -> float:
    """Seconds per iteration of one solve of n iterations through an engine, submit to answer."""
    engine = Engine(model, torch_threads=THREADS)
    engine.start()
    try:
        engine.submit(SolveJob(id="warm", ctx=ctx, y0=model.init(ctx), max_iters=50, tol=NEVER)).result(60)
        start = time.perf_counter()
        job = SolveJob(id="a", ctx=ctx, y0=model.init(ctx), max_iters=n, tol=NEVER)
        result = engine.submit(job).result(600)
        seconds = time.perf_counter() - start
    finally:
        engine.stop()
    assert result.iterations == n
    return seconds / n


def rows_step_s(model: ImplicitModel, ctxs: list[Ctx], steps: int) -> float:
    """Seconds per batch step of an engine running len(ctxs) never-converging rows together."""
    engine = Engine(model, max_batch_rows=len(ctxs), torch_threads=THREADS)
    log = Log()
    log.target = steps
    engine.observer = log
    for i, ctx in enumerate(ctxs):
        engine.submit(SolveJob(id=str(i), ctx=ctx, y0=model.init(ctx), max_iters=10**9, tol=NEVER))
    engine.start()
    try:
        if not log.done.wait(timeout=600):
            raise RuntimeError(f"the engine ran {log.steps} of {steps} steps in 600 s")
    finally:
        engine.stop()
    return log.seconds / log.steps


def admission_waits(model: ImplicitModel, ctx: Ctx, newcomers: int, step_s: float) -> list[float]:
    """Each newcomer's wait for a row while one long solve runs; newcomers arrive 0–20 steps apart."""
    engine = Engine(model, torch_threads=THREADS)
    log = Log()
    engine.observer = log
    engine.start()
    rng = random.Random(0)
    try:
        long = engine.submit(SolveJob(id="long", ctx=ctx, y0=model.init(ctx), max_iters=10**9, tol=NEVER))
        time.sleep(50 * step_s)
        for i in range(newcomers):
            time.sleep(rng.uniform(0, 20) * step_s)
            job = SolveJob(id=str(i), ctx=ctx, y0=model.init(ctx), max_iters=1, tol=NEVER)
            engine.submit(job).result(60)
        assert not long.done()
    finally:
        engine.stop()
    return log.waits[1:]  # the long solve's own admission is not a newcomer's


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def main() -> int:
    """Alternate engine and bare rounds; print the table (and JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 rounds, shorter solves")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    rounds, scale = (3, 1) if args.quick else (7, 3)
    wall0 = time.perf_counter()
    rec, mlp = load_model("reciprocal"), load_model("deq-mlp")
    x = load_file(str(WEIGHTS_DIR / HELDOUT_FILE))["x"][:ROWS]
    mlp_ctxs = [mlp.encode(mlp.Input(x=row.tolist())) for row in x]
    rec_ctx = rec.encode(rec.Input(**rec.example_input))
    cases = {
        "1row_reciprocal": (rec, [rec_ctx], 5000 * scale),
        "1row_deq_mlp": (mlp, mlp_ctxs[:1], 500 * scale),
        "64rows_deq_mlp": (mlp, mlp_ctxs, 100 * scale),
    }
    engine_us: dict[str, list[float]] = {k: [] for k in cases}
    bare_us: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, (model, ctxs, n) in cases.items():
            bctx = model.collate(ctxs)
            y0 = torch.cat([model.init(c).reshape(1, -1) for c in ctxs])
            bare_us[name].append(bare_s(model, bctx, y0, n) * 1e6)
            seconds = one_row_s(model, ctxs[0], n) if len(ctxs) == 1 else rows_step_s(model, ctxs, n)
            engine_us[name].append(seconds * 1e6)
    ratios = {f"ratio_{k}": min(engine_us[k]) / min(bare_us[k]) for k in cases}
    step_us = min(bare_us["1row_deq_mlp"])
    waits = admission_waits(mlp, mlp_ctxs[0], 100 if args.quick else 300, step_us / 1e6)
    wait_p99 = p99(waits) * 1e6
    wait_goal = max(1000.0, step_us)

    print(
        f"engine per iteration vs a bare loop of G-step + residual norms; torch threads {THREADS}; "
        f"{rounds} rounds, best per side; {os.cpu_count()} CPUs"
    )
    print(f"{'case':18}{'engine µs':>11}{'bare µs':>10}{'ratio':>8}{'goal':>7}  engine rounds / bare rounds")
    for k in cases:
        r = ratios[f"ratio_{k}"]
        goal = GOALS[f"ratio_{k}"]
        print(
            f"{k:18}{min(engine_us[k]):>11.1f}{min(bare_us[k]):>10.1f}{r:>8.2f}{goal:>7.2f}  "
            + " ".join(f"{v:.0f}" for v in engine_us[k]) + " / " + " ".join(f"{v:.0f}" for v in bare_us[k])
        )
    print(
        f"admission wait while a long deq-mlp solve runs: p99 {wait_p99:.0f} µs, median "
        f"{statistics.median(waits) * 1e6:.0f} µs over {len(waits)} newcomers "
        f"(goal ≤ max(1 ms, one G-step = {step_us:.0f} µs))"
    )
    seconds = time.perf_counter() - wall0
    print(f"{seconds:.1f} s")
    if args.json:
        report = {
            "bench": "engine_overhead",
            **{k: round(v, 3) for k, v in ratios.items()},
            "admission_wait_p99_us": round(wait_p99, 1),
            "admission_wait_goal_us": round(wait_goal, 1),
            "engine_us": {k: round(min(v), 1) for k, v in engine_us.items()},
            "bare_us": {k: round(min(v), 1) for k, v in bare_us.items()},
            "goals_met": {k: ratios[k] <= g for k, g in GOALS.items()} | {"admission": wait_p99 <= wait_goal},
            "torch_threads": THREADS,
            "rounds": rounds,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
            "seconds": round(seconds, 1),
        }
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
