"""The paper's Figure 4 for the shipped ns-fno: the error E_t and the t-step map's Lipschitz constant L_t
against t, at 32² (the training grid) and 64² (served without retraining).

E_t: mean relative L2 error of the vorticity after t Picard steps from z = 0 on the held-out set.
L_t: mean over held-out forcings f of ‖ω_t(f') − ω_t(f)‖ / ‖f' − f‖, f' = f + δ·g with g a smooth
random forcing of the same law scaled to ‖g‖ = ‖f‖ (δ = 1e-3, float64), beside the same quotient of
the true steady map (our solver's steady states). Prints one JSON line and draws both curves to a PNG
(matplotlib, which the server does not need).

    .venv/bin/python bench/ns_fno_figure.py            # docs/ns-fno-figure.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from eqserve.models.ns_fno.data import AMPLITUDE
from eqserve.models.ns_fno.model import FORCING_SCALE, NsFno
from eqserve.models.ns_fno.solver import random_forcing, steady_state
from eqserve.models.registry import load_model

DELTA = 1e-3


def perturbation(f: torch.Tensor) -> torch.Tensor:
    """The direction g of L_t's perturbations: a smooth random forcing of the same law, ‖g‖ = ‖f‖ per row."""
    g = random_forcing(f.shape[0], f.shape[-1], seed=77, amplitude=AMPLITUDE).to(f.dtype)
    return g * (f.flatten(1).norm(dim=1) / g.flatten(1).norm(dim=1)).view(-1, 1, 1)


def true_lipschitz(f: torch.Tensor) -> float:
    """The same quotient for the true steady map (our solver's steady states): what L_t can tend to."""
    g = perturbation(f)
    gap = (steady_state(f + DELTA * g)[0] - steady_state(f)[0]).flatten(1).norm(dim=1)
    return (gap / (DELTA * g.flatten(1).norm(dim=1))).mean().item()


def lipschitz(model: NsFno, f: torch.Tensor, iters: list[int]) -> list[float]:
    """L_t for each t in iters, over the forcings f (B, n, n)."""
    g = perturbation(f)
    both = torch.cat([f, f + DELTA * g])
    b = f.shape[0]
    with torch.no_grad():
        inj = model.lift((FORCING_SCALE * both).unsqueeze(1))
        ctx = {"inj": inj, "grid": torch.full((2 * b,), f.shape[-1])}
        z = torch.zeros(2 * b, model.channels, f.shape[-1], f.shape[-1], dtype=f.dtype)
        out, t = [], 0
        for target in iters:
            while t < target:
                z, t = model.step(z, ctx), t + 1
            w = model.vorticity(z)
            gap = (w[b:] - w[:b]).flatten(1).norm(dim=1)
            out.append((gap / (DELTA * g.flatten(1).norm(dim=1))).mean().item())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", default="1,2,4,8,16,32,64")
    default = Path(__file__).parent.parent / "docs" / "ns-fno-figure.png"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args()
    torch.set_num_threads(1)
    iters = [int(s) for s in args.iters.split(",")]
    model: NsFno = load_model("ns-fno").double()  # type: ignore[assignment]
    result: dict = {"bench": "ns-fno-figure", "t": iters, "delta": DELTA}
    for grid in (32, 64):
        report = model.evaluate(iters, grid=grid)
        f = model._heldout[f"f{grid}"].double()
        result[f"E_{grid}"] = report.error
        result[f"L_{grid}"] = lipschitz(model, f, iters)
        result[f"L_true_{grid}"] = true_lipschitz(f)
        result[f"explicit_{grid}"] = report.baseline
    result["params"] = report.params
    print(json.dumps(result))

    fig, (ax_e, ax_l) = plt.subplots(1, 2, figsize=(9, 3.6))
    for grid, style in ((32, "o-"), (64, "s--")):
        ax_e.plot(iters, result[f"E_{grid}"], style, label=f"DEQ-FNO {grid}²")
        ax_e.axhline(result[f"explicit_{grid}"]["error"], ls=":", color="C3" if grid == 32 else "C4",
                     label=f"explicit FNO {grid}²")  # fmt: skip
        ax_l.plot(iters, result[f"L_{grid}"], style, label=f"{grid}²")
        ax_l.axhline(result[f"L_true_{grid}"], ls=":", color="C3" if grid == 32 else "C4",
                     label=f"true steady map {grid}²")  # fmt: skip
    ax_e.set(xscale="log", yscale="log", xlabel="t", ylabel="E_t (relative L2)", title="error of t steps")
    ax_l.set(xscale="log", xlabel="t", ylabel="L_t", title=f"empirical Lipschitz (δ = {DELTA:g})")
    for ax in (ax_e, ax_l):
        ax.legend(fontsize=8)
        ax.set_xticks(iters, [str(t) for t in iters])
    fig.suptitle(f"ns-fno: steady Navier–Stokes, {result['params']:,} parameters")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
