"""Update rules for fixed-point iteration over a batch with per-row state: Picard and Anderson.

The solver owns the update, not the loop: the engine calls `update(state, y, G(y))` once per
tick. A row's history length `m` selects its rule (0 = damped Picard), so rows with different
solver options share one batch and one G-step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.reference import (
    ANDERSON_MAX_WEIGHT,
    ANDERSON_RIDGE,
    anderson_mix,
    anderson_solve,
    gram_matrix,
    picard,
)


@dataclass
class SolverState:
    """Per-row solver state of a batch; every tensor has the rows as its first dimension.

    `beta` (B, 1) damping; `m` (B,) Anderson history length (0 = Picard); `X`, `F` (B, M, n)
    the last iterates and their images (None while no row of the batch uses Anderson);
    `count` (B,) how many history entries each row has written.
    """

    beta: torch.Tensor
    m: torch.Tensor
    count: torch.Tensor
    X: torch.Tensor | None = None
    F: torch.Tensor | None = None

    @staticmethod
    def new(beta: list[float], m: list[int], like: torch.Tensor) -> SolverState:
        """Fresh state for len(beta) rows whose iterates look like `like` (B, n)."""
        dev = like.device
        state = SolverState(
            beta=torch.tensor(beta, dtype=like.dtype, device=dev).unsqueeze(1),
            m=torch.tensor(m, dtype=torch.long, device=dev),
            count=torch.zeros(len(m), dtype=torch.long, device=dev),
        )
        if max(m) > 0:
            state.X = like.new_zeros(len(m), max(m), like.shape[1])
            state.F = like.new_zeros(len(m), max(m), like.shape[1])
        return state

    def select(self, idx: torch.Tensor) -> SolverState:
        """The state of the rows `idx`, in that order."""
        return SolverState(
            self.beta[idx],
            self.m[idx],
            self.count[idx],
            None if self.X is None else self.X[idx],
            None if self.F is None else self.F[idx],
        )

    def concat(self, other: SolverState, width: int) -> SolverState:
        """Rows of self then rows of other, iterates fitted to `width` state entries."""
        hist = max(_hist(self), _hist(other))
        xs = [_history(s, hist, width, "X") for s in (self, other)] if hist else None
        fs = [_history(s, hist, width, "F") for s in (self, other)] if hist else None
        return SolverState(
            torch.cat([self.beta, other.beta]),
            torch.cat([self.m, other.m]),
            torch.cat([self.count, other.count]),
            None if xs is None else torch.cat(xs),
            None if fs is None else torch.cat(fs),
        )

    def fit(self, width: int) -> SolverState:
        """The same rows with their history fitted to `width` state entries."""
        if self.X is None or self.X.shape[2] == width:
            return self
        hist = self.X.shape[1]
        return SolverState(
            self.beta, self.m, self.count, _history(self, hist, width, "X"), _history(self, hist, width, "F")
        )

    def update(self, y: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        """The next iterate of every row: Anderson where m > 0 and well-posed, else Picard."""
        if self.X is None or self.F is None:
            return picard(y, gy, self.beta)
        rows = torch.arange(y.shape[0], device=y.device)
        m = self.m.clamp(min=1)
        slot = self.count % m
        self.X[rows, slot] = y
        self.F[rows, slot] = gy
        self.count = self.count + 1
        k = torch.minimum(self.count, m)
        alpha, ok = anderson_solve(gram_matrix(self.X, self.F), k, ANDERSON_RIDGE, ANDERSON_MAX_WEIGHT)
        return anderson_mix(y, gy, self.X, self.F, alpha, ok & (self.m > 0), self.beta)


def _hist(s: SolverState) -> int:
    return 0 if s.X is None else s.X.shape[1]


def _history(s: SolverState, hist: int, width: int, which: str) -> torch.Tensor:
    """s.X or s.F padded to (rows, hist, width); zeros where s has no history."""
    t = getattr(s, which)
    rows = s.m.shape[0]
    out = s.beta.new_zeros(rows, hist, width)
    if t is not None:
        n = min(width, t.shape[2])
        out[:, : t.shape[1], :n] = t[:, :, :n]
    return out
