"""The paper's Table 1: explicit vs implicit GNNs on LPs at four embedding sizes, beside the paper's numbers.

Trains both networks for d = 4, 8, 16, 32 on the same seeded LPs with eqserve's own trainer (the
implicit one as a DEQ: loss at its fixed point, phantom gradients; both 3/4 of the epochs at lr,
1/4 at lr/10), then prints a table of parameter counts, train and test error (mean ± std over LPs
of ‖ŷ − y*‖ / (‖y*‖ + 1); the implicit net's at its fixed point, Picard to `rel` 1e-4), the Picard
iterations that took, the implicit/explicit ratio of test errors, and one JSON line. Each (kind, d)
is trained at every step size of --lrs and keeps the one of lowest training error. The paper used
2,500 train / 1,000 test LPs and 15,000 full-batch steps.

    .venv/bin/python bench/lp_table.py                 # 2,500 / 1,000 LPs, 40 epochs
    .venv/bin/python bench/lp_table.py --quick         # 200 / 100 LPs, 10 epochs: a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from eqserve.models.lp_gnn.data import make_dataset
from eqserve.models.lp_gnn.lpset import LpSet, errors
from eqserve.models.lp_gnn.networks import ExplicitGNN, ImplicitGNN, param_count
from eqserve.models.lp_gnn.train import fit, picard_iters, stages_for

SIZES = (4, 8, 16, 32)
PAPER = {
    "explicit": {
        "params": [580, 2088, 7888, 30624],
        "train": [0.387, 0.233, 0.183, 0.112],
        "test": [0.397, 0.273, 0.283, 0.318],
    },
    "implicit": {
        "params": [722, 2350, 8390, 31606],
        "train": [0.203, 0.162, 0.131, 0.118],
        "test": [0.218, 0.177, 0.152, 0.156],
    },
}


def train_one(kind: str, d: int, lr: float, data: tuple[LpSet, LpSet], args: argparse.Namespace) -> dict:
    """Train one network and measure it on both sets."""
    train_set, test_set = data
    torch.manual_seed(args.seed)
    net = ExplicitGNN(d) if kind == "explicit" else ImplicitGNN(d)
    stages = stages_for(args.epochs, lr)
    t0 = time.perf_counter()
    fit(
        net,
        train_set,
        test_set,
        stages,
        batch_lps=args.batch,
        seed=args.seed,
        tag=f"{kind} d={d} lr={lr:g}",
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    tr, te = errors(net, train_set, None), errors(net, test_set, None)
    picard = picard_iters(net, test_set) if isinstance(net, ImplicitGNN) else None
    return {
        "kind": kind,
        "d": d,
        "lr": lr,
        "params": param_count(net),
        "train_mean": tr.mean().item(),
        "train_std": tr.std().item(),
        "test_mean": te.mean().item(),
        "test_std": te.std().item(),
        "seconds": time.perf_counter() - t0,
        "picard_iters": picard,
    }


def run(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Every (kind, d, lr) trained; and per (kind, d) the run of lowest *training* error."""
    start = time.perf_counter()
    data = LpSet(*make_dataset(args.train, args.seed)), LpSet(*make_dataset(args.test, args.seed + 1))
    print(
        f"data: {args.train} train / {args.test} test LPs in {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    runs, best = [], []
    for d in args.sizes:
        for kind in ("explicit", "implicit"):
            tried = [train_one(kind, d, lr, data, args) for lr in args.lrs]
            runs += tried
            best.append(min(tried, key=lambda r: r["train_mean"]))
    return runs, best


def table(results: list[dict], args: argparse.Namespace, seconds: float) -> str:
    """Our numbers beside the paper's, one column per embedding size."""

    def row(label: str, cells: list[str]) -> str:
        return f"| {label:<22} | " + " | ".join(f"{c:>13}" for c in cells) + " |"

    by = {(r["kind"], r["d"]): r for r in results}
    sizes = list(args.sizes)
    lines = [
        f"Table 1 reproduced: {args.train} train / {args.test} test LPs (paper: 2,500 / 1,000), "
        f"{args.epochs} epochs (3/4 at lr, 1/4 at lr/10; implicit as a DEQ), batch {args.batch} LPs, "
        f"Adam, lr the best of {', '.join(f'{lr:g}' for lr in args.lrs)} by training error, "
        f"seed {args.seed}; {seconds / 60:.0f} min on {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}",
        "",
        row("", [f"d = {d}" for d in sizes]),
        "|" + "-" * 24 + "|" + "|".join(["-" * 15] * len(sizes)) + "|",
    ]
    for kind in ("explicit", "implicit"):
        paper = PAPER[kind]
        idx = [SIZES.index(d) for d in sizes]
        lines += [
            row(f"{kind} params", [f"{by[kind, d]['params']:,}" for d in sizes]),
            row("  lr", [f"{by[kind, d]['lr']:g}" for d in sizes]),
            row(
                f"{kind} train err",
                [f"{by[kind, d]['train_mean']:.3f} ± {by[kind, d]['train_std']:.3f}" for d in sizes],
            ),
            row(
                f"{kind} test err",
                [f"{by[kind, d]['test_mean']:.3f} ± {by[kind, d]['test_std']:.3f}" for d in sizes],
            ),
            row("  paper train err", [f"{paper['train'][i]:.3f}" for i in idx]),
            row("  paper test err", [f"{paper['test'][i]:.3f}" for i in idx]),
            row("  train time (s)", [f"{by[kind, d]['seconds']:.0f}" for d in sizes]),
        ]
        if kind == "implicit":
            its = [by[kind, d]["picard_iters"] for d in sizes]
            lines.append(row("  Picard its mean/max", [f"{it['mean']:.1f} / {it['max']}" for it in its]))
            lines.append(row("  share within 100", [f"{it['within_100']:.3f}" for it in its]))
    lines.append(
        row(
            "test ratio imp/exp",
            [f"{by['implicit', d]['test_mean'] / by['explicit', d]['test_mean']:.2f}" for d in sizes],
        )
    )
    lines.append(
        row(
            "  paper ratio",
            [
                f"{PAPER['implicit']['test'][SIZES.index(d)] / PAPER['explicit']['test'][SIZES.index(d)]:.2f}"
                for d in sizes
            ],
        )
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=2500, help="training LPs")
    p.add_argument("--test", type=int, default=1000, help="test LPs")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch", type=int, default=100, help="LPs per step")
    p.add_argument("--lrs", type=lambda s: [float(x) for x in s.split(",")], default=[1e-2])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=list(SIZES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="200 / 100 LPs, 10 epochs")
    args = p.parse_args()
    if args.quick:
        args.train, args.test, args.epochs = 200, 100, 10
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs, best = run(args)
    seconds = time.perf_counter() - start
    print(table(best, args, seconds))
    config = {k: getattr(args, k) for k in ("train", "test", "epochs", "batch", "lrs", "sizes", "seed")}
    print(
        json.dumps(
            {"bench": "lp_table", "config": config, "seconds": round(seconds, 1), "best": best, "runs": runs}
        )
    )


if __name__ == "__main__":
    main()
