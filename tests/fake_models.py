"""Models for tests only: the reciprocal operator with rows that fault on purpose, or slow on purpose."""

from __future__ import annotations

import threading
import time

import torch

from eqserve.models.base import Ctx, ImplicitModel
from eqserve.models.reciprocal import Reciprocal, ReciprocalInput

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


class GatedEncode(Reciprocal):
    """Reciprocal whose encode blocks until `release` is set (at most `wait_s`), like a slow encode
    (lp-gnn's HiGHS reference): `entered` and `returned` tell where it is."""

    name = "gated-encode"

    def __init__(self, wait_s: float) -> None:
        super().__init__()
        self.wait_s = wait_s
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def encode(self, inp: ReciprocalInput) -> Ctx:  # type: ignore[override]
        if inp.x == [self.GATED_X]:
            self.entered.set()
            self.release.wait(self.wait_s)
            self.returned.set()
        return super().encode(inp)

    GATED_X = 0.375
    """The input x whose encode is gated (the example input, encoded at start-up, is not)."""


BROKEN_X = 1.1
"""An input holding this x makes BrokenShape's state_shape fail."""


class BrokenShape(Reciprocal):
    """Reciprocal whose state_shape fails as a bug would on BROKEN_X, with a text that tells of the
    server's insides (an encode that fails is the input's fault instead: a 422 with its message)."""

    name = "broken-shape"
    SECRET = "/srv/internal/path"

    def state_shape(self, ctx: Ctx) -> tuple[int, ...]:
        if (ctx["x"] == BROKEN_X).any():
            raise ValueError(f"cannot open {self.SECRET}")
        return super().state_shape(ctx)


class SleepyStep(Reciprocal):
    """Reciprocal whose every step sleeps `sleep_s`: a model whose solves take known wall time."""

    name = "sleepy"

    def __init__(self, sleep_s: float) -> None:
        super().__init__()
        self.sleep_s = sleep_s

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        time.sleep(self.sleep_s)
        return super().step(y, ctx)


HANG_X = 1.5
"""A batch holding a row with this x makes Hanging's step block."""


class Hanging(Reciprocal):
    """Reciprocal whose step blocks on a batch holding HANG_X until `release` is set (at most `wait_s`),
    as a model that deadlocks would; `entered` tells that it blocks. Once released it steps as usual."""

    name = "hanging"

    def __init__(self, wait_s: float) -> None:
        super().__init__()
        self.wait_s = wait_s
        self.entered = threading.Event()
        self.release = threading.Event()

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        if (ctx["x"] == HANG_X).any():
            self.entered.set()
            self.release.wait(self.wait_s)
        return super().step(y, ctx)


COLLATE_X = 1.2
"""A request holding this x makes BadCollate's collate fail, alone or not."""

PAIR_X = 1.4
"""A request holding this x makes BadCollate's collate fail once it shares the batch."""


class BadCollate(SleepyStep):
    """Reciprocal whose collate fails as a bug would on COLLATE_X, and on PAIR_X beside other rows;
    its steps sleep, so a solve is in flight when another request arrives."""

    name = "bad-collate"

    def collate(self, ctxs: list[Ctx]) -> Ctx:
        if any((c["x"] == COLLATE_X).any() for c in ctxs):
            raise RuntimeError("collate failed")
        if len(ctxs) > 1 and any((c["x"] == PAIR_X).any() for c in ctxs):
            raise RuntimeError("collate failed in company")
        return super().collate(ctxs)
