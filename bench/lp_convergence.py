"""Does the served lp-gnn reach its fixed point? Plain Picard with the model's defaults against Anderson.

Serves the shipped lp-gnn in-process and solves, one request each, held-out LPs and fresh random LPs
of the training distribution (solvable or not, as a user would send them) twice: with the model's
defaults (plain Picard, `rel` 1e-4, at most 100 iterations) and with `"solver": {"method": "anderson",
"m": 5}`. Prints the share that converged and the iterations each took, a table and one JSON line
(Anderson's iterations over Picard's, per LP that both solved). Beside it, per set, the measured
contraction: each LP's ‖∂G/∂y‖₂ at its fixed point (power iteration to convergence; the LP's
scale s cancels, G being s·G_net(y/s)) and the largest ratio ‖G(y) − G(y')‖ / ‖y − y'‖ over random
pairs of spread 0.1, 1 and 10.

    .venv/bin/python bench/lp_convergence.py                    # 300 held-out + 300 fresh LPs
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch
from fastapi.testclient import TestClient

from eqserve.models.lp_gnn.data import LP, load_lps, random_lp
from eqserve.models.lp_gnn.graph import lp_graph, union
from eqserve.models.lp_gnn.inputs import from_lp
from eqserve.models.lp_gnn.model import HELDOUT_FILE, LpGnn
from eqserve.models.lp_gnn.networks import per_lp_norm
from eqserve.models.registry import load_model
from eqserve.models.shipped import WEIGHTS_DIR
from eqserve.service.app import create_app
from eqserve.service.config import Settings

SOLVERS = {"picard": None, "anderson": {"method": "anderson", "m": 5}}


def solve_all(client: TestClient, lps: list[LP]) -> dict[str, list[tuple[str, int]]]:
    """(status, iterations) of every LP under each solver, the model's budget defaults otherwise."""
    out: dict[str, list[tuple[str, int]]] = {}
    for name, solver in SOLVERS.items():
        rows = []
        for lp in lps:
            body: dict = {"model": "lp-gnn", "input": from_lp(lp)}
            if solver:
                body["solver"] = solver
            res = client.post("/v1/solve", json=body).json()
            rows.append((res["status"], res["iterations"]))
        out[name] = rows
    return out


def summary(rows: dict[str, list[tuple[str, int]]]) -> dict:
    """Per solver the share converged and its iterations; Anderson over Picard on LPs both solved."""
    res: dict = {}
    for name, runs in rows.items():
        its = [t for s, t in runs if s == "converged"]
        res[name] = {
            "converged": len(its) / len(runs),
            "mean": statistics.fmean(its) if its else None,
            "median": statistics.median(its) if its else None,
            "max": max(its) if its else None,
        }
    both = [
        (p[1], a[1])
        for p, a in zip(rows["picard"], rows["anderson"], strict=True)
        if p[0] == a[0] == "converged"
    ]
    res["anderson_over_picard"] = sum(a for _, a in both) / max(1, sum(p for p, _ in both))
    return res


def contraction(model: LpGnn, lps: list[LP], seed: int) -> dict:
    """‖∂G/∂z‖ at each LP's fixed point (median, max) and the largest secant ratio over random pairs."""
    net = model.net
    g = union([lp_graph(lp) for lp in lps])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = net.embed(g)
        z, _ = net.solve(g, emb, 1e-6, 1000)
        secant = []
        for spread in (0.1, 1.0, 10.0):
            y = spread * torch.randn(z.shape, generator=gen)
            y2 = y + spread * torch.randn(z.shape, generator=gen)
            ratio = per_lp_norm(net.step(g, emb, y) - net.step(g, emb, y2), g) / per_lp_norm(y - y2, g)
            secant.append(ratio.max().item())
    norms = net.jacobian_norms(g, emb, z, 30)
    return {"jac_median": norms.median().item(), "jac_max": norms.max().item(), "secant_max": max(secant)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lps", type=int, default=300, help="LPs of each set")
    p.add_argument("--seed", type=int, default=23)
    args = p.parse_args()
    torch.set_num_threads(1)
    held, _ = load_lps(WEIGHTS_DIR / HELDOUT_FILE)
    rng = np.random.default_rng(args.seed)
    sets = {"held-out": held[: args.lps], "fresh": [random_lp(rng) for _ in range(args.lps)]}
    model = load_model("lp-gnn")
    assert isinstance(model, LpGnn)
    app = create_app(Settings(models=[], max_iters_cap=1000, timeout_cap_s=60), {"lp-gnn": model})
    results = {}
    with TestClient(app) as client:
        for name, lps in sets.items():
            results[name] = summary(solve_all(client, lps)) | contraction(model, lps, args.seed)
    print(f"lp-gnn defaults {model.defaults}; Anderson m = 5; {args.lps} LPs per set")
    print("| set | solver | converged | mean its | median | max |")
    print("|---|---|---|---|---|---|")
    for name, res in results.items():
        for solver in SOLVERS:
            r = res[solver]
            cells = f"{r['converged']:.3f} | {r['mean']:.1f} | {r['median']:g} | {r['max']}"
            print(f"| {name} | {solver} | {cells} |")
    for name, res in results.items():
        print(
            f"{name}: ‖∂G/∂y‖ at the fixed points median {res['jac_median']:.3f}, max {res['jac_max']:.3f}; "
            f"largest secant ratio {res['secant_max']:.3f}"
        )
    print(json.dumps({"bench": "lp_convergence", "lps": args.lps, "defaults": model.defaults} | results))


if __name__ == "__main__":
    main()
