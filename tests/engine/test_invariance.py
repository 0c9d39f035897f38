"""Batch-invariant mode for a model that does not declare it: its rows step one at a time, at their own
shape, so a row amid mates of other widths has the bits it has alone."""

from __future__ import annotations

import torch

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob, SolveResult
from eqserve.models.base import Ctx
from eqserve.models.reciprocal import Reciprocal, ReciprocalInput


class Coupled(Reciprocal):
    """Reciprocal plus a small coupling y M of the row's entries: a product whose rounding depends on the
    batch and its padding (zero rows of M's cut meet the padding); it does not declare
    `batch_invariant`."""

    batch_invariant = False

    def __init__(self) -> None:
        super().__init__(dtype=torch.float32)
        self.register_buffer("coupling", torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) / 8)

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        n = y.shape[1]
        return super().step(y, ctx) + torch.tanh(y @ self.coupling[:n, :n]) * ctx.get("mask", 1.0)


def solve(model: Coupled, xs: list[list[float]], invariant: bool) -> SolveResult:
    engine = Engine(model, batch_invariant=invariant, torch_threads=1)
    futures = []
    for i, x in enumerate(xs):
        ctx = model.encode(ReciprocalInput(x=x, eta=0.5))
        y0 = torch.rand(1, len(x), generator=torch.Generator().manual_seed(i))  # no zeros: y M must round
        job = SolveJob(id=str(i), ctx=ctx, y0=y0, max_iters=12, tol=0.0, return_state=True)
        futures.append(engine.submit(job))
    engine.start()
    try:
        return next(f.result(30) for f in futures)
    finally:
        engine.stop()


def test_rows_of_an_undeclared_model_step_alone_in_invariant_mode() -> None:
    model = Coupled()
    row = [0.2 + 0.03 * i for i in range(50)]
    mates = [[0.5] * 64, [0.9, 1.2], [0.4] * 20]
    alone = solve(model, [row], invariant=True)
    crowd = solve(model, [row, *mates], invariant=True)
    assert (crowd.status, crowd.iterations, crowd.state) == (alone.status, alone.iterations, alone.state)
