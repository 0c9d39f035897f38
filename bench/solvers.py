"""Solver benchmark: eqserve's Picard, Anderson and Broyden, served by the Engine, against torchdeq's.

Same operators, same batch of 64 rows, same fp32 start y0 = 0, same absolute tolerances (1e-4, 1e-6)
on ‖G(y) − y‖₂ per row. Our side is what we serve: 64 SolveJobs submitted before the worker starts
(one batch), each row leaving the batch when it meets its tolerance, so a row's G-evaluations are its
`iterations`. torchdeq's `fixed_point_iter`, `anderson_solver` and `broyden_solver` run the whole batch
until the batch's worst row is under the tolerance, so every row pays the batch's G-calls (counted by
wrapping G). Their Anderson is the best, by G-evaluations, of a grid over its documented `m`, `lam`,
`tau`; their Broyden the best of its `LBFGS_thres` (None: every update kept, its default; or our
memory) and `ls` (line search, whose extra G-calls count). Ours keeps OUR_M updates per row.

Operators: `deq-mlp` (shipped weights, 64 held-out inputs), `contraction` G(y) = a ⊙ (y Mᵀ) + (1 − a) c
with M a random orthogonal 256 × 256 matrix and per-row a evenly spaced in [0.5, 0.99], and, in
the full run, `contraction-sym`, the same with M symmetric, eigenvalues evenly spaced in [−1, 1].
One torch thread. Table, then with --json one line; ratios are ours over theirs, worst case over
operators and tolerances (the goals), and over the totals of every case.

Per case also the span floor (bench/span_floor.py): the first G-evaluation at which some affine
combination of the residuals evaluated so far is under the tolerance, which no Anderson-type method
beats on an affine map; floor / theirs is what per-row Anderson can at best reach against their
batch, and the floor's evaluations at G's full-batch cost what it can at best reach in time.

    .venv/bin/python bench/solvers.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import load_file
from span_floor import span_floor
from torchdeq.solver import anderson_solver, broyden_solver, fixed_point_iter

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob
from eqserve.engine.observer import NullObserver
from eqserve.models.base import Ctx, ImplicitModel
from eqserve.models.deq_mlp.model import HELDOUT_FILE
from eqserve.models.registry import load_model
from eqserve.models.shipped import WEIGHTS_DIR

ROWS = 64
DIM = 256
TOLS = (1e-4, 1e-6)
CAP = 3000
"""G-evaluation budget per row on both sides (our max_iters, their max_iter)."""
OUR_M = 10
"""Our Anderson history: the server's default (ModelMeta.default_solver; main() checks it)."""
THREADS = 1
GOALS = {
    "ratio_evals_vs_torchdeq": 0.8,
    "ratio_time_vs_torchdeq": 0.5,
    "ours_anderson_floor_ratio_evals": 1.03,
    "broyden_ratio_evals_vs_torchdeq": 1.0,
}
TD_DEFAULT = (6, 1e-4, 1.0)
"""anderson_solver's documented defaults (m, lam, tau)."""
GRID_QUICK = {"m": (6, 10), "lam": (0.0, 1e-8, 1e-4), "tau": (1.0, 0.8, 0.5)}
GRID_FULL = {"m": (3, 6, 10), "lam": (0.0, 1e-10, 1e-8, 1e-6, 1e-4), "tau": (1.0, 0.8, 0.5)}
BROYDEN_GRID = {"LBFGS_thres": (None, OUR_M), "ls": (False, True)}
"""Their Broyden's settings, the default (every update kept, no line search) first."""
MATCHED = (
    "abs residual ‖G(y) − y‖₂ per row in fp32, y0 = 0, the same batch and operator; their stop_mode='abs' "
    "with tol (stop when max over rows < tol, strict; checked from Anderson's 3rd G-call), ours per row "
    "residual ≤ tol; their fixed_point_iter with tau=1 only (tau < 1 would scale the residual it tests); "
    "their G-evaluations = G-calls on the full batch (each call costs every row one), counted by "
    "wrapping G; ours = each row's iterations, cross-checked against the row-steps of every engine run"
)


class Contraction(ImplicitModel):
    """G(y) = a ⊙ (y Mᵀ) + b per row with ‖M‖₂ = 1: a contraction with the row's own factor a."""

    name = "contraction"

    def __init__(self, m: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("M", m)

    def state_shape(self, ctx: Ctx) -> tuple[int, ...]:
        return (self.M.shape[0],)

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        return ctx["a"] * (y @ self.M.T) + ctx["b"]

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        return {"norm": float(y.norm())}


@dataclass
class Case:
    """An operator and its batch of ROWS contexts."""

    name: str
    model: ImplicitModel
    ctxs: list[Ctx]

    def batch(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
        """G on the collated batch, and y0 = 0 for every row."""
        bctx = self.model.collate(self.ctxs)
        y0 = torch.cat([self.model.init(c) for c in self.ctxs])
        return lambda y: self.model.step(y, bctx), y0


def deq_mlp() -> Case:
    """The shipped deq-mlp on its first ROWS held-out inputs."""
    model = load_model("deq-mlp")
    x = load_file(str(WEIGHTS_DIR / HELDOUT_FILE))["x"][:ROWS]
    return Case("deq-mlp", model, [model.encode(model.Input(x=row.tolist())) for row in x])


def contraction(symmetric: bool, seed: int = 0) -> Case:
    """The linear contraction with M orthogonal (or symmetric, spectrum on [−1, 1]); ‖y*‖ ≤ 1 per row."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen, dtype=torch.float64))
    m = q @ torch.diag(torch.linspace(-1.0, 1.0, DIM, dtype=torch.float64)) @ q.T if symmetric else q
    a = torch.linspace(0.5, 0.99, ROWS)
    c = torch.randn(ROWS, DIM, generator=gen)
    c = c / c.norm(dim=1, keepdim=True)
    ctxs = [{"a": a[i].view(1, 1), "b": ((1 - a[i]) * c[i]).view(1, DIM)} for i in range(ROWS)]
    return Case("contraction-sym" if symmetric else "contraction", Contraction(m.float()), ctxs)


@dataclass
class Run:
    """One solver on one batch: G-evaluations per row, rows under tol, best wall seconds."""

    solver: str
    settings: str
    evals_mean: float
    evals_max: int
    converged: int
    seconds: float
    nstep_max: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class RunLog(NullObserver):
    """Every run's seconds, steps, slots and row-steps: the row-G-evaluations the engine actually
    computed for requests, and what its steps cost."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, int, int, int]] = []

    def ran(self, seconds: float, steps: int, rows: int, row_steps: int) -> None:
        """Record one run."""
        self.runs.append((seconds, steps, rows, row_steps))


TAIL_ROWS = 8
"""Steps over at most this many batch slots count as the batch's tail."""


def ours(case: Case, tol: float, m: int, reps: int, method: str | None = None) -> Run:
    """The batch served by a fresh Engine per repetition; wall time from start() to the last result.
    `method` None: Anderson where m > 0, else Picard."""
    best, results, log = math.inf, [], RunLog()
    for _ in range(reps):
        engine = Engine(case.model, max_batch_rows=ROWS)
        engine.observer = RunLog()
        futures = [
            engine.submit(
                SolveJob(
                    id=str(i),
                    ctx=c,
                    y0=case.model.init(c),
                    max_iters=CAP,
                    tol=tol,
                    damping=1.0,
                    m=m,
                    method=method,  # type: ignore[arg-type]
                )
            )
            for i, c in enumerate(case.ctxs)
        ]
        start = time.perf_counter()
        engine.start()
        results = [f.result(timeout=300) for f in futures]
        seconds = time.perf_counter() - start
        engine.stop()
        assert isinstance(engine.observer, RunLog)
        if seconds < best:
            best, log = seconds, engine.observer
        iters = [r.iterations for r in results]
        if sum(r[3] for r in engine.observer.runs) != sum(iters):
            raise RuntimeError("the engine's runs computed other row-steps than its results report")
    iters = [r.iterations for r in results]
    steps = sum(r[1] for r in log.runs)
    tail = [(s, k) for s, k, rows, _ in log.runs if rows <= TAIL_ROWS]
    tail_steps = sum(k for _, k in tail)
    extra = {
        "steps": steps,
        "runs": len(log.runs),
        "us_per_step": round(sum(r[0] for r in log.runs) / steps * 1e6, 1),
        "tail_steps": tail_steps,
        "us_per_tail_step": round(sum(s for s, _ in tail) / tail_steps * 1e6, 1) if tail else None,
    }
    return Run(
        f"eqserve {method}" if method else "eqserve anderson" if m else "eqserve picard",
        f"m={m} β=1" if m else "β=1",
        sum(iters) / len(iters),
        max(iters),
        sum(r.status == "converged" for r in results),
        best,
        extra=extra,
    )


def theirs(
    solver: Callable[..., Any], case: Case, tol: float, max_iter: int, **kw: float
) -> tuple[int, int, int, float] | None:
    """(G-calls, max nstep, rows under tol, seconds) of one torchdeq solve; None if it raised."""
    g, y0 = case.batch()
    calls = 0

    def counted(y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return g(y)

    start = time.perf_counter()
    try:
        _, _, info = solver(counted, y0, max_iter=max_iter, tol=tol, stop_mode="abs", **kw)
    except RuntimeError:  # e.g. a singular Anderson system with lam = 0
        return None
    seconds = time.perf_counter() - start
    return calls, int(info["nstep"].max()), int((info["abs_lowest"] < tol).sum()), seconds


def timed_theirs(
    solver: Callable[..., Any],
    name: str,
    settings: str,
    case: Case,
    tol: float,
    reps: int,
    max_iter: int = CAP,
    **kw: float,
) -> Run:
    """A torchdeq solve with budget `max_iter`, best wall time of `reps`."""
    runs = [theirs(solver, case, tol, max_iter, **kw) for _ in range(reps)]
    ok = [r for r in runs if r is not None]
    if not ok:
        return Run(name, settings, math.nan, 0, 0, math.nan)
    calls, nstep, conv, _ = ok[0]
    seconds = min(r[3] for r in ok)
    return Run(
        name,
        settings,
        float(calls),
        calls,
        conv,
        seconds,
        nstep,
        {"us_per_call": round(seconds / calls * 1e6, 1)},
    )


def anderson_grid(
    case: Case, tol: float, grid: dict[str, tuple]
) -> tuple[tuple[int, float, float], int, list[dict]]:
    """Their Anderson over the grid, best by G-calls (then time): the default first at the full budget,
    then each setting with max_iter = the best so far (so one that cannot beat it stops there).

    Returns the best setting, the budget it was found with, and the table. A run that reaches its
    budget still counts when every row's returned iterate (torchdeq returns each row's lowest-residual
    one) is under tol, so the best setting is timed again with that budget: at the full budget its own
    stop test (all rows under tol at once) may never pass near the fp32 floor."""
    configs = [TD_DEFAULT] + [c for c in itertools.product(*grid.values()) if c != TD_DEFAULT]
    table: list[dict] = []
    best: tuple[int, float, tuple[int, float, float]] | None = None
    for m, lam, tau in configs:
        bound = CAP if best is None else best[0]
        r = theirs(anderson_solver, case, tol, bound, m=m, lam=lam, tau=tau)
        row: dict[str, Any] = {"m": m, "lam": lam, "tau": tau, "bound": bound, "evals": None}
        if r is None:
            row["evals"] = "raised"
        else:
            calls, _, conv, secs = r
            if conv == ROWS:
                row["evals"] = calls
                if best is None or (calls, secs) < best[:2]:
                    best = (calls, secs, (m, lam, tau))
        table.append(row)
    return (best[2], best[0], table) if best else (TD_DEFAULT, CAP, table)


def broyden_grid(case: Case, tol: float) -> tuple[dict[str, Any], int, list[dict]]:
    """Their Broyden over BROYDEN_GRID, best by G-calls (then time), found as `anderson_grid` finds
    their Anderson's: the default at the full budget, then each setting bounded by the best so far."""
    best: tuple[int, float, dict[str, Any]] | None = None
    table: list[dict] = []
    for thres, ls in itertools.product(*BROYDEN_GRID.values()):
        kw = {"LBFGS_thres": thres, "ls": ls}
        bound = CAP if best is None else best[0]
        r = theirs(broyden_solver, case, tol, bound, **kw)
        row: dict[str, Any] = {**kw, "bound": bound, "evals": None}
        if r is None:
            row["evals"] = "raised"
        elif r[2] == ROWS:
            row["evals"] = r[0]
            if best is None or (r[0], r[3]) < best[:2]:
                best = (r[0], r[3], kw)
        table.append(row)
    default = {"LBFGS_thres": None, "ls": False}
    return (best[2], best[0], table) if best else (default, CAP, table)


def broyden_case(case: Case, tol: float, reps: int) -> dict[str, Any]:
    """Our Broyden (memory OUR_M) against their best Broyden and theirs at our memory."""
    best, budget, table = broyden_grid(case, tol)
    settings = f"LBFGS_thres={best['LBFGS_thres']} ls={best['ls']}"
    mine = ours(case, tol, OUR_M, reps, method="broyden")
    td = timed_theirs(
        broyden_solver,
        "torchdeq broyden (best)",
        settings + ("" if budget == CAP else f" max_iter={budget}"),
        case,
        tol,
        reps,
        budget,
        **best,
    )
    matched = next(r for r in table if r["LBFGS_thres"] == OUR_M and not r["ls"])
    return {
        "runs": {"ours_broyden": asdict(mine), "td_broyden_best": asdict(td)},
        "grid": table,
        "td_broyden_at_our_m": matched["evals"],
        "ratio_evals_vs_torchdeq": td_ratio(mine.evals_mean, td.evals_mean),
        "ratio_time_vs_torchdeq": td_ratio(mine.seconds, td.seconds),
    }


def settings_str(m: int, lam: float, tau: float) -> str:
    """torchdeq Anderson settings as text."""
    return f"m={m} lam={lam:g} tau={tau:g}"


def run_case(case: Case, tol: float, grid: dict[str, tuple], reps: int) -> dict[str, Any]:
    """All four solvers (and their default Anderson) on one operator at one tolerance."""
    best, budget, table = anderson_grid(case, tol, grid)
    default_row = table[0]
    runs = {
        "ours_picard": ours(case, tol, 0, reps),
        "td_fixed_point": timed_theirs(
            fixed_point_iter, "torchdeq fixed_point_iter", "tau=1", case, tol, reps
        ),
        "ours_anderson": ours(case, tol, OUR_M, reps),
        "td_anderson_best": timed_theirs(
            anderson_solver,
            "torchdeq anderson (best)",
            settings_str(*best) + ("" if budget == CAP else f" max_iter={budget}"),
            case,
            tol,
            reps,
            budget,
            m=best[0],
            lam=best[1],
            tau=best[2],
        ),
    }
    if best[0] != OUR_M:
        runs["ours_anderson_matched_m"] = ours(case, tol, best[0], reps)
    ours_a, td_a, ours_p, td_p = (
        runs["ours_anderson"],
        runs["td_anderson_best"],
        runs["ours_picard"],
        runs["td_fixed_point"],
    )
    g, y0 = case.batch()
    rows = span_floor(g, y0, tol, td_a.evals_max)
    floor = None if rows is None else (rows.double().mean().item(), int(rows.max()))
    g_seconds = min(timeit(lambda: g(y0)) for _ in range(reps))
    broyden = broyden_case(case, tol, reps)
    return {
        "operator": case.name,
        "tol": tol,
        "runs": {k: asdict(v) for k, v in runs.items()},
        "td_anderson_default": {"settings": settings_str(*TD_DEFAULT), "evals": default_row["evals"]},
        "grid": {"columns": list(table[0]), "rows": [list(g.values()) for g in table]},
        "ratio_evals_vs_torchdeq": td_ratio(ours_a.evals_mean, td_a.evals_mean),
        "ratio_time_vs_torchdeq": td_ratio(ours_a.seconds, td_a.seconds),
        "matched_m_ratio_evals": td_ratio(
            runs.get("ours_anderson_matched_m", ours_a).evals_mean, td_a.evals_mean
        ),
        "ratio_steps_vs_torchdeq_calls": td_ratio(ours_a.extra["steps"], td_a.evals_mean),
        "picard_ratio_evals": td_ratio(ours_p.evals_mean, td_p.evals_mean),
        "picard_ratio_time": td_ratio(ours_p.seconds, td_p.seconds),
        "span_floor": None if floor is None else {"evals_mean": floor[0], "evals_max": floor[1]},
        "floor_ratio_evals": 1.0 if floor is None else td_ratio(floor[0], td_a.evals_mean),
        "batch_g_seconds": g_seconds,
        "floor_ratio_time": None if floor is None else td_ratio(floor[0] * g_seconds, td_a.seconds),
        "ours_anderson_floor_ratio_evals": None if floor is None else round(ours_a.evals_mean / floor[0], 3),
        "broyden": broyden,
        "broyden_ratio_evals_vs_torchdeq": broyden["ratio_evals_vs_torchdeq"],
        "broyden_ratio_time_vs_torchdeq": broyden["ratio_time_vs_torchdeq"],
    }


def timeit(fn: Callable[[], Any]) -> float:
    """Seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def td_ratio(ours_v: float, theirs_v: float) -> float | None:
    """ours / theirs, rounded; None where theirs is missing."""
    return None if not theirs_v or math.isnan(theirs_v) else round(ours_v / theirs_v, 3)


def print_case(c: dict[str, Any]) -> None:
    """One operator × tolerance: the four solvers, their ratios, the grid."""
    print(f"\n{c['operator']}, tol {c['tol']:g} (abs)")
    print(f"  {'solver':28}{'settings':24}{'G-evals/row':>12}{'max':>6}{'nstep':>7}{'conv':>7}{'ms':>9}")
    for r in c["runs"].values():
        nstep = "-" if r["nstep_max"] is None else str(r["nstep_max"])
        print(
            f"  {r['solver']:28}{r['settings']:24}{r['evals_mean']:>12.1f}{r['evals_max']:>6}{nstep:>7}"
            f"{r['converged']:>4}/{ROWS}{r['seconds'] * 1e3:>9.1f}"
        )
    d = c["td_anderson_default"]
    evals = d["evals"] if isinstance(d["evals"], int) else "not under tol"
    print(f"  torchdeq anderson default {d['settings']}: {evals} G-evals/row")
    print(
        f"  anderson ours/theirs: evals {c['ratio_evals_vs_torchdeq']}, time {c['ratio_time_vs_torchdeq']}"
        f" (ours at their m: evals {c['matched_m_ratio_evals']});"
        f"  picard ours/theirs: evals {c['picard_ratio_evals']}, time {c['picard_ratio_time']}"
    )
    floor = c["span_floor"]
    print(
        "  span floor (first evaluation at which some affine combination of the evaluated residuals is"
        " under tol): "
        + (
            f"{floor['evals_mean']:.2f}/row (max {floor['evals_max']})"
            if floor
            else f"not within their {c['runs']['td_anderson_best']['evals_max']}"
        )
        + f", ratio to theirs ≥ {c['floor_ratio_evals']}; in time, with nothing but G at its full-batch"
        f" cost ({c['batch_g_seconds'] * 1e6:.0f} µs for {ROWS} rows), ≥ {c['floor_ratio_time']}"
    )
    oa, ta = c["runs"]["ours_anderson"], c["runs"]["td_anderson_best"]
    tail = oa["extra"]["us_per_tail_step"]
    print(
        f"  time: our anderson ran {oa['extra']['steps']} batch steps (= its slowest row) in "
        f"{oa['extra']['runs']} runs at {oa['extra']['us_per_step']:.0f} µs/step mean, "
        f"{oa['extra']['tail_steps']} of them over ≤ {TAIL_ROWS} slots at "
        f"{'-' if tail is None else f'{tail:.0f}'} µs; theirs {ta['evals_max']} batch G-calls at "
        f"{ta['extra'].get('us_per_call', math.nan):.0f} µs each "
        f"(steps/calls {c['ratio_steps_vs_torchdeq_calls']})"
    )
    print(f"  our anderson / span floor: evals {c['ours_anderson_floor_ratio_evals']}")
    b = c["broyden"]
    for r in b["runs"].values():
        print(
            f"  {r['solver']:28}{r['settings']:24}{r['evals_mean']:>12.1f}{r['evals_max']:>6}"
            f"{'-' if r['nstep_max'] is None else r['nstep_max']:>7}{r['converged']:>4}/{ROWS}"
            f"{r['seconds'] * 1e3:>9.1f}"
        )
    bcells = []
    for r in b["grid"]:
        v = f">{r['bound']}" if r["evals"] is None else r["evals"]
        bcells.append(f"({r['LBFGS_thres']},{r['ls']})→{v}")
    print(
        f"  broyden ours/theirs: evals {b['ratio_evals_vs_torchdeq']}, time {b['ratio_time_vs_torchdeq']};"
        f" their grid (LBFGS_thres,ls)→G-evals: " + "  ".join(bcells)
    )
    cells = []
    for g in (dict(zip(c["grid"]["columns"], r, strict=True)) for r in c["grid"]["rows"]):
        v = f">{g['bound']}" if g["evals"] is None else g["evals"]
        cells.append(f"({g['m']},{g['lam']:g},{g['tau']:g})→{v}")
    print("  their grid (m,lam,tau)→G-evals ('>N': not under tol within the best-so-far bound N):")
    for i in range(0, len(cells), 5):
        print("    " + "  ".join(cells[i : i + 5]))


def main() -> int:
    """Run every operator and tolerance, print the tables (and the JSON line)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="deq-mlp and contraction, small grid, best of 5")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    grid, reps = (GRID_QUICK, 5) if args.quick else (GRID_FULL, 7)
    cases = [deq_mlp(), contraction(symmetric=False)] + ([] if args.quick else [contraction(symmetric=True)])
    default = cases[0].model.meta().default_solver
    if default["m"] != OUR_M:
        raise SystemExit(f"OUR_M = {OUR_M} is not the server's default {default}")
    print(
        f"solvers: eqserve (Engine, per-row exit) vs torchdeq {version('torchdeq')} (whole batch), "
        f"{ROWS} rows, fp32, y0 = 0, budget {CAP}; torch threads {THREADS}; best wall of {reps}; "
        f"{os.cpu_count()} CPUs"
    )
    print(f"matched: {MATCHED}")
    out = []
    with torch.inference_mode():
        for case in cases:
            for tol in TOLS:
                out.append(run_case(case, tol, grid, reps))
                print_case(out[-1])
    goals = {}
    for k, goal in GOALS.items():
        vals = [c[k] for c in out if c[k] is not None]
        worst = max(vals) if vals else None
        goals[k] = {"value": worst, "goal": goal, "met": worst is not None and worst <= goal}
    totals = {
        "ratio_evals_vs_torchdeq": td_ratio(
            sum(c["runs"]["ours_anderson"]["evals_mean"] for c in out),
            sum(c["runs"]["td_anderson_best"]["evals_mean"] for c in out),
        ),
        "ratio_time_vs_torchdeq": td_ratio(
            sum(c["runs"]["ours_anderson"]["seconds"] for c in out),
            sum(c["runs"]["td_anderson_best"]["seconds"] for c in out),
        ),
        "broyden_ratio_evals_vs_torchdeq": td_ratio(
            sum(c["broyden"]["runs"]["ours_broyden"]["evals_mean"] for c in out),
            sum(c["broyden"]["runs"]["td_broyden_best"]["evals_mean"] for c in out),
        ),
        "broyden_ratio_time_vs_torchdeq": td_ratio(
            sum(c["broyden"]["runs"]["ours_broyden"]["seconds"] for c in out),
            sum(c["broyden"]["runs"]["td_broyden_best"]["seconds"] for c in out),
        ),
    }
    worst_floor = max(out, key=lambda c: c["floor_ratio_evals"])
    worst_time_floor = max(out, key=lambda c: c["floor_ratio_time"] or 0.0)
    seconds = time.perf_counter() - start
    print("\ngoals (worst case over operators and tolerances):")
    for k, g in goals.items():
        print(f"  {k} = {g['value']} (goal ≤ {g['goal']}: {'met' if g['met'] else 'NOT met'})")
    print("over the totals of every case (G-evaluations per row summed, seconds summed):")
    for k, v in totals.items():
        print(f"  {k} = {v}")
    print(
        f"span floor: per-row Anderson reaches at best {worst_floor['floor_ratio_evals']} of their"
        f" G-evaluations ({worst_floor['operator']} at {worst_floor['tol']:g}), and at best"
        f" {worst_time_floor['floor_ratio_time']} of their time ({worst_time_floor['operator']} at"
        f" {worst_time_floor['tol']:g})"
    )
    print(f"{seconds:.1f} s")
    if args.json:
        report = {
            "bench": "solvers",
            "rows": ROWS,
            "torch_threads": THREADS,
            "torchdeq": version("torchdeq"),
            "our_anderson_m": OUR_M,
            "budget": CAP,
            "matched": MATCHED,
            "ratio_evals_vs_torchdeq": goals["ratio_evals_vs_torchdeq"]["value"],
            "ratio_time_vs_torchdeq": goals["ratio_time_vs_torchdeq"]["value"],
            "broyden_ratio_evals_vs_torchdeq": goals["broyden_ratio_evals_vs_torchdeq"]["value"],
            "broyden_ratio_time_vs_torchdeq": max(c["broyden_ratio_time_vs_torchdeq"] or 0.0 for c in out),
            "ours_anderson_floor_ratio_evals_worst": max(
                c["ours_anderson_floor_ratio_evals"] or 0.0 for c in out
            ),
            "goals": goals,
            "totals": totals,
            "floor_ratio_evals_worst": worst_floor["floor_ratio_evals"],
            "floor_ratio_time_worst": worst_time_floor["floor_ratio_time"],
            "cases": out,
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
