"""docs/deblur-figure.png for the shipped deblur model: E_t (and PSNR) and the empirical Lipschitz
constant L_t of the t-step map against t, with the unrolled baseline, and a strip of iterates of one
held-out image (blurred, t = 1, 4, 16, 64, sharp). Prints the evaluation as one JSON line.

    .venv/bin/python bench/deblur_figure.py                 # writes docs/deblur-figure.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import matplotlib
import torch

from eqserve.models.base import run_iterations
from eqserve.models.deblur.model import Deblur
from eqserve.models.deblur.ops import psnr
from eqserve.models.registry import load_model

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ITERS = [1, 2, 4, 8, 16, 32, 64]
STRIP = [1, 4, 16, 64]


def main() -> None:
    """Evaluate, print JSON, draw the figure."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/deblur-figure.png"))
    p.add_argument("--image", type=int, default=0, help="which held-out image the strip shows")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_model("deblur")
    assert isinstance(model, Deblur)
    report = model.evaluate(ITERS)
    print(json.dumps(dataclasses.asdict(report)))

    held = model.heldout
    i = args.image
    ctx = model.batch_context(held["blurred"][i : i + 1], held["kernel"][i : i + 1], held["noise"][i : i + 1])
    ys = run_iterations(model, ctx, torch.zeros_like(ctx["b"]), STRIP)
    sharp = held["sharp"][i : i + 1]
    panels = [("blurred", held["blurred"][i : i + 1])] + [(f"t = {t}", ys[t]) for t in STRIP]

    fig = plt.figure(figsize=(12, 6.2))
    grid = fig.add_gridspec(2, 6, height_ratios=[1.25, 1])
    ax = fig.add_subplot(grid[0, :3])
    ax.semilogx(report.t, report.psnr, "o-", base=2, label="implicit (DEQ-PGD) PSNR(t)")
    base = report.baseline
    ax.axhline(base["psnr"], color="C1", ls="--", label=f"unrolled, {base['depth']} steps")
    ax.set_xlabel("iterations t")
    ax.set_ylabel("PSNR (dB) on the held-out set")
    twin = ax.twinx()
    twin.semilogx(report.t, report.error, "s:", color="C2", base=2, label="E_t (relative L2)")
    twin.set_ylabel("E_t")
    ax.legend(loc="lower right", fontsize=8)
    twin.legend(loc="center right", fontsize=8)
    ax2 = fig.add_subplot(grid[0, 3:])
    ax2.semilogx(report.t, report.lipschitz, "o-", color="C3", base=2)
    ax2.set_xlabel("iterations t")
    ax2.set_ylabel("empirical Lipschitz L_t of b ↦ y_t")
    for k, (title, img) in enumerate([*panels, ("sharp", sharp)]):
        a = fig.add_subplot(grid[1, k])
        a.imshow(img[0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        value = "" if title == "sharp" else f"\n{float(psnr(img.clamp(0, 1), sharp)):.2f} dB"
        a.set_title(title + value, fontsize=9)
        a.axis("off")
    fig.suptitle(f"deblur: dead-leaves held-out set ({report.params:,} parameters)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
