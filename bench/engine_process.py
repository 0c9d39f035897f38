"""Engine process overhead: the engine's time per batch step, 64 `deq-mlp` rows, in its own process
(`ProcessEngine`, jobs over the ZeroMQ channel) against the same engine in this process, both against
a bare torch loop of the same G-step and residual norms.

Each round solves 64 held-out inputs that never converge (tol < 0) for N iterations on each side: the
tick is the engine's own run seconds over its steps (observer events, which cross the channel), the
wall time is submit to the last answer. Rounds alternate bare, in-process and engine process; each
side keeps its best round. One torch thread. A table, then one JSON line of ratios.

    .venv/bin/python bench/engine_process.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from engine_overhead import NEVER, THREADS, Log, bare_s
from safetensors.torch import load_file

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob
from eqserve.engine.supervisor import ProcessEngine
from eqserve.models.base import Ctx, ImplicitModel
from eqserve.models.deq_mlp.model import HELDOUT_FILE
from eqserve.models.registry import load_model, resolve
from eqserve.models.shipped import WEIGHTS_DIR
from eqserve.service.config import Settings
from eqserve.service.engines import SourceEngine

ROWS = 64
GOAL = 1.05
"""Engine process tick over in-process tick, at most."""


def round_s(
    engine: Engine | ProcessEngine, log: Log, model: ImplicitModel, ctxs: list[Ctx], n: int
) -> tuple[float, float]:
    """(tick seconds per step, wall seconds per step) of one round of len(ctxs) rows of n iterations."""
    seconds, steps = log.seconds, log.steps
    start = time.perf_counter()
    jobs = [SolveJob(id=f"r{i}", ctx=c, y0=model.init(c), max_iters=n, tol=NEVER) for i, c in enumerate(ctxs)]
    futures = [engine.submit(job) for job in jobs]
    for f in futures:
        assert f.result(600).iterations == n
    wall = time.perf_counter() - start
    return (log.seconds - seconds) / (log.steps - steps), wall / n


def main() -> int:
    """Alternate the three sides; print the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 rounds of 200 iterations")
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    rounds, n = (3, 200) if args.quick else (7, 500)
    mlp = load_model("deq-mlp")
    x = load_file(str(WEIGHTS_DIR / HELDOUT_FILE))["x"][:ROWS]
    ctxs = [mlp.encode(mlp.Input(x=row.tolist())) for row in x]
    settings = Settings(models=[], max_batch_rows=ROWS, torch_threads=THREADS)
    local = Engine(mlp, max_batch_rows=ROWS, torch_threads=THREADS)
    remote = ProcessEngine("deq-mlp", SourceEngine(resolve("deq-mlp"), settings), max_queue=256)
    logs = {"in-process": Log(), "process": Log()}
    local.observer, remote.observer = logs["in-process"], logs["process"]
    local.start()
    remote.start()
    remote.wait_started()
    bctx = mlp.collate(ctxs)
    y0 = torch.cat([mlp.init(c).reshape(1, -1) for c in ctxs])
    tick: dict[str, list[float]] = {"in-process": [], "process": []}
    wall: dict[str, list[float]] = {"in-process": [], "process": []}
    bare: list[float] = []
    try:
        for side, engine in (("in-process", local), ("process", remote)):  # warm-up
            round_s(engine, logs[side], mlp, ctxs, 20)
        for _ in range(rounds):
            bare.append(bare_s(mlp, bctx, y0, n) * 1e6)
            for side, engine in (("in-process", local), ("process", remote)):
                t, w = round_s(engine, logs[side], mlp, ctxs, n)
                tick[side].append(t * 1e6)
                wall[side].append(w * 1e6)
    finally:
        local.stop()
        remote.stop()
    best = {side: min(v) for side, v in tick.items()}
    best_wall = {side: min(v) for side, v in wall.items()}
    ratio = best["process"] / best["in-process"]
    print(f"64 deq-mlp rows, {rounds} rounds of {n} iterations, best per side; {os.cpu_count()} CPUs")
    print(f"{'side':<12}{'tick µs':>9}{'/ bare':>8}{'wall µs/step':>14}")
    print(f"{'bare':<12}{min(bare):>9.1f}{1.0:>8.2f}{'':>14}")
    for side in tick:
        print(f"{side:<12}{best[side]:>9.1f}{best[side] / min(bare):>8.2f}{best_wall[side]:>14.1f}")
    print(f"engine process / in-process tick: {ratio:.3f} (goal ≤ {GOAL})")
    report = {
        "bench": "engine_process",
        "ratio_tick_process_vs_in_process": round(ratio, 3),
        "ratio_wall_process_vs_in_process": round(best_wall["process"] / best_wall["in-process"], 3),
        "ratio_tick_vs_bare": {side: round(best[side] / min(bare), 3) for side in best},
        "tick_us": {side: round(v, 1) for side, v in best.items()},
        "wall_us_per_step": {side: round(v, 1) for side, v in best_wall.items()},
        "bare_us": round(min(bare), 1),
        "goal_met": ratio <= GOAL,
        "rounds": rounds,
        "iterations": n,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
