"""Pure-torch references of the fused kernels; also the CPU path.

The engine's math lives here once: per-row residuals, the damped Picard update, the dense
G-step of `deq-mlp`'s family and the per-row stop decision; then what the kernels fuse: the whole
dense step, a whole-batch solve, and Anderson's kept Gram matrix and mixing. Each Triton kernel
is tested against these.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import torch

RESIDUAL_EPS = 1e-12
"""ε in rel = abs / (‖G(y)‖ + ε)."""

ANDERSON_RIDGE = 1e-8
"""Anderson's ridge λ, relative to the mean diagonal of the residual Gram matrix."""

ANDERSON_MAX_WEIGHT = 1e4
"""Anderson weights with Σ|α| above this mean an ill-conditioned system: take a Picard step."""

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


ANDERSON_GRAM_DTYPE = torch.float64
"""The kept Gram matrix and its solve run in fp64: (M, M) per row costs next to nothing, and the
bordered system stays solvable with a relative ridge far below fp32's resolution."""


def anderson_gram(hist: torch.Tensor) -> torch.Tensor:
    """The Gram matrix RRᵀ (B, M, M), fp64, of the residuals R_i in a history (B, M, 2n) [X_i | R_i]."""
    r = hist[:, :, hist.shape[2] // 2 :].to(ANDERSON_GRAM_DTYPE)
    return torch.bmm(r, r.mT)


def anderson_record(
    y: torch.Tensor, gy: torch.Tensor, hist: torch.Tensor, gram: torch.Tensor, slot: torch.Tensor
) -> None:
    """Write each row's iterate y and residual r = G(y) − y into its history `slot` (hist (B, M, 2n)
    holds X_i then R_i, contiguous) and refresh that slot's row and column of the Gram matrix RRᵀ
    (B, M, M), in place: M dot products per row, in fp32 or wider, instead of M²."""
    b, slots, two_n = hist.shape
    pos = torch.arange(0, b * slots, slots, device=y.device).add_(slot)
    r = gy - y
    hist.view(b * slots, two_n).index_copy_(0, pos, torch.cat([y, r], 1))
    acc = torch.promote_types(y.dtype, torch.float32)  # bf16 histories: fp32 dot products
    g = torch.bmm(r.unsqueeze(1).to(acc), hist[:, :, two_n // 2 :].mT.to(acc)).to(gram.dtype)
    gram.view(b * slots, slots).index_copy_(0, pos, g.squeeze(1))
    gram.scatter_(2, slot.view(b, 1, 1).expand(b, slots, 1), g.mT)


def anderson_mix(
    y: torch.Tensor, gy: torch.Tensor, hist: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """The new iterate Σα_i (X_i + βR_i) for weights α (B, M) that sum to 1 per row, formed as
    y + βr + Σα_i ((X_i − y) + β(R_i − r)) with r = G(y) − y. The differences are small near the
    fixed point, so their weighted sum rounds far less than Σα_i X_i, whose terms are as large as
    the state: at h = 1024 in fp32 that rounding held m = 10 above 1e-6. Weight 1 on the slot just
    recorded gives the damped Picard step exactly."""
    b, slots, two_n = hist.shape
    alpha = alpha.to(y.dtype)
    latest = torch.cat([y, gy - y], 1)
    # One product: (hist − latest) (B, M, 2n) is (B, 2M, n) with X_i, R_i at rows 2i, 2i+1.
    w = torch.stack([alpha, alpha * beta], 2).view(b, 1, 2 * slots)
    delta = (hist - latest.unsqueeze(1)).view(b, 2 * slots, two_n // 2)
    return torch.bmm(w, delta).view(b, two_n // 2) + picard(y, gy, beta)


def anderson_solve(gram: torch.Tensor, ridge: float, max_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Anderson weights α (B, M) and ok (B,) from a kept Gram matrix RRᵀ of residual histories.

    α minimises ‖Σα_i r_i‖² + λ‖α‖² under Σα_i = 1 over each row's written slots (those with a
    positive diagonal; the others get weight 0): α = A⁻¹1 / 1ᵀA⁻¹1 with A the Gram scaled to a unit
    diagonal plus λ = `ridge` (so λ is relative to each slot's own diagonal), by Cholesky in the
    Gram's precision (fp32 or wider). ok is False where A is not positive definite, α is
    non-finite or Σ|α| ≥ `max_weight`; α is then meaningless and the caller takes a Picard step.
    """
    gram = gram.to(torch.promote_types(gram.dtype, torch.float32))
    d = torch.diagonal(gram, dim1=1, dim2=2)
    s = d.rsqrt().nan_to_num_(nan=torch.nan, posinf=0.0)  # D^-1/2 on written slots, 0 elsewhere
    a = gram * (s.unsqueeze(2) * s.unsqueeze(1))
    a.diagonal(dim1=1, dim2=2).fill_(1.0 + ridge)  # unused slots: identity rows, 0 right-hand side
    chol, info = torch.linalg.cholesky_ex(a)
    z = torch.cholesky_solve(s.unsqueeze(2), chol).squeeze(2).mul_(s)
    alpha = z / z.sum(1, keepdim=True)
    return alpha, (info == 0) & (alpha.abs().sum(1) < max_weight)  # NaN < w is False


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
