"""Pure-torch references of the fused kernels; also the CPU path.

The engine's math lives here once: per-row residuals, the damped Picard update, the dense
G-step of `deq-mlp`'s family and the per-row stop decision. Each Triton kernel is tested
against these.
"""

from __future__ import annotations

from enum import IntEnum

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
    d = (gy - y).to(acc)
    abs_res = torch.linalg.vector_norm(d, dim=1)
    rel_res = abs_res / (torch.linalg.vector_norm(gy.to(acc), dim=1) + RESIDUAL_EPS)
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
    finite = torch.isfinite(abs_res) & torch.isfinite(y_next).all(1)
    blown = abs_res > DIVERGENCE_GROWTH * first_res.clamp(min=1.0)
    code = torch.full_like(iters, Stop.RUNNING)
    code = torch.where(iters >= max_iters, Stop.MAX_ITERS, code)
    code = torch.where(res <= tol, Stop.CONVERGED, code)
    return torch.where(~finite | blown, Stop.DIVERGED, code)
