"""Update rules for fixed-point iteration over a batch with per-row state: Picard and Anderson.

The solver owns the update, not the loop: the engine calls `update(state, y, G(y))` once per
tick. A row's history length `m` selects its rule (0 = damped Picard), so rows with different
solver options share one batch and one G-step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.reference import picard

ANDERSON_RIDGE = 1e-8
"""Ridge λ, relative to the mean diagonal of the residual Gram matrix."""

ANDERSON_MAX_WEIGHT = 1e4
"""Mixing weights with Σ|α| above this mean an ill-conditioned system: take a Picard step."""


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
        step = picard(y, gy, self.beta)
        if self.X is None or self.F is None:
            return step
        rows = torch.arange(y.shape[0], device=y.device)
        m = self.m.clamp(min=1)
        slot = self.count % m
        self.X[rows, slot] = y
        self.F[rows, slot] = gy
        self.count = self.count + 1
        alpha, ok = anderson_weights(self.F - self.X, torch.minimum(self.count, m))
        ok = ok & (self.m > 0)
        alpha = alpha.to(self.F.dtype)
        mixed_f = torch.einsum("bk,bkn->bn", alpha, self.F)
        mixed_x = torch.einsum("bk,bkn->bn", alpha, self.X)
        accel = torch.lerp(mixed_x, mixed_f, self.beta)
        return torch.where(ok.unsqueeze(1), accel, step)


def anderson_weights(r: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights α minimising ‖Σ α_i r_i‖ with Σ α_i = 1 over each row's first k history slots.

    Solves the bordered system [[0, 1ᵀ], [1, RRᵀ + λI]] [ν; α] = [1; 0] with λ scaled to the
    Gram matrix's mean diagonal. Returns (α (B, M), ok (B,)): ok is False where the system is
    singular, non-finite, or its weights blow up (the caller falls back to Picard there).
    """
    b, hist, _ = r.shape
    acc = torch.promote_types(r.dtype, torch.float32)
    r = r.to(acc)
    valid = torch.arange(hist, device=r.device).unsqueeze(0) < k.unsqueeze(1)
    vf = valid.to(acc)
    gram = torch.bmm(r, r.transpose(1, 2)) * (vf.unsqueeze(2) * vf.unsqueeze(1))
    scale = (torch.diagonal(gram, dim1=1, dim2=2).sum(1) / k.to(acc)).clamp(min=torch.finfo(acc).tiny)
    eye = torch.eye(hist, dtype=acc, device=r.device)
    gram = gram + eye * (ANDERSON_RIDGE * scale.view(b, 1, 1) * vf.unsqueeze(2) + (1 - vf).unsqueeze(2))
    h = torch.zeros(b, hist + 1, hist + 1, dtype=acc, device=r.device)
    h[:, 0, 1:] = vf
    h[:, 1:, 0] = vf
    h[:, 1:, 1:] = gram
    finite = torch.isfinite(h).flatten(1).all(1)
    h = torch.where(finite.view(b, 1, 1), h, torch.eye(hist + 1, dtype=acc, device=r.device))
    rhs = torch.zeros(b, hist + 1, 1, dtype=acc, device=r.device)
    rhs[:, 0] = 1.0
    sol, info = torch.linalg.solve_ex(h, rhs)
    alpha = sol[:, 1:, 0] * vf
    ok = finite & (info == 0) & torch.isfinite(alpha).all(1) & (alpha.abs().sum(1) < ANDERSON_MAX_WEIGHT)
    return alpha.nan_to_num(0.0), ok


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
