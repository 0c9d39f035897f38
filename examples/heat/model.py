"""Steady heat on the unit square: -Δu = f with u = 0 on the boundary, on an n×n grid of interior points.

G(u) = u + K * r(u), where r(u) = h²f + Δ_h u is the 5-point residual and K a learned 5×5 stencil
(symmetric under the square's rotations and reflections: six taps). Any K that keeps G contractive has
the exact discrete solution as its only fixed point, so learning K cannot make the answer wrong, only
reach it in fewer iterations; K = δ/4 is plain Jacobi. `train.py` learns the taps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from eqserve import ImplicitModel, InputError

JACOBI = (0.25, 0.0, 0.0, 0.0, 0.0, 0.0)
"""The taps of plain Jacobi: K = δ/4."""

TAP_OF = torch.tensor(
    [
        [5, 4, 3, 4, 5],
        [4, 2, 1, 2, 4],
        [3, 1, 0, 1, 3],
        [4, 2, 1, 2, 4],
        [5, 4, 3, 4, 5],
    ]
)
"""Which of the six taps each entry of the 5×5 stencil takes (its offset's |i|, |j| up to order)."""

LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


class HeatInput(BaseModel):
    """The heat source f on the grid's interior points, an n×n list."""

    model_config = ConfigDict(extra="forbid")
    f: list[list[float]]


class HeatOutput(BaseModel):
    """The temperature u on the same points."""

    u: list[list[float]]


class Heat(ImplicitModel):
    """Steady 2-D heat (-Δu = f, u = 0 on the boundary) by a learned 5×5 residual correction."""

    Input = HeatInput
    Output = HeatOutput

    def __init__(self) -> None:
        super().__init__()
        self.taps = torch.nn.Parameter(torch.tensor(JACOBI, dtype=torch.float64))
        self.register_buffer("tap_of", TAP_OF.clone(), persistent=False)
        self.register_buffer("laplace", LAPLACE.clone().to(torch.float64).view(1, 1, 3, 3), persistent=False)

    def encode(self, inp: BaseModel) -> dict[str, torch.Tensor]:
        rows = inp.f  # type: ignore[attr-defined]
        n = len(rows)
        if n < 2 or any(len(r) != n for r in rows):
            raise InputError(
                "f",
                f"f must be a square n×n list with n ≥ 2; got {n} rows of lengths "
                f"{sorted({len(r) for r in rows})}",
            )
        f = torch.tensor(rows, dtype=self.dtype(), device=self.device())
        h = 1.0 / (n + 1)
        # The mask marks the row's own points: padded into a larger batch, the row stays alone.
        return {"b": (h * h * f)[None], "mask": torch.ones_like(f)[None]}

    def state_shape(self, ctx: dict[str, torch.Tensor]) -> tuple[int, ...]:
        return tuple(ctx["b"].shape[1:])

    def kernel(self) -> torch.Tensor:
        """The 5×5 stencil K from its six taps, shaped for conv2d."""
        return self.taps[self.tap_of].view(1, 1, 5, 5)

    def step(self, y: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = ctx["mask"]
        r = (ctx["b"] + F.conv2d(y.unsqueeze(1), self.laplace, padding=1).squeeze(1)) * mask
        return (y + F.conv2d(r.unsqueeze(1), self.kernel(), padding=2).squeeze(1)) * mask

    def decode(self, y: torch.Tensor, ctx: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"u": y[0].tolist()}
