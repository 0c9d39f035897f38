"""What batch-invariant mode costs: the default `deq-mlp` tick against the invariant one.

A tick is the torch backend's Picard work on a batch: G-step, residuals, damped update. The default
tick runs `model.step` and `reference.residuals`; the invariant one the same inside
`invariant.mode(True)` with `invariant.residuals`. Each is timed on 64 rows and on 1 row (held-out
inputs of the shipped model, mid-solve states) in interleaved rounds; each side keeps its best round.
One torch thread. Table, then one JSON line with ratio_invariant_vs_default_64rows.

    .venv/bin/python bench/batch_invariant.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import load_file

from eqserve.kernels import invariant, reference
from eqserve.models.deq_mlp.model import HELDOUT_FILE, DeqMLP
from eqserve.models.shipped import WEIGHTS_DIR


def ticks(model: DeqMLP, rows: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The default and the invariant tick on `rows` held-out inputs, from their 5th Picard iterate."""
    x = load_file(str(WEIGHTS_DIR / HELDOUT_FILE))["x"][:rows]
    ctx = {"inj": model.inj(x)}
    y = torch.zeros(rows, model.hidden)
    for _ in range(5):
        y = model.step(y, ctx)
    beta = torch.ones(rows, 1)

    def default() -> torch.Tensor:
        gy = model.step(y, ctx)
        reference.residuals(y, gy)
        return reference.picard(y, gy, beta)

    def batch_invariant() -> torch.Tensor:
        with invariant.mode(True):
            gy = model.step(y, ctx)
            invariant.residuals(y, gy)
        return reference.picard(y, gy, beta)

    return {"default": default, "invariant": batch_invariant}


def best_rounds(sides: dict[str, Callable[[], torch.Tensor]], rounds: int, reps: int) -> dict[str, float]:
    """Each side's best mean seconds per tick over `rounds` interleaved rounds of `reps` ticks."""
    best = dict.fromkeys(sides, float("inf"))
    for f in sides.values():
        f()  # warm: the invariant side packs W once here
    for _ in range(rounds):
        for name, f in sides.items():
            start = time.perf_counter()
            for _ in range(reps):
                f()
            best[name] = min(best[name], (time.perf_counter() - start) / reps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = DeqMLP.from_weights(WEIGHTS_DIR / "deq-mlp.safetensors")
    rounds, reps = (5, 10) if args.quick else (15, 30)
    ratios = {}
    print(f"deq-mlp h = {model.hidden}, torch {torch.__version__}, 1 torch thread, best of {rounds} rounds")
    print(f"{'rows':>5} {'default us':>11} {'invariant us':>13} {'ratio':>6}")
    with torch.inference_mode():
        for rows in (64, 1):
            t = best_rounds(ticks(model, rows), rounds, reps)
            ratios[rows] = t["invariant"] / t["default"]
            print(f"{rows:5d} {t['default'] * 1e6:11.0f} {t['invariant'] * 1e6:13.0f} {ratios[rows]:6.2f}")
    print(
        json.dumps(
            {
                "ratio_invariant_vs_default_64rows": round(ratios[64], 3),
                "ratio_invariant_vs_default_1row": round(ratios[1], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
