"""Per-row solver state of a batch, and the update every row takes once per G-step.

The solver owns the update, not the loop: the engine calls `update(y, G(y))` once per tick. Each
row has its own method (damped Picard, Anderson or Broyden), damping and history length, so rows
with different solver options share one batch and one G-step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from eqserve.kernels.dispatch import Backend
from eqserve.kernels.reference import picard
from eqserve.models.padding import Shape, refit
from eqserve.solvers import anderson, broyden

Method = Literal["picard", "anderson", "broyden"]
METHODS: tuple[Method, ...] = ("picard", "anderson", "broyden")


@dataclass
class SolverState:
    """Per-row solver state of a batch; every tensor has the rows as its first dimension.

    `beta` (B, 1) damping; `m` (B,) history slots in use, the memory length plus one for the newest
    point (0 = Picard); `count` (B,) steps taken;
    `broyden` (B,) True on Broyden's rows (the others with m > 0 are Anderson's), and `any_broyden`
    whether any row may be (known on the host, so that a batch without one never pays for it).
    While a row of the batch keeps a history, `hist` (B, M, 2n) is a ring of M slots of two halves
    of n entries: slot `count % m` holds the newest point (x, G(x) − x), the others the method's
    history (zero where unwritten); `gram` (B, M, M) fp64 holds the dot products of the slots'
    second halves, kept a row and a column per written slot. `rings` holds the slot counts of the
    Anderson rows the batch may hold (known on the host): their weights are solved once per count,
    at that size, so that a row's rounding does not depend on its mates.
    """

    beta: torch.Tensor
    m: torch.Tensor
    count: torch.Tensor
    broyden: torch.Tensor
    any_broyden: bool = False
    hist: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    rings: frozenset[int] = frozenset()

    @staticmethod
    def new(
        beta: list[float], m: list[int], like: torch.Tensor, method: list[str] | None = None
    ) -> SolverState:
        """Fresh state for len(beta) rows whose iterates look like `like` (B, n); `m` per row its
        memory length (Anderson's differences, Broyden's updates) and `method` (default: Anderson
        where m > 0, else Picard; a Picard row keeps no history)."""
        dev = like.device
        m = _slots_of(m, method)
        is_b = [x == "broyden" for x in method] if method else [False] * len(m)
        state = SolverState(
            beta=torch.tensor(beta, dtype=like.dtype, device=dev).unsqueeze(1),
            m=torch.tensor(m, dtype=torch.long, device=dev),
            count=torch.zeros(len(m), dtype=torch.long, device=dev),
            broyden=torch.tensor(is_b, dtype=torch.bool, device=dev),
            any_broyden=any(is_b),
            rings=_rings(m, is_b),
        )
        if max(m) > 0:
            state.hist = like.new_zeros(len(m), max(m), 2 * like.shape[1])
            state.gram = torch.zeros(len(m), max(m), max(m), dtype=anderson.GRAM_DTYPE, device=dev)
        return state

    @property
    def X(self) -> torch.Tensor | None:
        """The first halves of the history (B, M, n), a view of `hist`; None while no row keeps one."""
        return None if self.hist is None else self.hist[:, :, : self.hist.shape[2] // 2]

    def select(self, idx: torch.Tensor) -> SolverState:
        """The state of the rows `idx`, in that order (index_select: a third of indexing's cost)."""
        hist, gram = self.hist, self.gram
        return SolverState(
            self.beta.index_select(0, idx),
            self.m.index_select(0, idx),
            self.count.index_select(0, idx),
            self.broyden.index_select(0, idx),
            self.any_broyden,
            None if hist is None else hist.index_select(0, idx),
            None if gram is None else gram.index_select(0, idx),
            self.rings,
        )

    def restart(
        self, idx: torch.Tensor, beta: torch.Tensor, m: torch.Tensor, method: list[str] | None = None
    ) -> None:
        """Rows `idx` start afresh: damping `beta` (k, 1), memory `m` (k,) and `method` per row as in
        `new`; a memory past the batch's slots is cut to them. In place, one op per tensor."""
        is_b = [x == "broyden" for x in method] if method else [False] * len(idx)
        if method:
            m = m.masked_fill(torch.tensor([x == "picard" for x in method], device=m.device), 0)
        m = torch.where(m > 0, (m + 1).clamp(max=_slots(self)), 0)
        self.rings |= _rings(m.tolist(), is_b)
        self.beta.index_copy_(0, idx, beta)
        self.m.index_copy_(0, idx, m)
        self.count.index_fill_(0, idx, 0)
        self.broyden.index_copy_(0, idx, torch.tensor(is_b, dtype=torch.bool, device=idx.device))
        self.any_broyden |= any(is_b)
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
            torch.cat([self.broyden, other.broyden]),
            self.any_broyden or other.any_broyden,
            None if parts is None else torch.cat([p[0] for p in parts]),
            None if parts is None else torch.cat([p[1] for p in parts]),
            self.rings | other.rings,
        )

    def fit(self, old: Shape, new: Shape) -> SolverState:
        """The same rows with their history laid out for state shape `new` instead of `old` (zero
        padded or cut per axis: both halves of every slot are linear in the state)."""
        if self.hist is None or old == new:
            return self
        b, slots = self.hist.shape[:2]
        halves = self.hist.reshape(b, slots, 2, -1)
        hist = refit(halves, old, new).reshape(b, slots, -1)
        gram = anderson.gram(hist)
        return SolverState(
            self.beta, self.m, self.count, self.broyden, self.any_broyden, hist, gram, self.rings
        )

    def _padded(self, slots: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(hist, gram) with `slots` history slots of `width` entries: zeros where self has none."""
        b, dev = self.m.shape[0], self.m.device
        hist = self.beta.new_zeros(b, slots, 2 * width)
        gram = torch.zeros(b, slots, slots, dtype=anderson.GRAM_DTYPE, device=dev)
        if self.hist is not None and self.gram is not None:
            k = self.hist.shape[1]
            hist[:, :k] = self.hist
            gram[:, :k, :k] = self.gram
        return hist, gram

    def update(self, y: torch.Tensor, gy: torch.Tensor, backend: Backend = "torch") -> torch.Tensor:
        """The next iterate of every row: its method's where it has history and the step is sound,
        else damped Picard. Anderson's record and mix run as fused kernels on the Triton backend."""
        hist, gram = self.hist, self.gram
        if hist is None or gram is None:
            return picard(y, gy, self.beta)
        ring = self.m.clamp(min=1)
        point = torch.remainder(self.count, ring)
        prev = torch.remainder((self.count - 1).clamp_(min=0), ring)  # the point on a first step
        kept = broyden.held(self.count, ring, prev, hist.shape[1]) if self.any_broyden else None
        self.count += 1
        if kept is not None:
            pair = broyden.pair(y, gy, hist, prev, kept)
            diff = torch.cat([y, gy - y], 1) - hist[anderson.arange(len(prev), 1, y.device), prev]
            pair = torch.where(self.broyden.unsqueeze(1), pair, diff)
            anderson.record(y, gy, hist, gram, prev, point, pair)
        else:
            anderson.record_on(backend, y, gy, hist, gram, prev, point)
        gamma, ok = anderson.solve_sized(gram, point, ring, self.rings)
        gamma = torch.where(ok.unsqueeze(1), gamma, 0.0)
        wx, wf = gamma, gamma * self.beta.to(gamma.dtype)
        if not self.any_broyden:
            return anderson.mix_on(backend, y, gy, hist, wx, wf, self.beta)
        isb = self.broyden.unsqueeze(1)
        wx = torch.where(isb, broyden.weights(gram, point, self.beta, kept), wx)
        y_next = anderson.mix_on(backend, y, gy, hist, wx, torch.where(isb, 0.0, wf), self.beta)
        bad = isb & ~broyden.sound(y, gy, y_next, self.beta)
        return torch.where(bad, picard(y, gy, self.beta), y_next)


def _slots_of(m: list[int], method: list[str] | None) -> list[int]:
    """History slots per row: memory m and the newest point, or 0 on a Picard row."""
    if method is None:
        method = ["anderson"] * len(m)
    if len(method) != len(m) or not set(method) <= set(METHODS):
        raise ValueError(f"method must be one of {METHODS} per row, got {method}")
    return [0 if x == "picard" or k <= 0 else k + 1 for k, x in zip(m, method, strict=True)]


def _rings(slots: list[int], is_broyden: list[bool]) -> frozenset[int]:
    """The slot counts of the Anderson rows among rows with `slots` each (0 on Picard's)."""
    return frozenset(k for k, b in zip(slots, is_broyden, strict=True) if k > 0 and not b)


def _slots(s: SolverState) -> int:
    return 0 if s.hist is None else s.hist.shape[1]


def _width(s: SolverState) -> int:
    """State entries per row of the history (0 without one)."""
    return 0 if s.hist is None else s.hist.shape[2] // 2
