"""Models for tests only: the reciprocal operator with rows that fault on purpose."""

from __future__ import annotations

import torch

from eqserve.models.base import Ctx, ImplicitModel
from eqserve.models.reciprocal import Reciprocal

NAN_X = 1.7
"""A row holding this x turns NaN at its second iteration."""

BLOWUP_X = 1.9
"""A row holding this x grows without bound."""

RAISE_X = 1.3
"""A batch holding a row with this x makes the step raise."""


class Faulty(Reciprocal):
    """Reciprocal, except rows carrying NAN_X, BLOWUP_X or RAISE_X misbehave as named."""

    name = "faulty"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        self.calls += 1
        x = ctx["x"]
        if (x == RAISE_X).any():
            raise RuntimeError("boom")
        g = super().step(y, ctx)
        nan_rows = (x == NAN_X).any(1, keepdim=True) & (y.abs().sum(1, keepdim=True) > 0.5)
        g = torch.where(nan_rows, torch.nan, g)
        blow_rows = (x == BLOWUP_X).any(1, keepdim=True)
        return torch.where(blow_rows, 10 * y + 1, g)


class RowAligned(Reciprocal):
    """Reciprocal with the default, row-aligned collate (so every request needs the same length of x):
    the engine hands its newcomers retired rows' slots, which a padded model's re-collation cannot."""

    name = "reciprocal-rows"
    collate = ImplicitModel.collate
