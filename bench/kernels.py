"""Time per iteration of the dense kernels against eager torch, torch with CUDA graphs and torch.compile.

For n ∈ {64 … 4096}, B ∈ {1, 16, 64, 256}, fp32 and bf16, in one run: the fused step (one launch
per iteration; and K launches captured in a CUDA graph, fused_graph, replayed as torch_graph is),
the persistent solve (n ≤ 128 bf16 / 64 fp32, one launch for all iterations), the CUDA-graph runner
(K steps per replay, a stop flag read per replay, the batch loaded and its result read), against
the engine's tick in eager torch, the same captured in a CUDA graph (torch_graph), and
torch.compile of it. No row converges (tol < 0), so every row runs every
iteration: 64 per solve, 128 from n = 2048 on (where a solve's fixed setup, loading the batch
and reading the result, would otherwise weigh on the graph runner's time per iteration). Also the
fraction of the memory roofline reached: the least bytes an iteration moves (W once, y read and
written, inj read) over its time, against a device copy measured in the same run.
Prints a table, then one JSON line. Needs only torch and Triton; on a CPU (TRITON_INTERPRET=1,
--quick) it runs the paths that need no CUDA, as a smoke test.

    python bench/kernels.py [--quick] [--autotune] [--budget-s S]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import triton
from device_copy import copy_bandwidth

from eqserve.kernels import dense_step, persistent, reference
from eqserve.kernels.graph_runner import GraphRunner

NS = (64, 128, 256, 512, 1024, 2048, 4096)
BS = (1, 16, 64, 256)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
K = 8
"""Steps per CUDA-graph replay, for the runner and the captured torch tick alike."""

TRITON_METHODS = ("fused", "fused_tuned", "fused_graph", "persistent", "graph")
"""Our methods; the roofline fraction of a shape is the best of theirs (its method named)."""

GOALS = {"fused_vs_eager_upto_1024": 3.0, "persistent_vs_eager_upto_128": 10.0, "roofline_at_4096": 0.8}
"""The H100 goals: speedups per iteration over eager torch, and the fraction of copy bandwidth."""


def torch_tick(
    y: torch.Tensor,
    w: torch.Tensor,
    inj: torch.Tensor,
    beta: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
    iters: torch.Tensor,
    max_iters: torch.Tensor,
    first: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The engine's tick in plain torch in the state's own dtype (the baseline): y', iters, first, code."""
    gy = reference.dense_step(y, w, inj)
    abs_res, rel_res = reference.residuals(y, gy)
    y_next = reference.picard(y, gy, beta)
    iters = iters + 1
    first = torch.where(iters == 1, abs_res.double(), first)
    return (
        y_next,
        iters,
        first,
        reference.decide(abs_res, rel_res, y_next, first, iters, max_iters, tol, rel_mode),
    )


compiled_tick = torch.compile(torch_tick, dynamic=True)
"""torch.compile of the tick (compiled at its first call; dynamic shapes, so once per dtype)."""


class Case:
    """One shape and dtype: a contraction W, injections, and per-row settings under which no row stops."""

    def __init__(self, n: int, b: int, dtype: torch.dtype, device: torch.device, iters: int) -> None:
        g = torch.Generator(device=device).manual_seed(n + b)
        self.n, self.b, self.dtype, self.iters = n, b, dtype, iters
        w = torch.randn(n, n, generator=g, device=device) * (0.6 / (2 * math.sqrt(n)))  # ‖W‖₂ ≈ 0.6
        self.w = w.to(dtype)
        self.inj = (torch.randn(b, n, generator=g, device=device) * 0.5).to(dtype)
        self.y0 = torch.zeros(b, n, dtype=dtype, device=device)
        self.beta = torch.full((b, 1), 0.9, dtype=dtype, device=device)
        self.tol = torch.full((b,), -1.0, dtype=torch.float64, device=device)
        self.rel_mode = torch.zeros(b, dtype=torch.bool, device=device)
        self.max_iters = torch.full((b,), iters, device=device)

    def min_bytes(self) -> int:
        """What one iteration must move at least: W once, y read and written, inj read."""
        e = self.w.element_size()
        return self.n * self.n * e + self.b * self.n * 3 * e

    def solve_args(self) -> tuple[torch.Tensor, ...]:
        """(y0, inj, beta, tol, rel_mode, max_iters) for a whole-batch solver."""
        return self.y0, self.inj, self.beta, self.tol, self.rel_mode, self.max_iters


def sync(device: torch.device) -> None:
    """Wait for the device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_iter_us(run: Callable[[], None], iters: int, device: torch.device, repeats: int = 3) -> float:
    """Microseconds per iteration of `run` (`iters` iterations a call): best of `repeats` after a warm-up."""
    run()
    sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best * 1e6 / iters


def eager(c: Case, tick: Callable = torch_tick) -> Callable[[], None]:
    """c.iters ticks of `tick` (eager torch, or its torch.compile)."""

    def run() -> None:
        y, iters, first = c.y0, torch.zeros_like(c.max_iters), torch.zeros_like(c.tol)
        for _ in range(c.iters):
            y, iters, first, _ = tick(y, c.w, c.inj, c.beta, c.tol, c.rel_mode, iters, c.max_iters, first)

    return run


def torch_graph(c: Case) -> Callable[[], None]:
    """K eager ticks captured in one CUDA graph, replayed c.iters / K times."""
    y, iters, first = c.y0.clone(), torch.zeros_like(c.max_iters), torch.zeros_like(c.tol)

    def ticks() -> None:
        for _ in range(K):
            y_n, it, f, _ = torch_tick(y, c.w, c.inj, c.beta, c.tol, c.rel_mode, iters, c.max_iters, first)
            y.copy_(y_n)
            iters.copy_(it)
            first.copy_(f)

    graph = captured(ticks)

    def run() -> None:
        for _ in range(c.iters // K):
            graph.replay()

    return run


def captured(ticks: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """`ticks` captured in one CUDA graph, after a warm-up off the capture (allocator, cuBLAS workspaces,
    kernel compilation)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ticks()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ticks()
    return graph


def bf16_dot(c: Case) -> bool:
    """Whether the step takes the bf16 dot (bf16 state and weights)."""
    return c.dtype == torch.bfloat16


def fused(c: Case, tuned: bool, graph: bool = False) -> Callable[[], None]:
    """c.iters launches of the fused step over every row, the state ping-ponging between two buffers;
    with `graph`, K of them captured in a CUDA graph and replayed c.iters / K times, as torch_graph
    replays the eager tick (the step's own time, without the graph runner's per-replay host work)."""
    dev = c.w.device
    it, first = torch.zeros_like(c.max_iters), torch.zeros_like(c.tol)
    code = torch.zeros_like(c.max_iters)
    bufs = dense_step.StepBuffers.ping_pong(
        c.y0.clone(), c.y0.clone(), c.inj, c.beta.reshape(-1), c.tol, c.rel_mode, c.max_iters, it, first,
        code, torch.empty(c.b, device=dev), torch.empty(c.b, device=dev),
        torch.arange(c.b, dtype=torch.int32, device=dev),
    )  # fmt: skip
    split_k = dense_step.MAX_SPLIT_K if tuned else dense_step.step_config(c.n, c.b, bf16_dot(c)).split_k
    scratch = dense_step.Scratch.new(c.b, dev, c.n, split_k)
    launch = dense_step.launch_autotuned if tuned else dense_step.launch

    def steps(count: int) -> None:
        for i in range(count):
            launch(c.w, bufs[i % 2], scratch)

    replay = captured(lambda: steps(K)).replay if graph else None

    def run() -> None:
        it.zero_()
        first.zero_()
        code.zero_()
        if replay is None:
            steps(c.iters)
            return
        for _ in range(c.iters // K):
            replay()

    return run


def solver(c: Case, solve: Callable) -> Callable[[], None]:
    """One whole solve of c.iters iterations (persistent kernel or graph runner)."""
    return lambda: solve(*c.solve_args())


def methods(
    c: Case, device: torch.device, autotune: bool
) -> dict[str, Callable[[], Callable[[], None]] | str]:
    """Each method's builder, or why it does not apply; torch.compile last, so that a recompile's
    work (a new shape can trigger one) is over before the next shape's timings."""
    cuda = device.type == "cuda"
    out: dict[str, Callable[[], Callable[[], None]] | str] = {
        "eager": lambda: eager(c),
        "torch_graph": (lambda: torch_graph(c)) if cuda else "needs CUDA",
        "fused": lambda: fused(c, tuned=False),
        "fused_graph": (lambda: fused(c, tuned=False, graph=True)) if cuda else "needs CUDA",
        "persistent": (
            (lambda: solver(c, lambda *a: persistent.solve(a[0], c.w, *a[1:])))
            if persistent.fits(c.n, c.w.dtype, c.y0.dtype)
            else "state too large"
        ),
        "graph": lambda: solver(c, GraphRunner(c.w, steps_per_replay=K)),
    }
    if autotune:
        out["fused_tuned"] = (lambda: fused(c, tuned=True)) if cuda else "needs CUDA"
    out["compile"] = (lambda: eager(c, compiled_tick)) if cuda else "needs CUDA"
    return out


def main() -> int:
    """Run every shape, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 64, B = 16, fp32 only (a smoke test)")
    parser.add_argument("--autotune", action="store_true", help="also time the autotuned fused step")
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip what is left after this long")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = [("fp32", 64, 16)] if args.quick else [(d, n, b) for n in NS for b in BS for d in DTYPES]
    start = time.perf_counter()
    bandwidth = copy_bandwidth(device)
    rows: list[dict] = []
    for dname, n, b in shapes:
        row: dict = {"dtype": dname, "n": n, "B": b, "us": {}, "skipped": {}}
        rows.append(row)
        if time.perf_counter() - start > args.budget_s:
            row["skipped"]["all"] = "time budget spent"
            continue
        iters = 4 if args.quick else 64 if n <= 1024 else 128
        c = Case(n, b, DTYPES[dname], device, iters)
        for name, build in methods(c, device, args.autotune).items():
            if isinstance(build, str):
                row["skipped"][name] = build
                continue
            try:
                row["us"][name] = round(per_iter_us(build(), iters, device), 2)
            except Exception as exc:  # one method failing must not lose the others' numbers
                row["skipped"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        print(f"[{time.perf_counter() - start:6.1f} s] {dname} n={n} B={b}: {row['us']}", file=sys.stderr)
        triton_us = {k: v for k, v in row["us"].items() if k in TRITON_METHODS}
        if "eager" in row["us"]:
            row["speedup"] = {k: round(row["us"]["eager"] / v, 2) for k, v in triton_us.items()}
        if triton_us:
            roof = {k: round(c.min_bytes() / (v * 1e-6) / bandwidth, 3) for k, v in triton_us.items()}
            row["roofline_by"] = roof
            row["roofline_of"] = max(roof, key=roof.__getitem__)
            row["roofline"] = roof[row["roofline_of"]]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "copy_GBps": round(bandwidth / 1e9, 1),
        "steps_per_replay": K,
        "rows": rows,
        "goals": goals(rows),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print_table(rows)
    print(json.dumps(report))
    return 0


def goals(rows: list[dict]) -> dict[str, dict]:
    """The H100 goals, each as the worst case over its shapes (the roofline: the best over B)."""

    def worst(values: list[float], goal: float, least: bool = True) -> dict:
        if not values:
            return {"value": None, "goal": goal, "met": None}
        v = min(values) if least else max(values)
        return {"value": v, "goal": goal, "met": v >= goal}

    sp = [(r, r.get("speedup", {})) for r in rows]
    fused = [s["fused"] for r, s in sp if r["n"] <= 1024 and "fused" in s]
    pers = [s["persistent"] for r, s in sp if r["n"] <= 128 and "persistent" in s]
    roof = [r["roofline"] for r in rows if r["n"] == 4096 and "roofline" in r]
    return {
        "fused_vs_eager_upto_1024": worst(fused, GOALS["fused_vs_eager_upto_1024"]),
        "persistent_vs_eager_upto_128": worst(pers, GOALS["persistent_vs_eager_upto_128"]),
        "roofline_at_4096": worst(roof, GOALS["roofline_at_4096"], least=False),
    }


def print_table(rows: list[dict]) -> None:
    """µs per iteration per method, speedups over eager, roofline fraction."""
    cols = ["eager", "torch_graph", "compile", "fused", "fused_graph", "persistent", "graph"]
    print(
        f"{'dtype':5} {'n':>5} {'B':>4} "
        + " ".join(f"{c:>11}" for c in cols)
        + "   ×fused  ×pers ×graph  roof (of)"
    )
    for r in rows:
        us = " ".join(f"{r['us'][c]:>11.1f}" if c in r["us"] else f"{'-':>11}" for c in cols)
        sp = r.get("speedup", {})
        ratios = " ".join(
            f"{sp[c]:>6.1f}" if c in sp else f"{'-':>6}" for c in ("fused", "persistent", "graph")
        )
        roof = f"{r['roofline']:>5.2f} ({r['roofline_of']})" if "roofline" in r else f"{'-':>5}"
        print(f"{r['dtype']:5} {r['n']:>5} {r['B']:>4} {us}  {ratios} {roof}")
    for r in rows:
        for method, why in r["skipped"].items():
            if why not in ("needs CUDA", "state too large"):
                print(f"  {r['dtype']} n={r['n']} B={r['B']} {method}: {why}")


if __name__ == "__main__":
    sys.exit(main())
