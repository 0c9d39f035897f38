"""Learn the heat model's six stencil taps and write `weights.safetensors` beside this file.

The taps are trained to shrink the residual of the unrolled iteration: on random sources f over grids
of 8 to 32 points a side, the loss is log(‖r_T‖ / ‖r_0‖) after T steps from u = 0. The answer (the
fixed point) does not depend on the taps; only the number of iterations to reach it does, so the
script ends by measuring exactly that, against plain Jacobi, on held-out sources and larger grids.
Runs on the CPU in a few seconds: `python examples/heat/train.py`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from model import Heat, HeatInput  # the model file beside this script
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
SIZES = (8, 16, 24, 32)
UNROLL = 30
TOL = 1e-9
"""The stopping rule measured: ‖G(u) − u‖ ≤ TOL, as `eqserve.toml`'s defaults ask of the server."""


def sources(n: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """Random sources on an n×n grid: a few smooth Fourier modes plus white noise, (batch, n, n)."""
    x = torch.linspace(0, 1, n + 2, dtype=torch.float64)[1:-1]
    f = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    for _ in range(4):
        kx, ky = torch.randint(1, 6, (2,), generator=gen).tolist()
        amp = torch.randn(batch, 1, 1, generator=gen, dtype=torch.float64) * 4
        f = f + amp * torch.outer(torch.sin(kx * math.pi * x), torch.sin(ky * math.pi * x))
    return f


def context(model: Heat, f: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch context of several same-size sources (what `collate` of their encodings gives)."""
    h = 1.0 / (f.shape[-1] + 1)
    return {"b": h * h * f, "mask": torch.ones_like(f)}


def residual(model: Heat, u: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
    """The 5-point residual h²f + Δ_h u of each row, flattened."""
    lap = torch.nn.functional.conv2d(u.unsqueeze(1), model.laplace, padding=1).squeeze(1)
    return (ctx["b"] + lap).flatten(1)


def train(steps: int, seed: int) -> Heat:
    """Adam on the unrolled loss; starts from Jacobi."""
    gen = torch.Generator().manual_seed(seed)
    model = Heat()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for i in range(steps):
        n = SIZES[i % len(SIZES)]
        ctx = context(model, sources(n, 8, gen))
        u = torch.zeros_like(ctx["b"])
        for _ in range(UNROLL):
            u = model.step(u, ctx)
        loss = (residual(model, u, ctx).norm(dim=1) / ctx["b"].flatten(1).norm(dim=1)).log().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 50 == 0 or i == steps - 1:
            print(f"step {i:4d}  n={n:2d}  log residual ratio after {UNROLL} steps {loss.item():8.3f}")
    return model


def direct(f: np.ndarray) -> np.ndarray:
    """The exact discrete solution of -Δ_h u = f (5-point, u = 0 on the boundary) by a sparse solve."""
    n = f.shape[0]
    one = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n))
    a = (sp.kron(one, sp.eye(n)) + sp.kron(sp.eye(n), one)) * (n + 1) ** 2
    return spla.spsolve(a.tocsc(), f.ravel()).reshape(n, n)


@torch.no_grad()
def iterations(model: Heat, f: torch.Tensor, cap: int) -> tuple[int, float]:
    """Picard steps until ‖G(u) − u‖ ≤ TOL (or `cap`), and the max error of u against `direct`."""
    ctx = model.encode(HeatInput(f=f.tolist()))
    u = model.init(ctx)
    t, done = 0, False
    while not done and t < cap:
        g = model.step(u, ctx)
        t, done, u = t + 1, float((g - u).norm()) <= TOL, g
    return t, float(np.abs(u[0].numpy() - direct(f.numpy())).max())


@torch.no_grad()
def contraction(model: Heat, n: int) -> float:
    """The contraction factor of G on an n×n grid: the spectral radius of u ↦ u + K * Δ_h u, by power
    iteration on the homogeneous problem."""
    ctx = {"b": torch.zeros(1, n, n, dtype=torch.float64), "mask": torch.ones(1, n, n, dtype=torch.float64)}
    e = torch.randn(1, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ratio = 0.0
    for _ in range(3000):
        nxt = model.step(e, ctx)
        ratio = float(nxt.norm() / e.norm())
        e = nxt / nxt.norm()
    return ratio


def report(model: Heat, seed: int) -> None:
    """Iterations to TOL and error against the direct solve, learned taps vs Jacobi, held-out sources."""
    jacobi = Heat()
    gen = torch.Generator().manual_seed(seed + 1000)
    print(f"\nheld-out sources, stop at ‖G(u) − u‖ ≤ {TOL:g}; max |u − u_direct| at the stop")
    print(
        f"{'n':>4} {'ρ Jacobi':>9} {'ρ learned':>9} {'it Jacobi':>10} {'it learned':>10} "
        f"{'speed-up':>8} {'err Jacobi':>10} {'err learned':>11}"
    )
    for n in (16, 32, 64):
        f = sources(n, 1, gen)[0]
        cap = 40 * n * n
        ij, ej = iterations(jacobi, f, cap)
        il, el = iterations(model, f, cap)
        rj, rl = contraction(jacobi, n), contraction(model, n)
        print(f"{n:>4} {rj:>9.5f} {rl:>9.5f} {ij:>10} {il:>10} {ij / il:>7.1f}× {ej:>10.2e} {el:>11.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "weights.safetensors")
    args = p.parse_args()
    torch.set_num_threads(1)  # tensors this small only lose time to threads on a busy CPU
    model = train(args.steps, args.seed)
    print(
        "taps (centre, 1 away, diagonal, 2 away, knight, 2 diagonal):",
        [round(t, 4) for t in model.taps.tolist()],
    )
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"wrote {args.out}")
    report(model, args.seed)


if __name__ == "__main__":
    main()
