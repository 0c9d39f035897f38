"""One sequence's keys and values, with Huginn's "latest" rule for core steps a token did not run.

Prelude and coda layers hold one entry per position. The core block holds one entry per position per
recurrence step; a token at step j reads an earlier token's step j, or that token's last step where it
stopped sooner (Huginn's `latest` lookup). Committed positions never change, so the cache keeps, for
each step j seen so far, the entries every committed position shows a step-j reader (`views[j]`), and
each position's last entry (`latest`) for readers past every view; a reader then slices one tensor.
"""

from __future__ import annotations

import torch

from eqserve.models.looped_lm.layers import KV


def _grown(t: torch.Tensor, rows: int) -> torch.Tensor:
    """`t` with at least `rows` rows along axis 0 (doubling, so appends stay amortised O(1))."""
    if t.shape[0] >= rows:
        return t
    out = t.new_zeros(max(rows, 2 * t.shape[0]), *t.shape[1:])
    out[: t.shape[0]] = t
    return out


class LoopedCache:
    """Keys and values of a sequence's committed positions, and the current token's until it commits.

    Every layer's entry is a (2, heads, head_dim) slice (keys, values) of a tensor laid out
    (position, layer, 2, heads, head_dim).
    """

    def __init__(self, prelude: int, core: int, coda: int, heads: int, head_dim: int) -> None:
        self.n = 0
        """Committed positions; the current token sits at position `n`."""
        self.steps: list[int] = []
        """Core steps each committed position ran."""
        self._shape = (heads, head_dim)
        self._prelude = torch.zeros(0, prelude, 2, heads, head_dim)
        self._coda = torch.zeros(0, coda, 2, heads, head_dim)
        self._latest = torch.zeros(0, core, 2, heads, head_dim)
        self._views: list[torch.Tensor] = []
        self._pending: dict[int, torch.Tensor] = {}
        """The current token's core entries by step: (core layers, 2, heads, head_dim)."""
        self._core_layers = core

    @property
    def pending_steps(self) -> int:
        """Core steps the current token has recorded."""
        return len(self._pending)

    def _layer(self, t: torch.Tensor, layer: int) -> KV:
        return t[: self.n, layer, 0], t[: self.n, layer, 1]

    def prelude(self, layer: int) -> KV:
        """Prelude keys and values of the committed positions, (n, heads, head_dim) each."""
        return self._layer(self._prelude, layer)

    def coda(self, layer: int) -> KV:
        """Coda keys and values of the committed positions."""
        return self._layer(self._coda, layer)

    def core(self, step: int, layer: int) -> KV:
        """Core keys and values a reader at `step` sees: each position's `step`, or its last if fewer."""
        return self._layer(self._views[step] if step < len(self._views) else self._latest, layer)

    def put_prelude(self, entries: torch.Tensor) -> None:
        """The current token's prelude entries (prelude layers, 2, heads, head_dim)."""
        self._prelude = _grown(self._prelude, self.n + 1)
        self._prelude[self.n] = entries

    def put_core(self, step: int, entries: torch.Tensor) -> None:
        """The current token's core entries at `step` (core layers, 2, heads, head_dim)."""
        self._pending[step] = entries

    def commit(self, coda: torch.Tensor) -> None:
        """The current token is done: keep its coda entries and its core steps; move on one position."""
        ran = len(self._pending)
        if sorted(self._pending) != list(range(ran)) or ran == 0:
            raise ValueError(f"a token commits after core steps {sorted(self._pending)}, not 0, 1, ...")
        n = self.n
        self._coda = _grown(self._coda, n + 1)
        self._coda[n] = coda
        last = self._pending[ran - 1]
        for j, view in enumerate(self._views):
            view = self._views[j] = _grown(view, n + 1)
            view[n] = self._pending[min(j, ran - 1)]
        for j in range(len(self._views), ran):  # steps no earlier position ran: they read its latest
            view = _grown(self._latest.clone(), n + 1)
            view[n] = self._pending[j]
            self._views.append(view)
        self._latest = _grown(self._latest, n + 1)
        self._latest[n] = last
        self._pending = {}
        self.steps.append(ran)
        self.n = n + 1

    def fill(self, prelude: torch.Tensor, core: list[torch.Tensor], coda: torch.Tensor) -> None:
        """An empty cache takes whole positions at once: prelude and coda (T, layers, 2, H, hd), and the
        core's entries of every position at each step j, `core[j]` (T, core layers, 2, H, hd)."""
        if self.n or self._pending:
            raise ValueError("only an empty cache is filled at once")
        self._prelude, self._coda = prelude.clone(), coda.clone()
        self._views = [c.clone() for c in core]
        self._latest = core[-1].clone()
        self.n = prelude.shape[0]
        self.steps = [len(core)] * self.n
