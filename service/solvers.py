"""Update rules for fixed-point iteration over a batch with per-row state: Picard and Anderson.

The solver owns the update, not the loop: the engine calls `update(state, y, G(y))` once per
tick. A row's history length `m` selects its rule (0 = damped Picard), so rows with different
solver options share one batch and one G-step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.reference import ANDERSON_MAX_WEIGHT, ANDERSON_RIDGE, anderson_solve, picard

GRAM_DTYPE = torch.float64
"""The kept Gram matrix and its solve run in fp64: (M, M) per row costs next to nothing, and the
bordered system stays solvable with a relative ridge far below fp32's resolution."""


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
            state.gram = torch.zeros(len(m), max(m), max(m), dtype=GRAM_DTYPE, device=dev)
        return state

    @property
    def X(self) -> torch.Tensor | None:
        """The iterate history (B, M, n), a view of `hist`; None while no row uses Anderson."""
        return None if self.hist is None else self.hist[:, :, : self.hist.shape[2] // 2]

    @property
    def R(self) -> torch.Tensor | None:
        """The residual history G(X) − X (B, M, n), a view of `hist`."""
        return None if self.hist is None else self.hist[:, :, self.hist.shape[2] // 2 :]

    @property
    def F(self) -> torch.Tensor | None:
        """The image history G(X) = X + R (B, M, n), computed (the layout before residuals were kept)."""
        x, r = self.X, self.R
        return None if x is None or r is None else x + r

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

    def concat(self, other: SolverState, width: int) -> SolverState:
        """Rows of self then rows of other, iterates fitted to `width` state entries."""
        hist = max(_slots(self), _slots(other))
        parts = [s.fit(width)._padded(hist, width) for s in (self, other)] if hist else None
        return SolverState(
            torch.cat([self.beta, other.beta]),
            torch.cat([self.m, other.m]),
            torch.cat([self.count, other.count]),
            None if parts is None else torch.cat([p[0] for p in parts]),
            None if parts is None else torch.cat([p[1] for p in parts]),
        )

    def fit(self, width: int) -> SolverState:
        """The same rows with their history fitted to `width` state entries (zero padded or cut)."""
        if self.hist is None or self.hist.shape[2] == 2 * width:
            return self
        old = self.hist.shape[2] // 2
        n = min(width, old)
        hist = self.hist.new_zeros(self.hist.shape[0], self.hist.shape[1], 2 * width)
        hist[:, :, :n] = self.hist[:, :, :n]
        hist[:, :, width : width + n] = self.hist[:, :, old : old + n]
        r = hist[:, :, width:].to(GRAM_DTYPE)
        return SolverState(self.beta, self.m, self.count, hist, torch.bmm(r, r.mT))

    def _padded(self, slots: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(hist, gram) with `slots` history slots of `width` entries: zeros where self has none."""
        b, dev = self.m.shape[0], self.m.device
        hist = self.beta.new_zeros(b, slots, 2 * width)
        gram = torch.zeros(b, slots, slots, dtype=GRAM_DTYPE, device=dev)
        if self.hist is not None and self.gram is not None:
            k = self.hist.shape[1]
            hist[:, :k] = self.hist
            gram[:, :k, :k] = self.gram
        return hist, gram

    def update(self, y: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        """The next iterate of every row: Anderson where m > 0 and well-posed, else Picard."""
        if self.hist is None or self.gram is None:
            return picard(y, gy, self.beta)
        b, slots, two_n = self.hist.shape
        n = two_n // 2
        slot = torch.remainder(self.count, self.m.clamp(min=1))
        pos = torch.arange(0, b * slots, slots, device=y.device).add_(slot)
        self.count += 1
        r = gy - y
        latest = torch.cat([y, r], 1)
        self.hist.view(b * slots, two_n).index_copy_(0, pos, latest)
        # the new residual against every slot (itself included): its row and column of RRᵀ
        acc = torch.promote_types(y.dtype, torch.float32)  # bf16 histories: fp32 dot products
        g = torch.bmm(r.unsqueeze(1).to(acc), self.hist[:, :, n:].mT.to(acc)).to(GRAM_DTYPE)
        self.gram.view(b * slots, slots).index_copy_(0, pos, g.squeeze(1))
        self.gram.scatter_(2, slot.view(b, 1, 1).expand(b, slots, 1), g.mT)
        alpha, ok = anderson_solve(self.gram, None, ANDERSON_RIDGE, ANDERSON_MAX_WEIGHT)
        # where the solve failed, the weight 1 on the newest slot: the Picard step y + β(G(y) − y)
        newest = torch.arange(slots, device=y.device) == slot.unsqueeze(1)
        alpha = torch.where(ok.unsqueeze(1), alpha, newest).to(y.dtype)
        # Σα_i (X_i + βR_i) = y + βr + Σα_i ((X_i − y) + β(R_i − r)) because Σα_i = 1. The differences
        # are small near the fixed point, so their weighted sum rounds far less than Σα_i X_i, whose
        # terms are as large as the state: at h = 1024 in fp32 that rounding held m = 10 above 1e-6.
        # One product: (hist − latest) (B, M, 2n) is (B, 2M, n) with X_i, R_i at rows 2i, 2i+1.
        w = torch.stack([alpha, alpha * self.beta], 2).view(b, 1, 2 * slots)
        delta = (self.hist - latest.unsqueeze(1)).view(b, 2 * slots, n)
        return torch.bmm(w, delta).view(b, n) + picard(y, gy, self.beta)


def _slots(s: SolverState) -> int:
    return 0 if s.hist is None else s.hist.shape[1]
