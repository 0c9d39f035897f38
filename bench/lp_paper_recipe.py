"""The paper's own recipe for its implicit LP GNN, run with our code: what its Table 1 numbers measure.

The paper's code (IMP-Power, `gnn-lp/`) keeps a latent scalar y per variable: G(y, x) is `to_y` of the
four half-convolutions over [embedding, y], and the head maps [embedding, y_T] to the solution once,
after the loop. G is trained unrolled from y_0 = 0 with back-propagation through every step: T = 3 at
lr 1e-2, then T = 6 at lr 1e-4 (`2_training.py`, 10,000 + 5,000 full-batch Adam steps). Table 1 tests
it at T = 8 (`3_testing_all.py`) and Figure 7 over t = 0 … 9 (`5_test_lip.py`). Nothing holds G to a
contraction, and nothing runs it to a fixed point.

This bench trains that net with the same parameters (29d² + 59d + 22), wiring and two stages, in
minibatches with our trainer (`fit`), and the explicit GNN for as many epochs beside it. Then it
measures the unrolled net's test error at t = 1 … 100, against the explicit net's, and the share of
test LPs on which plain Picard on y reaches `rel` 1e-4 within 100 iterations, the convergence goal the
served lp-gnn meets. A table, then one JSON line.

    .venv/bin/python bench/lp_paper_recipe.py            # d = 8, 2,500 / 1,000 LPs
    .venv/bin/python bench/lp_paper_recipe.py --quick    # 200 / 100 LPs, a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
from lp_table import PAPER, SIZES
from torch import nn

from eqserve.models.lp_gnn.data import make_dataset
from eqserve.models.lp_gnn.graph import Graph
from eqserve.models.lp_gnn.lpset import LpSet, errors
from eqserve.models.lp_gnn.networks import (
    Embedding,
    ExplicitGNN,
    ImplicitGNN,
    _propagate,
    param_count,
    picard,
)
from eqserve.models.lp_gnn.train import Stage, fit

DEPTHS = (3, 6)
"""The unrolled depths of the paper's two stages; it tests at 8."""

TS = (1, 2, 3, 4, 6, 8, 10, 16, 32, 100)


class UnrolledGNN(nn.Module):
    """The paper's DEQGNN: T steps of y ← G(y, x) from 0, then the head on [embedding, y_T]. Its layers
    are the served `ImplicitGNN`'s (built and initialised alike, the same count), wired the paper's way:
    no gain on y, and the head after the loop instead of inside G."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.depth = DEPTHS[0]
        self.layers = ImplicitGNN(d)

    def embed(self, g: Graph) -> Embedding:
        return self.layers.embed(g)

    def step(self, g: Graph, emb: Embedding, y: torch.Tensor) -> torch.Tensor:
        """y ↦ G(y, x): one latent scalar per variable."""
        h = _propagate(self.layers.convs, g, emb[0], torch.cat([emb[1], y[:, None]], dim=1))
        return self.layers.to_y(h).squeeze(1)

    def forward(self, g: Graph) -> torch.Tensor:
        """The predicted solution after `depth` steps, in units of each LP's scale."""
        emb = self.embed(g)
        y = g.var.new_zeros(g.var.shape[0])
        for _ in range(self.depth):
            y = self.step(g, emb, y)
        return self.layers.head(torch.cat([emb[1], y[:, None]], dim=1)).squeeze(1)


def picard_share(net: UnrolledGNN, data: LpSet, tol: float = 1e-4, iters: int = 100) -> float:
    """The share of LPs whose y reaches ‖G(y) − y‖ / ‖G(y)‖ ≤ tol within `iters` Picard steps from 0."""
    g, _ = data.batch(list(range(len(data))))
    with torch.no_grad():
        emb = net.eval().embed(g)
        _, took = picard(lambda y: net.step(g, emb, y), g, tol, iters)
    return (took <= iters).double().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=8, choices=SIZES, help="embedding size")
    p.add_argument("--train", type=int, default=2500, help="training LPs")
    p.add_argument("--test", type=int, default=1000, help="test LPs")
    p.add_argument("--epochs", type=int, nargs=2, default=(160, 40), help="epochs of the two stages")
    p.add_argument("--batch", type=int, default=100, help="LPs per step")
    p.add_argument("--lr", type=float, default=1e-2, help="stage 1; stage 2 at lr / 100 as the paper's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="200 / 100 LPs, 6 + 2 epochs")
    args = p.parse_args()
    if args.quick:
        args.train, args.test, args.epochs = 200, 100, (6, 2)
    torch.set_num_threads(1)
    start = time.perf_counter()
    train_set = LpSet(*make_dataset(args.train, args.seed))
    test_set = LpSet(*make_dataset(args.test, args.seed + 1))

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    log(f"data: {args.train} / {args.test} LPs in {time.perf_counter() - start:.0f} s")
    torch.manual_seed(args.seed)
    unrolled = UnrolledGNN(args.d)
    e1, e2 = args.epochs
    fit(unrolled, train_set, test_set, [Stage(args.lr, e1)], batch_lps=args.batch, seed=args.seed,
        tag=f"unrolled T={DEPTHS[0]}", log=log)  # fmt: skip
    unrolled.depth = DEPTHS[1]
    fit(unrolled, train_set, test_set, [Stage(args.lr / 100, e2)], batch_lps=args.batch, seed=args.seed,
        tag=f"unrolled T={DEPTHS[1]}", log=log)  # fmt: skip
    torch.manual_seed(args.seed)
    explicit = ExplicitGNN(args.d)
    fit(explicit, train_set, test_set, [Stage(args.lr, e1), Stage(args.lr / 100, e2)], batch_lps=args.batch,
        seed=args.seed, tag="explicit", log=log)  # fmt: skip

    exp_err = errors(explicit, test_set, None).mean().item()
    by_t = {}
    for t in TS:
        unrolled.depth = t
        by_t[t] = errors(unrolled, test_set, None).mean().item()
    share = picard_share(unrolled, test_set)
    seconds = time.perf_counter() - start
    i = SIZES.index(args.d)
    paper_imp, paper_exp = PAPER["implicit"]["test"][i], PAPER["explicit"]["test"][i]

    print(
        f"The paper's implicit-GNN recipe, d = {args.d} ({param_count(unrolled):,} params; explicit "
        f"{param_count(explicit):,}): {args.train} / {args.test} LPs, {e1} epochs at T = {DEPTHS[0]} "
        f"(lr {args.lr:g}) + {e2} at T = {DEPTHS[1]} (lr {args.lr / 100:g}), batch {args.batch}; "
        f"{seconds / 60:.0f} min, one thread, {platform.processor() or platform.machine()}\n"
    )
    print(f"| {'t':>4} | {'unrolled test err':>17} | {'/ explicit':>10} |")
    print(f"|{'-' * 6}|{'-' * 19}|{'-' * 12}|")
    for t, e in by_t.items():
        mark = " (trained)" if t in DEPTHS else " (paper's test)" if t == 8 else ""
        print(f"| {t:>4} | {e:>17.4f} | {e / exp_err:>10.2f} |{mark}")
    print(
        f"\nexplicit test err {exp_err:.4f}; paper: implicit {paper_imp} at t = 8, explicit {paper_exp} "
        f"(ratio {paper_imp / paper_exp:.2f})\nPicard on y reaches rel 1e-4 within 100 iterations on "
        f"{share:.1%} of the test LPs"
    )
    print(
        json.dumps(
            {
                "bench": "lp_paper_recipe",
                "d": args.d,
                "train": args.train,
                "epochs": [e1, e2],
                "explicit_test": exp_err,
                "unrolled_test": by_t,
                "ratio_at_8": by_t[8] / exp_err,
                "ratio_at_100": by_t[100] / exp_err,
                "picard_within_100": share,
                "paper_ratio": paper_imp / paper_exp,
                "seconds": round(seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
