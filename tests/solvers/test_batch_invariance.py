"""A row's iterates are bitwise its solo ones while mates of other methods, memories and widths join
(concat, or taking over a retired slot by restart), leave (select) and change the batch's width (fit),
as the engine does with them: G is elementwise, so only the solver could make a row's rounding
depend on its batch."""

from __future__ import annotations

import random

import pytest
import torch

from eqserve.solvers import SolverState

STEPS = 40
MEMORIES = (0, 1, 3, 5, 7)
MATE_WIDTHS = (1, 40)
"""Mates' widths: wide enough that the batch's products take other BLAS paths than the row's alone."""
METHODS = ("picard", "anderson", "broyden")


def _g(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reciprocal's step y − (x·y − 1) elementwise, zero on the padding (where x is 0)."""
    return torch.where(x != 0, y - (x * y - 1), 0.0)


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))


_Row = tuple[torch.Tensor, torch.Tensor, float, int, str]
"""x (1, width), the start y0, damping, memory, method."""


class _Batch:
    """Rows of one padded width: their x (zero on the padding), iterates and solver state."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.x = torch.zeros(0, 1, dtype=torch.float64)
        self.y = torch.zeros(0, 1, dtype=torch.float64)
        self.state: SolverState | None = None
        self.target = -1
        """The row under test (-1 until it has joined)."""

    @property
    def width(self) -> int:
        return self.x.shape[1]

    def slots(self) -> int:
        return 0 if self.state is None or self.state.hist is None else self.state.hist.shape[1]

    def mate(self, width: int, slots: int | None = None) -> _Row:
        """A random row: x (1, width), its start, damping, memory (fitting `slots` where given), method."""
        rng = self.rng
        x = torch.tensor([[rng.uniform(0.2, 1.8) for _ in range(width)]], dtype=torch.float64)
        y0 = torch.tensor([[rng.uniform(-1.0, 1.0) for _ in range(width)]], dtype=torch.float64)
        method = rng.choice(METHODS)
        fitting = [k for k in MEMORIES[1:] if slots is None or k + 1 <= slots]
        m = 0 if method == "picard" else rng.choice(fitting)
        return x, y0, rng.choice([1.0, 0.7]), m, method

    def refit(self, width: int) -> None:
        """The whole batch laid out `width` entries wide (padding added or cut)."""
        if width == self.width:
            return
        if self.state is not None:
            self.state = self.state.fit((self.width,), (width,))
        if width > self.width:
            self.x, self.y = _pad(self.x, width), _pad(self.y, width)
        else:
            self.x, self.y = self.x[:, :width], self.y[:, :width]

    def append(self, x: torch.Tensor, y0: torch.Tensor, beta: float, m: int, method: str) -> None:
        if self.state is None:
            self.x, self.y, self.state = x, y0, SolverState.new([beta], [m], y0, [method])
            return
        self.refit(max(self.width, x.shape[1]))
        x, y0 = _pad(x, self.width), _pad(y0, self.width)
        self.state = self.state.concat(SolverState.new([beta], [m], y0, [method]))
        self.x, self.y = torch.cat([self.x, x]), torch.cat([self.y, y0])

    def take_over(self, i: int, x: torch.Tensor, y0: torch.Tensor, beta: float, m: int, method: str) -> None:
        assert self.state is not None and x.shape[1] <= self.width and (m == 0 or m + 1 <= self.slots())
        idx = torch.tensor([i])
        self.state.restart(idx, torch.tensor([[beta]], dtype=torch.float64), torch.tensor([m]), [method])
        self.x = self.x.index_copy(0, idx, _pad(x, self.width))
        self.y = self.y.index_copy(0, idx, _pad(y0, self.width))

    def leave(self, i: int, own_widths: list[int]) -> None:
        """Row i leaves: the others compacted in order, the width cut to the widest of them."""
        assert self.state is not None
        keep = [k for k in range(len(self.x)) if k != i]
        idx = torch.tensor(keep)
        self.state = self.state.select(idx)
        self.x, self.y = self.x.index_select(0, idx), self.y.index_select(0, idx)
        if self.target >= 0:
            self.target = keep.index(self.target)
        del own_widths[i]
        self.refit(max(own_widths))

    def event(self, own_widths: list[int]) -> None:
        """One random change of the batch's mates."""
        rng = self.rng
        mates = [k for k in range(len(self.x)) if k != self.target]
        kind = rng.choice(["join", "join", "leave", "take_over", "none"])
        if kind == "join" and len(self.x) < 8:
            width = rng.randint(*MATE_WIDTHS)
            self.append(*self.mate(width))
            own_widths.append(width)
        elif kind == "leave" and mates and len(self.x) > 1:
            self.leave(rng.choice(mates), own_widths)
        elif kind == "take_over" and mates and self.slots():
            i = rng.choice(mates)
            width = rng.randint(1, self.width)
            self.take_over(i, *self.mate(width, self.slots()))
            own_widths[i] = width


def _solo(x: torch.Tensor, y0: torch.Tensor, beta: float, m: int, method: str) -> list[torch.Tensor]:
    state = SolverState.new([beta], [m], y0, [method])
    y, out = y0, []
    for _ in range(STEPS):
        y = state.update(y, _g(y, x))
        out.append(y)
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("method", ["anderson", "broyden"])
def test_row_through_joins_leaves_and_refits_matches_it_alone(method: str, seed: int) -> None:
    rng = random.Random(f"{method}-{seed}")
    batch = _Batch(rng)
    own_widths: list[int] = []
    for _ in range(rng.randint(0, 4)):
        batch.event(own_widths)
    width, m = rng.randint(6, 24), rng.choice([1, 2, 3, 5])
    x = torch.tensor([[rng.uniform(0.2, 1.8) for _ in range(width)]], dtype=torch.float64)
    y0 = torch.tensor([[rng.uniform(-1.0, 1.0) for _ in range(width)]], dtype=torch.float64)
    beta = rng.choice([1.0, 0.7])
    if len(batch.x) and width <= batch.width and m + 1 <= batch.slots() and rng.random() < 0.5:
        batch.target = rng.randrange(len(batch.x))  # a retired slot, as the engine places what fits
        batch.take_over(batch.target, x, y0, beta, m, method)
        own_widths[batch.target] = width
    else:
        batch.append(x, y0, beta, m, method)
        batch.target = len(batch.x) - 1
        own_widths.append(width)
    want = _solo(x, y0, beta, m, method)
    for step in range(STEPS):
        if step:
            batch.event(own_widths)
        assert batch.state is not None
        batch.y = batch.state.update(batch.y, _g(batch.y, batch.x))
        got = batch.y[batch.target : batch.target + 1]
        assert torch.equal(got[:, :width], want[step]), (step, got[:, :width] - want[step])
        assert not got[:, width:].any()
