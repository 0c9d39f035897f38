"""Pure-torch references of the fused kernels; also the CPU path.

The engine's math lives here once: per-row residuals, the damped Picard update, the dense
G-step of `deq-mlp`'s family and the per-row stop decision; then what the kernels fuse: the whole
dense step and a whole-batch solve. Each Triton kernel is tested against these (Anderson's
against `eqserve.solvers.anderson`, where the solvers live).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import torch

RESIDUAL_EPS = 1e-12
"""ε in rel = abs / (‖G(y)‖ + ε)."""

DIVERGENCE_GROWTH = 1e6
"""A row whose residual grows past this factor of its first residual (or of 1) has diverged."""


class Stop(IntEnum):
    """Why a row stopped; RUNNING means it goes on. Codes up to DIVERGED are decided on the device."""

    RUNNING = 0
    CONVERGED = 1
    MAX_ITERS = 2
    DIVERGED = 3
    DEADLINE = 4
    CANCELLED = 5
    ERROR = 6

    @property
    def label(self) -> str:
        """The status string clients see."""
        return self.name.lower()


def residuals(y: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row abs = ‖G(y) − y‖ and rel = abs / (‖G(y)‖ + ε), computed in fp32 or wider."""
    acc = torch.promote_types(y.dtype, torch.float32)
    d, g = (gy - y, gy) if gy.dtype == acc else ((gy - y).to(acc), gy.to(acc))
    abs_res = torch.linalg.vector_norm(d, dim=1)
    rel_res = abs_res / (torch.linalg.vector_norm(g, dim=1) + RESIDUAL_EPS)
    return abs_res, rel_res


def picard(y: torch.Tensor, gy: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Damped Picard y ← (1−β)y + βG(y), β per row of shape (B, 1)."""
    return torch.lerp(y, gy, beta)


def dense_step(y: torch.Tensor, w: torch.Tensor, inj: torch.Tensor) -> torch.Tensor:
    """G(y) = tanh(y Wᵀ + inj) for a batch of rows."""
    return torch.tanh(y @ w.T + inj)


def decide(
    abs_res: torch.Tensor,
    rel_res: torch.Tensor,
    y_next: torch.Tensor,
    first_res: torch.Tensor,
    iters: torch.Tensor,
    max_iters: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
) -> torch.Tensor:
    """Stop codes (B,) after a step: diverged > converged > max_iters > running.

    `iters` counts G-evaluations including this one; `rel_mode` is True where the request
    measures its tolerance against the relative residual.
    """
    res = torch.where(rel_mode, rel_res, abs_res)
    # Sound: finite and not blown up. NaN or inf fails `<=`, and one NaN or inf in a row of
    # y_next makes its sum, times 0, NaN.
    limit = DIVERGENCE_GROWTH * first_res.clamp(min=1.0)
    sound = y_next.sum(1) * 0.0 + abs_res <= limit
    code = (iters >= max_iters) * Stop.MAX_ITERS
    code = torch.where(res <= tol, Stop.CONVERGED, code)
    return torch.where(sound, code, Stop.DIVERGED)


def decide_row(
    abs_res: float, rel_res: float, y_sum: float, first_res: float, iters: int, max_iters: int, tol: float,
    rel_mode: bool,
) -> Stop:
    """`decide` for one row, on the host: where the device is the host (a CPU), reading a step's
    residuals back costs less than the tensor ops of `decide`, so the host takes the same decision.
    `y_sum` is the sum of the row's new state (its soundness, as in `decide`)."""
    if not y_sum * 0.0 + abs_res <= DIVERGENCE_GROWTH * max(first_res, 1.0):
        return Stop.DIVERGED
    if (rel_res if rel_mode else abs_res) <= tol:
        return Stop.CONVERGED
    return Stop.MAX_ITERS if iters >= max_iters else Stop.RUNNING


class StepOut(NamedTuple):
    """One dense Picard step of a batch, per row: the new state and what the engine's tick derives."""

    y: torch.Tensor
    abs_res: torch.Tensor
    rel_res: torch.Tensor
    code: torch.Tensor
    iters: torch.Tensor
    first_res: torch.Tensor


class SolveOut(NamedTuple):
    """A whole solve of a batch, per row: final state, G-evaluations spent, last residuals, stop code."""

    y: torch.Tensor
    iters: torch.Tensor
    abs_res: torch.Tensor
    rel_res: torch.Tensor
    code: torch.Tensor


def dense_picard_step(
    y: torch.Tensor,
    w: torch.Tensor,
    inj: torch.Tensor,
    beta: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
    iters: torch.Tensor,
    max_iters: torch.Tensor,
    first_res: torch.Tensor,
) -> StepOut:
    """The engine's tick for the dense family: step, residuals, Picard update, first residual, decision.

    Math runs in fp32 (bf16 operands are upcast, as the fused kernel loads them) and the new state
    is stored in y's dtype; for fp32 inputs this is exactly dense_step → residuals → picard → decide.
    `first_res` is the row's first residual, taken from this step where it is the row's first.
    """
    y32 = y.float()
    gy = dense_step(y32, w.float(), inj.float())
    abs_res, rel_res = residuals(y32, gy)
    y_next = picard(y32, gy, beta.float()).to(y.dtype)
    iters = iters + 1
    first_res = torch.where(iters == 1, abs_res.double(), first_res)
    code = decide(abs_res, rel_res, y_next, first_res, iters, max_iters, tol, rel_mode)
    return StepOut(y_next, abs_res, rel_res, code, iters, first_res)


def dense_solve(
    y0: torch.Tensor,
    w: torch.Tensor,
    inj: torch.Tensor,
    beta: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
    max_iters: torch.Tensor,
) -> SolveOut:
    """A whole batch solved from y0, each row stepping until its own stop code.

    Rows with no budget (max_iters ≤ 0) stop at once with MAX_ITERS, 0 iterations and NaN residuals.
    """
    b = y0.shape[0]
    dev = y0.device
    y = y0.clone()
    iters = torch.zeros(b, dtype=torch.long, device=dev)
    first = torch.zeros(b, dtype=torch.float64, device=dev)
    abs_res = torch.full((b,), float("nan"), device=dev)
    rel_res = torch.full((b,), float("nan"), device=dev)
    code = torch.where(max_iters <= 0, Stop.MAX_ITERS, Stop.RUNNING).long()
    while True:
        idx = (code == Stop.RUNNING).nonzero().squeeze(1)
        if idx.numel() == 0:
            return SolveOut(y, iters, abs_res, rel_res, code)
        out = dense_picard_step(
            y[idx], w, inj[idx], beta[idx], tol[idx], rel_mode[idx], iters[idx], max_iters[idx], first[idx]
        )
        y[idx], abs_res[idx], rel_res[idx], code[idx], iters[idx], first[idx] = out


def solver_epilogue(
    y: torch.Tensor,
    gy: torch.Tensor,
    mask: torch.Tensor | None,
    beta: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
    iters: torch.Tensor,
    max_iters: torch.Tensor,
    first_res: torch.Tensor,
    code: torch.Tensor,
    abs_res: torch.Tensor,
    rel_res: torch.Tensor,
    active: torch.Tensor,
) -> StepOut:
    """What follows any model's G-step in a multi-step run: residuals → picard → decide for the
    `active` rows, G(y) taken as 0 where the pad `mask` is False; rows not active (stopped earlier in
    the run) keep their y, residuals, code, iters and first residual."""
    if mask is not None:
        gy = torch.where(mask, gy, 0.0)
    step_abs, step_rel = residuals(y, gy)
    y_next = picard(y, gy, beta)
    step_iters = iters + 1
    first = torch.where(step_iters == 1, step_abs.double(), first_res)
    step_code = decide(step_abs, step_rel, y_next, first, step_iters, max_iters, tol, rel_mode)
    return StepOut(
        torch.where(active.unsqueeze(1), y_next, y),
        torch.where(active, step_abs, abs_res),
        torch.where(active, step_rel, rel_res),
        torch.where(active, step_code, code),
        torch.where(active, step_iters, iters),
        torch.where(active, first, first_res),
    )
