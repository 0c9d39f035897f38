"""A test model with a 2-D state: Jacobi sweeps of a screened Poisson problem on an n×m grid."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from eqserve.models.base import Ctx, FiniteFloat, ImplicitModel

KERNEL = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


class GridInput(BaseModel):
    """The source f on the grid (rows of equal length)."""

    model_config = ConfigDict(extra="forbid")
    f: list[list[FiniteFloat]]


class GridOutput(BaseModel):
    """The field u."""

    u: list[list[float]]


class Grid(ImplicitModel):
    """u ← c·(sum of the 4 neighbours)/4 + f, zero outside the grid; a contraction with factor c < 1.

    Zero padding per axis is exactly the zero boundary, so a padded row iterates as it would alone.
    """

    name = "grid"
    Input = GridInput
    Output = GridOutput
    example_input = {"f": [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]}  # noqa: RUF012
    defaults = {"max_iters": 500, "tol": 1e-10}  # noqa: RUF012
    state_dtype = torch.float64

    def __init__(self, c: float = 0.9) -> None:
        super().__init__()
        self.c = c

    def encode(self, inp: GridInput) -> Ctx:  # type: ignore[override]
        return {"f": torch.tensor([inp.f], dtype=torch.float64)}

    def state_shape(self, ctx: Ctx) -> tuple[int, ...]:
        return tuple(ctx["f"].shape[1:])

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        near = F.conv2d(y.unsqueeze(1), KERNEL.to(y).view(1, 1, 3, 3), padding=1).squeeze(1)
        return self.c * near / 4 + ctx["f"]

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        return {"u": y[0].tolist()}
