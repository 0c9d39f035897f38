"""On a GPU: the engine serving `deq-mlp` (fused dense step, k steps a run) against the graph runner's
closed-batch solve of the same rows, per row-iteration.

Both solve the 64 held-out inputs with tol < 0 for N iterations (every row runs its whole budget),
fp32, on CUDA with the Triton backend. The engine's time is submit → last answer; the graph runner's
one `dense_solver` call (persistent kernel or CUDA graphs of K steps, whichever it picks). Rounds
alternate; each side keeps its best. Goal: engine / graph runner ≤ 1.2. Without CUDA it says so
and exits 0 (nothing to measure).

    python bench/engine_gpu.py [--iters N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import load_file

GOAL = 1.2


def main() -> int:
    """Alternate the two sides; print the table and one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    from eqserve.engine.core import Engine
    from eqserve.engine.job import SolveJob
    from eqserve.kernels.dispatch import dense_solver
    from eqserve.models.deq_mlp.model import HELDOUT_FILE
    from eqserve.models.registry import load_model
    from eqserve.models.shipped import WEIGHTS_DIR

    model = load_model("deq-mlp").to("cuda")
    x = load_file(str(WEIGHTS_DIR / HELDOUT_FILE))["x"][:64]
    ctxs = [model.encode(model.Input(x=row.tolist())) for row in x]
    bctx = model.collate(ctxs)
    w, inj = model.dense_form(bctx)
    b, n, dev = len(ctxs), w.shape[0], w.device
    solve = dense_solver(w, "triton")
    y0 = torch.zeros(b, n, device=dev)
    never = torch.full((b,), -1.0, dtype=torch.float64, device=dev)
    budget = torch.full((b,), args.iters, device=dev)
    args_ = (inj, torch.ones(b, 1, device=dev), never, torch.zeros(b, dtype=torch.bool, device=dev), budget)

    def closed() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = solve(y0, *args_)
        torch.cuda.synchronize()
        assert int(out.iters.min()) == args.iters
        return time.perf_counter() - start

    engine = Engine(model, backend="triton", max_batch_rows=b)
    engine.start()

    def served() -> float:
        jobs = [SolveJob(str(i), c, model.init(c), args.iters, -1.0) for i, c in enumerate(ctxs)]
        start = time.perf_counter()
        results = [f.result(600) for f in [engine.submit(j) for j in jobs]]
        assert all(r.iterations == args.iters for r in results)
        return time.perf_counter() - start

    try:
        closed(), served()  # compile and capture
        times: dict[str, list[float]] = {"engine": [], "graph_runner": []}
        for _ in range(args.rounds):
            times["graph_runner"].append(closed())
            times["engine"].append(served())
    finally:
        engine.stop()
    per = {k: min(v) / (b * args.iters) * 1e9 for k, v in times.items()}
    ratio = per["engine"] / per["graph_runner"]
    print(f"deq-mlp, {b} rows × {n}, {args.iters} iterations each, {torch.cuda.get_device_name()}")
    print(f"{'side':14}{'ns per row-iteration':>22}")
    for k, v in per.items():
        print(f"{k:14}{v:>22.1f}")
    print(f"engine / graph runner = {ratio:.2f} (goal ≤ {GOAL})")
    print(json.dumps({"bench": "engine_gpu", "ratio_engine_vs_graph_runner": round(ratio, 3),
                      "ns_per_row_iter": {k: round(v, 1) for k, v in per.items()}}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
