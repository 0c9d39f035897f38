"""The span floor of a batch's fixed-point solve, per row.

At G-evaluation k a solver has seen the points X_0..X_{k-1}, X_k and their residuals r_i = G(X_i) − X_i.
The span floor is the first k at which some affine combination of those residuals, min ‖Σα_i r_i‖
with Σα_i = 1, is ≤ tol. For an affine G a method that takes its next point from the evaluated
points and their G values (Anderson of any depth and relaxation, type I or II) cannot measure
‖G(y) − y‖ ≤ tol at an earlier evaluation: its residuals lie in that span, GMRES's minimal-residual
property. For a nonlinear G it is that bound for the local linearisation, an estimate.

Computed along Anderson(WINDOW)'s own iterates with fp64 least squares over the last WINDOW residuals
(eqserve.solvers.anderson's record, solve and mix). Needs only torch, the kernels and the solvers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from eqserve.solvers import anderson

WINDOW = 20
"""Residuals combined: more than deq-mlp's solves take; more barely moves the contraction's floor."""


def span_floor(
    g: Callable[[torch.Tensor], torch.Tensor], y0: torch.Tensor, tol: float, limit: int
) -> torch.Tensor | None:
    """Each row's span floor (int64, evaluations counted from 1) for G = `g` on the batch y0 (B, n);
    None if a row needs more than `limit` evaluations."""
    b, n = y0.shape
    hist = torch.zeros(b, WINDOW, 2 * n, dtype=torch.float64, device=y0.device)
    gram = torch.zeros(b, WINDOW, WINDOW, dtype=torch.float64, device=y0.device)
    beta = torch.ones(b, 1, dtype=torch.float64, device=y0.device)
    hit = torch.zeros(b, dtype=torch.long, device=y0.device)
    y = y0
    for k in range(1, limit + 1):
        y64, gy = y.double(), g(y).double()
        point = torch.full((b,), (k - 1) % WINDOW, device=y0.device)
        prev = torch.full((b,), (k - 2) % WINDOW if k > 1 else 0, device=y0.device)
        anderson.record(y64, gy, hist, gram, prev, point)
        gamma, ok = anderson.solve(gram, point, torch.full_like(point, WINDOW), 1e-14, math.inf)
        # ‖r_k − ΔR γ‖ from the residuals themselves: through the Gram, γᵀGγ cancels where γ is large.
        least = torch.linalg.vector_norm((gy - y64) - (gamma.unsqueeze(1) @ hist[:, :, n:]).view(b, n), dim=1)
        hit = torch.where((hit == 0) & ok & (least <= tol), k, hit)
        if (hit > 0).all():
            return hit
        gamma = torch.where(ok.unsqueeze(1), gamma, 0.0)
        y = anderson.mix(y64, gy, hist, gamma, gamma * beta, beta).to(y0.dtype)
    return None
