"""Dense test problems whose rows stop at chosen iterations, and per-dtype comparisons."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eqserve.kernels import reference
from eqserve.kernels.reference import SolveOut, Stop

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}
"""Output tolerance per dtype."""


@dataclass
class Dense:
    """y' = (1−β)y + β·tanh(y Wᵀ + inj) with ‖W‖₂ < 1: every row's residuals shrink monotonically."""

    w: torch.Tensor
    inj: torch.Tensor
    y0: torch.Tensor
    beta: torch.Tensor


def dense(b: int, n: int, device: str, dtype: torch.dtype, seed: int = 0) -> Dense:
    """A random contraction (‖W‖₂ = 0.6) with b rows of state size n, damping in [0.5, 1]."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n, generator=g, dtype=torch.float64)
    w *= 0.6 / torch.linalg.matrix_norm(w, 2)
    inj = torch.randn(b, n, generator=g) * 0.5
    y0 = torch.randn(b, n, generator=g) * 0.1
    beta = torch.rand(b, 1, generator=g) * 0.5 + 0.5
    return Dense(*(t.to(device, dtype) for t in (w, inj, y0, beta)))


@dataclass
class Budgets:
    """Per-row tolerance, stop mode and budget."""

    tol: torch.Tensor
    rel_mode: torch.Tensor
    max_iters: torch.Tensor


def residual_history(p: Dense, rel_mode: torch.Tensor, steps: int) -> torch.Tensor:
    """Each row's residual (relative where rel_mode) after iterations 1..steps, by the reference."""
    b = p.y0.shape[0]
    dev = p.y0.device
    never = torch.full((b,), -1.0, dtype=torch.float64, device=dev)
    budget = torch.full((b,), steps, device=dev)
    y, iters, first = p.y0, torch.zeros_like(budget), torch.zeros_like(never)
    history = []
    for _ in range(steps):
        out = reference.dense_picard_step(y, p.w, p.inj, p.beta, never, rel_mode, iters, budget, first)
        y, iters, first = out.y, out.iters, out.first_res
        history.append(torch.where(rel_mode, out.rel_res, out.abs_res))
    return torch.stack(history).double()


def budgets(p: Dense, converge_at: list[int], budget: list[int]) -> Budgets:
    """Tolerances under which row i converges exactly at iteration converge_at[i] (odd rows in rel
    mode): the geometric mean of the residuals just before and at it, so that rounding never moves
    the iteration; and budgets budget[i] (0 = none)."""
    b = p.y0.shape[0]
    dev = p.y0.device
    rows = torch.arange(b, device=dev)
    rel_mode = rows % 2 == 1
    h = residual_history(p, rel_mode, max(converge_at))
    k = torch.tensor(converge_at, device=dev)
    at, before = h[k - 1, rows], h[(k - 2).clamp(min=0), rows]
    tol = torch.where(k > 1, (at * before).sqrt(), 2 * at).nan_to_num(1e-3)
    return Budgets(tol, rel_mode, torch.tensor(budget, device=dev))


def solve_case(
    device: str, dtype: torch.dtype, b: int = 20, n: int = 40, seed: int = 0
) -> tuple[Dense, Budgets]:
    """A batch whose rows converge at different iterations (some in rel mode, row 11 from far away),
    run out of budget (row 4), have no budget (row 2), or see a NaN (row 7, so they diverge at once)."""
    p = dense(b, n, device, dtype, seed)
    last = 6 if dtype == torch.bfloat16 else 12  # bf16 residuals hit their noise floor sooner
    converge_at = [2 + (3 * i) % (last - 1) for i in range(b)]
    budget = [100] * b
    budget[2] = 0
    budget[4] = converge_at[4] - 1
    p.inj[7, 3] = float("nan")
    p.y0[11] = 1e7  # a first residual ≫ 1e6: only its own first residual as the floor keeps it running
    return p, budgets(p, converge_at, budget)


def assert_same_solve(out: SolveOut, ref: SolveOut, dtype: torch.dtype) -> None:
    """Identical statuses and iteration counts; state and residuals within the dtype's tolerance."""
    assert out.code.tolist() == ref.code.tolist()
    assert out.iters.tolist() == ref.iters.tolist()
    torch.testing.assert_close(out.y, ref.y, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(out.abs_res, ref.abs_res, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(out.rel_res, ref.rel_res, equal_nan=True, **TOL[dtype])
    assert {Stop.CONVERGED, Stop.MAX_ITERS, Stop.DIVERGED} <= set(ref.code.tolist())
