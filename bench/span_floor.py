"""The span floor of a batch's fixed-point solve, per row.

At G-evaluation k a solver has seen the points X_0..X_{k-1}, X_k and their residuals r_i = G(X_i) − X_i.
The span floor is the first k at which some affine combination of those residuals, min ‖Σα_i r_i‖
with Σα_i = 1, is ≤ tol. For an affine G a method that takes its next point from the evaluated
points and their G values (Anderson of any depth and relaxation, type I or II) cannot measure
‖G(y) − y‖ ≤ tol at an earlier evaluation: its residuals lie in that span, GMRES's minimal-residual
property. For a nonlinear G it is that bound for the local linearisation, an estimate.

Computed along Anderson(WINDOW)'s own iterates with fp64 least squares over the last WINDOW residuals
(kernels.reference's record, solve and mix). Needs only torch and the kernels package.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from eqserve.kernels import reference

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
        slot = torch.full((b,), (k - 1) % WINDOW, device=y0.device)
        reference.anderson_record(y64, gy, hist, gram, slot)
        alpha, ok = reference.anderson_solve(gram, 1e-14, math.inf)
        # ‖Σα_i r_i‖ from the residuals themselves: through the Gram, αᵀGα cancels where α is large.
        least = torch.linalg.vector_norm((alpha.unsqueeze(1) @ hist[:, :, n:]).view(b, n), dim=1)
        hit = torch.where((hit == 0) & ok & (least <= tol), k, hit)
        if (hit > 0).all():
            return hit
        newest = torch.arange(WINDOW, device=y0.device) == slot.unsqueeze(1)
        y = reference.anderson_mix(y64, gy, hist, torch.where(ok.unsqueeze(1), alpha, newest), beta)
        y = y.to(y0.dtype)
    return None
