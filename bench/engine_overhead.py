"""Engine overhead: the engine's real tick on 64 active `deq-mlp` rows against the bare torch G-step.

An Engine (torch backend, max_batch_rows=64) serves 64 held-out inputs that never converge
(tol < 0, a budget no run reaches), all submitted before the worker starts so they share every tick;
an observer reads each tick's own measured seconds. The bare side times `model.step(y, ctx)` on a
(64, 256) batch with the same collated ctx in a perf_counter loop. Rounds alternate the two; each
side keeps its best round (mean per tick / per step). Then a breakdown of the tick's torch pieces on
the same tensors, and, where the ratio is above the goal (or with --profile), a cProfile of the
engine's worker thread. One torch thread (stated in the output). Table, then with --json one line.

    .venv/bin/python bench/engine_overhead.py [--quick] [--json] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import load_file

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob
from eqserve.engine.observer import NullObserver
from eqserve.kernels.reference import Stop, decide, residuals
from eqserve.models.base import Ctx, ImplicitModel
from eqserve.models.deq_mlp.model import HELDOUT_FILE
from eqserve.models.registry import load_model
from eqserve.models.shipped import WEIGHTS_DIR
from eqserve.solvers import SolverState

ROWS = 64
GOAL = 1.3
"""ratio_tick_vs_bare at most this."""
THREADS = 1
NEVER = -1.0
"""A tolerance no residual meets, so every row stays active for the whole run."""


class TickLog(NullObserver):
    """Keeps each tick's measured seconds, row count and end time; sets `done` after `target` ticks."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.seconds: list[float] = []
        self.rows: list[int] = []
        self.ends: list[float] = []
        self.worker_threads = 0
        self.done = threading.Event()

    def tick(self, seconds: float, rows: int) -> None:
        """Record one tick."""
        if not self.seconds:
            self.worker_threads = torch.get_num_threads()
        self.seconds.append(seconds)
        self.rows.append(rows)
        self.ends.append(time.perf_counter())
        if len(self.seconds) >= self.target:
            self.done.set()


class ProfiledEngine(Engine):
    """The same engine with cProfile on its worker thread."""

    profile: cProfile.Profile

    def _run(self) -> None:
        self.profile = cProfile.Profile()
        self.profile.enable()
        try:
            super()._run()
        finally:
            self.profile.disable()


def contexts(model: ImplicitModel) -> list[Ctx]:
    """One encoded context per held-out input, for the first ROWS inputs."""
    x = load_file(str(WEIGHTS_DIR / HELDOUT_FILE))["x"][:ROWS]
    return [model.encode(model.Input(x=row.tolist())) for row in x]


def serve(
    model: ImplicitModel, ctxs: list[Ctx], ticks: int, engine_cls: type[Engine] = Engine
) -> tuple[TickLog, Engine]:
    """Run the engine on never-converging jobs for `ticks` ticks; its observer's log and the engine."""
    engine = engine_cls(model, max_batch_rows=ROWS)
    log = TickLog(ticks)
    engine.observer = log
    for i, ctx in enumerate(ctxs):
        engine.submit(SolveJob(id=str(i), ctx=ctx, y0=model.init(ctx), max_iters=10**9, tol=NEVER))
    engine.start()
    finished = log.done.wait(timeout=120)
    engine.stop()
    if not finished:
        raise RuntimeError(f"the engine ran {len(log.seconds)} of {ticks} ticks in 120 s")
    return log, engine


def per_call_s(fn: Callable[[], object], reps: int, blocks: int = 5) -> float:
    """Seconds per call of fn: the best of `blocks` means over `reps` calls (after a warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def bare_step_s(model: ImplicitModel, bctx: Ctx, y0: torch.Tensor, reps: int) -> float:
    """Mean seconds per bare G-step, iterating y ← G(y) on the batch."""
    y = y0
    with torch.inference_mode():
        y = model.step(y, bctx)
        start = time.perf_counter()
        for _ in range(reps):
            y = model.step(y, bctx)
        return (time.perf_counter() - start) / reps


def breakdown(model: ImplicitModel, bctx: Ctx, y: torch.Tensor, reps: int) -> dict[str, float]:
    """µs per call of the torch pieces of one engine tick (torch backend, Picard), on the same tensors."""
    b = y.shape[0]
    solver = SolverState.new([1.0] * b, [0] * b, y)
    iters = torch.ones(b, dtype=torch.long)
    max_iters = torch.full((b,), 10**9, dtype=torch.long)
    tol = torch.full((b,), NEVER, dtype=torch.float64)
    rel_mode = torch.zeros(b, dtype=torch.bool)
    first = torch.ones(b, dtype=torch.float64)
    with torch.inference_mode():
        gy = model.step(y, bctx)
        abs_res, rel_res = residuals(y, gy)
        y_next = solver.update(y, gy)
        code = decide(abs_res, rel_res, y_next, first, iters, max_iters, tol, rel_mode)

        def bookkeeping() -> object:
            it = iters + 1
            fr = torch.where(it == 1, abs_res.double(), first)
            return decide(abs_res, rel_res, y_next, fr, it, max_iters, tol, rel_mode)

        pieces: dict[str, Callable[[], object]] = {
            "G-step (model.step)": lambda: model.step(y, bctx),
            "residuals": lambda: residuals(y, gy),
            "solver.update (Picard)": lambda: solver.update(y, gy),
            "iters, first_res, decide": bookkeeping,
            "read-back (stack, tolist)": lambda: torch.stack(
                [code.double(), abs_res.double(), rel_res.double()]
            ).tolist(),
        }
        return {k: per_call_s(f, reps) * 1e6 for k, f in pieces.items()}


def details(y: torch.Tensor, reps: int) -> dict[str, float]:
    """µs per call of the costliest small items found in the tick, and a cheaper equivalent."""
    codes = [float(Stop.RUNNING)] * y.shape[0]
    rows, n = range(y.shape[0]), y.shape[1]
    with torch.inference_mode():
        items: dict[str, Callable[[], object]] = {
            "decide's isfinite(y_next).all(1)": lambda: torch.isfinite(y).all(1),
            "  vs y_next.sum(1).isfinite()": lambda: y.sum(1).isfinite(),
            f"loop's {len(codes)}× y_next[i : i + 1, :size]": lambda: [y[i : i + 1, :n] for i in rows],
            f"loop's {len(codes)}× Stop(int(code))": lambda: [Stop(int(c)) for c in codes],
        }
        return {k: per_call_s(f, reps) * 1e6 for k, f in items.items()}


def profile_tick(model: ImplicitModel, ctxs: list[Ctx], ticks: int, top: int = 14) -> list[dict]:
    """cProfile of the worker thread over `ticks` ticks: the top functions by own time, µs per tick."""
    log, engine = serve(model, ctxs, ticks, ProfiledEngine)
    assert isinstance(engine, ProfiledEngine)
    stats = pstats.Stats(engine.profile)
    n = len(log.seconds)
    rows = []
    for (file, line, fn), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}" if line else file
        rows.append(
            {
                "function": f"{fn} ({where})",
                "calls_per_tick": round(ncalls / n, 1),
                "own_us_per_tick": round(tottime / n * 1e6, 1),
                "cum_us_per_tick": round(cumtime / n * 1e6, 1),
            }
        )
    rows.sort(key=lambda r: -r["own_us_per_tick"])
    return rows[:top]


SUGGESTIONS = {
    "per-row Python loop and the rest": (
        "the host loop visits every row every tick and slices y_next[i : i + 1, :size] for each "
        "(a tensor view per row, used only by hooks and finished rows), builds Stop(int(code)) and "
        "reads the deadline and size properties; slice only where a hook or a finished row needs it, "
        "and visit only the rows whose code is not RUNNING or that have a hook, trace or deadline due "
        "(one nonzero() on the codes)"
    ),
    "iters, first_res, decide": (
        "about half of decide is isfinite(y_next).all(1) over the whole (64, 256) state; a row "
        "reduction first (y_next.sum(1).isfinite(), flagged rows checked exactly) costs a fifth; the "
        "rest is a dozen tiny ops on (64,) tensors that one fused function (torch.compile, or the "
        "dense_picard_step path on CPU too) would merge"
    ),
    "residuals": "take the residual norms in the same pass as the step (one fused pass over G(y) - y)",
    "solver.update (Picard)": "skip the lerp when every row's β is 1 (y_next = G(y))",
    "read-back (stack, tolist)": "read back the codes, and residuals only for rows that stop or stream",
}


def main() -> int:
    """Alternate engine and bare rounds, then break the tick down; print the table (and JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5 rounds of 500 ticks (well under 90 s)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--profile", action="store_true", help="cProfile the worker even when the goal is met")
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    rounds, ticks, warm = (5, 500, 50) if args.quick else (9, 2000, 100)
    wall0 = time.perf_counter()
    model = load_model("deq-mlp")
    ctxs = contexts(model)
    bctx = model.collate(ctxs)
    y0 = torch.zeros(ROWS, model.state_size(ctxs[0]))

    tick_us, wall_tick_us, bare_us, worker_threads = [], [], [], 0
    for _ in range(rounds):
        bare_us.append(bare_step_s(model, bctx, y0, ticks) * 1e6)
        log, _ = serve(model, ctxs, warm + ticks)
        if set(log.rows[: warm + ticks]) != {ROWS}:
            raise RuntimeError(f"expected {ROWS} active rows every tick, saw {sorted(set(log.rows))}")
        measured = log.seconds[warm : warm + ticks]
        ends = log.ends[warm : warm + ticks]
        tick_us.append(statistics.fmean(measured) * 1e6)
        wall_tick_us.append((ends[-1] - ends[0]) / (len(ends) - 1) * 1e6)
        worker_threads = log.worker_threads

    best_tick, best_bare, best_wall = min(tick_us), min(bare_us), min(wall_tick_us)
    ratio = best_tick / best_bare
    parts = breakdown(model, bctx, y0, ticks)
    parts["per-row Python loop and the rest"] = max(best_tick - sum(parts.values()), 0.0)
    items = details(y0, ticks)
    over = ratio > GOAL
    profile = profile_tick(model, ctxs, warm + ticks) if over or args.profile else None
    costly = sorted(
        (k for k in parts if k in SUGGESTIONS and parts[k] >= 0.05 * best_tick), key=lambda k: -parts[k]
    )

    print(
        f"engine tick vs bare G-step, deq-mlp, {ROWS} active rows × {y0.shape[1]}, fp32, torch backend; "
        f"torch threads {THREADS} (worker thread sees {worker_threads}); "
        f"{rounds} rounds × {ticks} ticks, best round per side; {os.cpu_count()} CPUs"
    )
    print(f"{'':34}{'µs/tick':>10}  rounds (µs)")
    print(f"{'bare model.step(y, ctx)':34}{best_bare:>10.1f}  " + " ".join(f"{v:.1f}" for v in bare_us))
    print(
        f"{'engine tick (observer seconds)':34}{best_tick:>10.1f}  " + " ".join(f"{v:.1f}" for v in tick_us)
    )
    print(
        f"{'engine tick (wall, tick to tick)':34}{best_wall:>10.1f}  "
        + " ".join(f"{v:.1f}" for v in wall_tick_us)
    )
    print(f"ratio_tick_vs_bare = {ratio:.2f} (goal ≤ {GOAL}: {'met' if not over else 'NOT met'})")
    print(
        f"\nwhere an engine tick's {best_tick:.1f} µs go (pieces timed alone on the same tensors, best of 5):"
    )
    for k, v in parts.items():
        print(f"  {k:34}{v:>8.1f} µs  {v / best_tick:>5.0%}")
    print("items inside those pieces, timed alone:")
    for k, v in items.items():
        print(f"  {k:34}{v:>8.1f} µs")
    if profile is not None:
        print("\ncProfile of the worker thread (µs per tick, inflated by the profiler):")
        print(f"  {'own':>7} {'cum':>7} {'calls':>6}  function")
        for r in profile:
            print(
                f"  {r['own_us_per_tick']:>7.1f} {r['cum_us_per_tick']:>7.1f} {r['calls_per_tick']:>6.1f}"
                f"  {r['function']}"
            )
    if over:
        print("\nsuggestions, largest overhead first (for service/ and kernels/, not done here):")
        for k in costly:
            print(f"  {k} ({parts[k]:.0f} µs): {SUGGESTIONS[k]}")
    seconds = time.perf_counter() - wall0
    print(f"\n{seconds:.1f} s")
    if args.json:
        report = {
            "bench": "engine_overhead",
            "model": "deq-mlp",
            "rows": ROWS,
            "state": y0.shape[1],
            "torch_threads": THREADS,
            "worker_threads": worker_threads,
            "rounds": rounds,
            "ticks_per_round": ticks,
            "tick_us": round(best_tick, 1),
            "wall_tick_us": round(best_wall, 1),
            "bare_step_us": round(best_bare, 1),
            "ratio_tick_vs_bare": round(ratio, 3),
            "ratio_wall_tick_vs_bare": round(best_wall / best_bare, 3),
            "goal": {"ratio_tick_vs_bare": GOAL, "met": not over},
            "breakdown_us": {k: round(v, 1) for k, v in parts.items()},
            "items_us": {k.strip(): round(v, 1) for k, v in items.items()},
            "profile": profile,
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
