"""The per-row stop decision, taken on the device so the host reads one small tensor a tick."""

from __future__ import annotations

from enum import IntEnum

import torch


class Stop(IntEnum):
    """Why a row stopped; RUNNING means it goes on. Host-side reasons come after DIVERGED."""

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


DIVERGENCE_GROWTH = 1e6
"""A row whose residual grows past this factor of its first residual has diverged."""


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
