"""Update rules for fixed-point iteration over a batch with per-row state: Picard and Anderson.

The solver owns the update, not the loop: the engine calls `update(state, y, G(y))` once per
tick. A row's history length `m` selects its rule (0 = damped Picard), so rows with different
solver options share one batch and one G-step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eqserve.kernels.dispatch import Backend, anderson_mix, anderson_record
from eqserve.kernels.reference import (
    ANDERSON_GRAM_DTYPE,
    ANDERSON_MAX_WEIGHT,
    ANDERSON_RIDGE,
    anderson_gram,
    anderson_solve,
    picard,
)
from eqserve.models.padding import Shape, refit


@dataclass
class SolverState:
    """Per-row solver state of a batch; every tensor has the rows as its first dimension.

    `beta` (B, 1) damping; `m` (B,) Anderson history length (0 = Picard); `count` (B,) how many
    history entries each row has written. While a row of the batch uses Anderson, `hist` (B, M, 2n)
    is a ring buffer of the last iterates X and their residuals R = G(X) − X side by side (slot
    `count % m` is written next; slots a row has not written are zero), and `gram` (B, M, M) is
    RRᵀ, kept a row and a column per step.
    """

    beta: torch.Tensor
    m: torch.Tensor
    count: torch.Tensor
    hist: torch.Tensor | None = None
    gram: torch.Tensor | None = None

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
            state.hist = like.new_zeros(len(m), max(m), 2 * like.shape[1])
            state.gram = torch.zeros(len(m), max(m), max(m), dtype=ANDERSON_GRAM_DTYPE, device=dev)
        return state

    @property
    def X(self) -> torch.Tensor | None:
        """The iterate history (B, M, n), a view of `hist`; None while no row uses Anderson."""
        return None if self.hist is None else self.hist[:, :, : self.hist.shape[2] // 2]

    def select(self, idx: torch.Tensor) -> SolverState:
        """The state of the rows `idx`, in that order (index_select: a third of indexing's cost)."""
        hist, gram = self.hist, self.gram
        return SolverState(
            self.beta.index_select(0, idx),
            self.m.index_select(0, idx),
            self.count.index_select(0, idx),
            None if hist is None else hist.index_select(0, idx),
            None if gram is None else gram.index_select(0, idx),
        )

    def restart(self, idx: torch.Tensor, beta: torch.Tensor, m: torch.Tensor) -> None:
        """Rows `idx` start afresh: damping `beta` (k, 1), history length `m` (k,) at most the batch's
        slots (0 where no row keeps a history), nothing written yet. In place, one op per tensor."""
        self.beta.index_copy_(0, idx, beta)
        self.m.index_copy_(0, idx, m)
        self.count.index_fill_(0, idx, 0)
        if self.hist is not None and self.gram is not None:
            self.hist.index_fill_(0, idx, 0)
            self.gram.index_fill_(0, idx, 0)

    def concat(self, other: SolverState) -> SolverState:
        """Rows of self then rows of other (both laid out for the same state shape)."""
        hist = max(_slots(self), _slots(other))
        width = max(_width(self), _width(other))
        parts = [s._padded(hist, width) for s in (self, other)] if hist else None
        return SolverState(
            torch.cat([self.beta, other.beta]),
            torch.cat([self.m, other.m]),
            torch.cat([self.count, other.count]),
            None if parts is None else torch.cat([p[0] for p in parts]),
            None if parts is None else torch.cat([p[1] for p in parts]),
        )

    def fit(self, old: Shape, new: Shape) -> SolverState:
        """The same rows with their history laid out for state shape `new` instead of `old` (zero
        padded or cut per axis)."""
        if self.hist is None or old == new:
            return self
        b, slots = self.hist.shape[:2]
        halves = self.hist.reshape(b, slots, 2, -1)
        hist = refit(halves, old, new).reshape(b, slots, -1)
        return SolverState(self.beta, self.m, self.count, hist, anderson_gram(hist))

    def _padded(self, slots: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(hist, gram) with `slots` history slots of `width` entries: zeros where self has none."""
        b, dev = self.m.shape[0], self.m.device
        hist = self.beta.new_zeros(b, slots, 2 * width)
        gram = torch.zeros(b, slots, slots, dtype=ANDERSON_GRAM_DTYPE, device=dev)
        if self.hist is not None and self.gram is not None:
            k = self.hist.shape[1]
            hist[:, :k] = self.hist
            gram[:, :k, :k] = self.gram
        return hist, gram

    def update(self, y: torch.Tensor, gy: torch.Tensor, backend: Backend = "torch") -> torch.Tensor:
        """The next iterate of every row: Anderson where m > 0 and well-posed, else Picard. The
        history's record and mixing run as fused kernels on the Triton backend."""
        if self.hist is None or self.gram is None:
            return picard(y, gy, self.beta)
        slots = self.hist.shape[1]
        slot = torch.remainder(self.count, self.m.clamp(min=1))
        self.count += 1
        anderson_record(y, gy, self.hist, self.gram, slot, backend)
        alpha, ok = anderson_solve(self.gram, ANDERSON_RIDGE, ANDERSON_MAX_WEIGHT)
        # where the solve failed, the weight 1 on the newest slot: the Picard step y + β(G(y) − y)
        newest = torch.arange(slots, device=y.device) == slot.unsqueeze(1)
        return anderson_mix(y, gy, self.hist, torch.where(ok.unsqueeze(1), alpha, newest), self.beta, backend)


def _slots(s: SolverState) -> int:
    return 0 if s.hist is None else s.hist.shape[1]


def _width(s: SolverState) -> int:
    """State entries per row of the history (0 without one)."""
    return 0 if s.hist is None else s.hist.shape[2] // 2
