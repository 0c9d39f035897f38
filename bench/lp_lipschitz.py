"""The paper's Figure 7 for the shipped lp-gnn: the t-step map's Lipschitz constant L_t rises while E_t falls
toward the fixed point's error.

For every held-out LP and each mode (one nonzero of A, or the vector b, c, l or u), a perturbed copy
differs from it by a vector of norm 1e-4. L_t is the mean over these pairs of ‖y_t(x') − y_t(x)‖ / 1e-4;
E_t is the mean ± std over the original and perturbed LPs of ‖y_t − y*‖ / (‖y*‖ + 1), y* from HiGHS.
Runs in float64. Prints a table and one JSON line, and draws both curves to a PNG (needs matplotlib,
which the server does not). The last row, t = ∞, is the fixed point (Picard to `rel` 1e-4, as served).

    .venv/bin/python bench/lp_lipschitz.py                      # 300 LPs, t = 1 … 32, bench/lp_figure.png
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from eqserve.models.lp_gnn.data import LP, load_lps, solve
from eqserve.models.lp_gnn.graph import lp_errors, lp_graph, union
from eqserve.models.lp_gnn.model import HELDOUT_FILE
from eqserve.models.lp_gnn.networks import ImplicitGNN
from eqserve.models.registry import load_model
from eqserve.models.shipped import WEIGHTS_DIR

MODES = ("A", "b", "c", "l", "u")
EPS = 1e-4


def perturb(lp: LP, mode: str, rng: np.random.Generator) -> LP:
    """lp with one nonzero of A moved by ±EPS, or b, c, l or u moved by a random vector of norm EPS."""
    if mode == "A":
        vals = lp.vals.copy()
        vals[rng.integers(len(vals))] += EPS * rng.choice([-1.0, 1.0])
        return dataclasses.replace(lp, vals=vals)
    v = rng.normal(size=len(getattr(lp, mode)))
    return dataclasses.replace(lp, **{mode: getattr(lp, mode) + EPS * v / np.linalg.norm(v)})


def trajectory(net: ImplicitGNN, lps: list[LP], iters: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """y_1 … y_iters (y_0 = 0) and the fixed point, for all LPs at once, in their own units; and the LP
    index of each variable."""
    g = union([lp_graph(lp, torch.float64) for lp in lps])
    z, out = g.var.new_zeros(g.var.shape[0]), []
    with torch.no_grad():
        emb = net.embed(g)
        for _ in range(iters):
            z = net.step(g, emb, z)
            out.append(z * g.scale)
        out.append(net.solve(g, emb, 1e-4, 1000)[0] * g.scale)
    return out, g.lp


def per_lp_norm(x: torch.Tensor, lp: torch.Tensor, count: int) -> torch.Tensor:
    """‖x restricted to each LP‖."""
    return torch.zeros(count, dtype=x.dtype).index_add_(0, lp, x**2).sqrt()


def measure(lps: list[LP], sols: list[np.ndarray], iters: int, seed: int) -> dict:
    """E_t (mean, std) and L_t per mode for t = 1 … iters."""
    net = copy.deepcopy(load_model("lp-gnn").net).double().eval()  # type: ignore[union-attr]
    rng = np.random.default_rng(seed)
    base, lp_index = trajectory(net, lps, iters)
    g_all = union([lp_graph(lp, torch.float64) for lp in lps])
    err_rows = [[lp_errors(y, torch.as_tensor(np.concatenate(sols)), g_all) for y in base]]
    lipschitz: dict[str, list[float]] = {}
    for mode in MODES:
        moved = [perturb(lp, mode, rng) for lp in lps]
        ys, _ = trajectory(net, moved, iters)
        lipschitz[mode] = [
            (per_lp_norm(y1 - y0, lp_index, len(lps)) / EPS).mean().item()
            for y0, y1 in zip(base, ys, strict=True)
        ]
        moved_sols = [solve(lp) for lp in moved]
        keep = [i for i, s in enumerate(moved_sols) if s.status == "optimal"]
        g_keep = union([lp_graph(moved[i], torch.float64) for i in keep])
        y_star = torch.as_tensor(np.concatenate([moved_sols[i].y for i in keep]))
        mask = torch.isin(lp_index, torch.tensor(keep))
        err_rows.append([lp_errors(y[mask], y_star, g_keep) for y in ys])
    errs = [torch.cat([row[t] for row in err_rows]) for t in range(iters + 1)]
    return {
        "t": [*range(1, iters + 1), "inf"],
        "E_mean": [e.mean().item() for e in errs],
        "E_std": [e.std().item() for e in errs],
        "L": lipschitz,
        "L_mean": [float(np.mean([lipschitz[m][t] for m in MODES])) for t in range(iters + 1)],
    }


def plot(res: dict, path: Path) -> None:
    """Two panels like the paper's Figure 7: L_t per mode, and E_t with its ±std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = res["t"][:-1]
    fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, mode in enumerate(MODES):
        ax_l.plot(t, res["L"][mode][:-1], marker="o", ms=3, label=f"perturb {mode}", color=f"C{k}")
        ax_l.axhline(res["L"][mode][-1], color=f"C{k}", ls=":", lw=1)
    ax_l.set(
        xlabel="iteration t",
        ylabel="empirical Lipschitz $L_t$",
        yscale="log",
        title="(a) $L_t$ of $y_t(\\cdot)$ (dotted: fixed point)",
    )
    ax_l.legend(fontsize=8)
    mean, std = np.array(res["E_mean"][:-1]), np.array(res["E_std"][:-1])
    ax_e.plot(t, mean, marker="o", ms=3, color="C3")
    ax_e.fill_between(t, mean - std, mean + std, color="C3", alpha=0.2)
    ax_e.axhline(res["E_mean"][-1], color="k", ls=":", lw=1, label=f"fixed point {res['E_mean'][-1]:.3f}")
    ax_e.legend(fontsize=8)
    ax_e.set(xlabel="iteration t", ylabel="relative error $E_t$", title="(b) $E_t$ (mean ± std)")
    for ax in (ax_l, ax_e):
        ax.grid(alpha=0.3)
    fig.suptitle("lp-gnn (implicit GNN normalised to a contraction, shipped weights) on the held-out LPs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lps", type=int, default=300, help="held-out LPs to use")
    p.add_argument("--iters", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("lp_figure.png"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lps, sols = load_lps(WEIGHTS_DIR / HELDOUT_FILE)
    res = measure(lps[: args.lps], sols[: args.lps], args.iters, args.seed)
    print(f"lp-gnn on {min(args.lps, len(lps))} held-out LPs; perturbations of norm {EPS:g}")
    print(
        f"| {'t':>3} | {'E_t':>15} | "
        + " | ".join(f"{'L_t ' + m:>9}" for m in MODES)
        + f" | {'L_t mean':>9} |"
    )
    print("|" + "-" * 5 + "|" + "-" * 17 + "|" + "|".join(["-" * 11] * (len(MODES) + 1)) + "|")
    for i, t in enumerate(res["t"]):
        cells = " | ".join(f"{res['L'][m][i]:>9.2f}" for m in MODES)
        e_t = f"{res['E_mean'][i]:.3f} ± {res['E_std'][i]:.3f}"
        print(f"| {t!s:>3} | {e_t:>15} | {cells} | {res['L_mean'][i]:>9.2f} |")
    plot(res, args.out)
    print(f"figure: {args.out}")
    print(json.dumps({"bench": "lp_lipschitz", "lps": min(args.lps, len(lps)), "eps": EPS} | res))


if __name__ == "__main__":
    main()
