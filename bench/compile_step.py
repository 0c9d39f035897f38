"""Compiled vs eager `step` of every built-in model, at 1 row and at 64 rows, and the one-time compile.

For each model: one row from its example input, iterated a few eager steps from y0 (a state the
solve would see), copied into batches of 1 and 64 rows collated as the engine collates them, under
inference mode as the engine steps. `kernels.compiled.compiled_step` compiles and warms the step at
load (its seconds are the compile cost: with --cold the inductor caches are off, as on a fresh
machine; without, a warm cache may serve it). Then rounds alternate eager and compiled calls on the
same tensors, each side keeping its best round's mean per call. One torch thread. Prints a table,
then one JSON line: ratio_<model>_<rows> = compiled / eager time per step, compile_s_<model>.

    .venv/bin/python bench/compile_step.py [--cold] [--rounds R] [--models a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

if "--cold" in sys.argv:
    os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"  # read when inductor is imported

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from eqserve.kernels.compiled import batch_of, compiled_step, example_row
from eqserve.models.registry import load_model

MODELS = ("reciprocal", "deq-mlp", "ns-fno", "deblur", "lp-gnn")
ROWS = (1, 64)
THREADS = 1
BLOCK_S = 0.05
"""Seconds one timed block of calls lasts, about (its call count is sized from a first call)."""
SETTLE_STEPS = 3
"""Eager steps from y0 before timing."""


def per_call_s(fn: Callable[[], object], reps: int) -> float:
    """Mean seconds per call over `reps` calls."""
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def measure(name: str, rounds: int) -> dict:
    """Compile cost and best-round eager and compiled seconds per step, per batch size."""
    model = load_model(name)
    y_row, ctx = example_row(model)
    with torch.inference_mode():
        one = model.collate([ctx])
        for _ in range(SETTLE_STEPS):
            y_row = model.step(y_row, one)
    start = time.perf_counter()
    step = compiled_step(model, max(ROWS), [(y_row, ctx)])
    load_s = time.perf_counter() - start
    out: dict = {"model": name, "compile_s": load_s, "graphs": step.graphs, "error": step.error, "rows": {}}
    with torch.inference_mode():
        batches = {r: batch_of(model, y_row, ctx, r) for r in ROWS}
        sides = {
            r: {"eager": (lambda y=y, c=c: model.step(y, c)), "compiled": (lambda y=y, c=c: step(y, c))}
            for r, (y, c) in batches.items()
        }
        reps = {}
        for r, fns in sides.items():
            for fn in fns.values():
                fn()  # first calls out of the timing
            reps[r] = max(3, int(BLOCK_S / max(per_call_s(fns["eager"], 1), 1e-7)))
        best = {r: {s: float("inf") for s in fns} for r, fns in sides.items()}
        for _ in range(rounds):
            for r, fns in sides.items():
                for side, fn in fns.items():
                    best[r][side] = min(best[r][side], per_call_s(fn, reps[r]))
    for r in ROWS:
        out["rows"][r] = {**best[r], "ratio": best[r]["compiled"] / best[r]["eager"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cold", action="store_true", help="inductor caches off: the compile cost from scratch"
    )
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per batch size")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(
        f"torch {torch.__version__}, {platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"inductor caches {'off' if args.cold else 'on'}, rounds {args.rounds}"
    )
    results, ratios = [], {}
    for name in args.models.split(","):
        try:
            results.append(measure(name, args.rounds))
        except Exception as exc:  # a model that does not load is reported, the others still run
            print(f"{name}: not measured: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    print(
        f"{'model':<11} {'rows':>4} {'eager us':>10} {'compiled us':>12} {'ratio':>6} {'compile s':>9} graphs"
    )
    for res in results:
        for r, t in res["rows"].items():
            print(
                f"{res['model']:<11} {r:>4} {t['eager'] * 1e6:>10.1f} {t['compiled'] * 1e6:>12.1f} "
                f"{t['ratio']:>6.2f} {res['compile_s']:>9.1f} {res['graphs']:>6}"
            )
            ratios[f"ratio_{res['model'].replace('-', '_')}_{r}"] = round(t["ratio"], 3)
        ratios[f"compile_s_{res['model'].replace('-', '_')}"] = round(res["compile_s"], 2)
        if res["error"]:
            print(f"{res['model']}: eager fallback: {res['error']}")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
