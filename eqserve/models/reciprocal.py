"""The paper's toy case: G(y, x) = y − η(x·y − 1), whose fixed point is 1/x."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from eqserve.models.base import (
    Ctx,
    EvalReport,
    FiniteFloat,
    ImplicitModel,
    InputError,
    run_iterations,
)
from eqserve.models.padding import pad_rows


class ReciprocalInput(BaseModel):
    """Any number of x values and an optional step size η."""

    model_config = ConfigDict(extra="forbid")
    x: list[FiniteFloat] = Field(min_length=1)
    eta: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class ReciprocalOutput(BaseModel):
    """The iterate, elementwise ≈ 1/x at the fixed point."""

    y: list[float]


class Reciprocal(ImplicitModel):
    """Elementwise y ← y − η(x·y − 1); a contraction exactly where 0 < η·x < 2."""

    name = "reciprocal"
    Input = ReciprocalInput
    Output = ReciprocalOutput
    description = "G(y, x) = y − η(x·y − 1) elementwise; converges to 1/x for 0 < η·x < 2"
    example_input = {"x": [0.25, 0.5, 1.0, 1.5], "eta": 1.0}  # noqa: RUF012
    defaults = {"max_iters": 200, "tol": 1e-8}  # noqa: RUF012
    batch_invariant = True  # elementwise and exactly rounded: no op of the step reduces across entries

    def __init__(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> None:
        super().__init__()
        # No parameters: an empty buffer carries the state's dtype and device through `.to()`.
        self.register_buffer("anchor", torch.zeros(0, dtype=dtype, device=device), persistent=False)

    def encode(self, inp: ReciprocalInput) -> Ctx:  # type: ignore[override]
        for i, xi in enumerate(inp.x):
            if not 0.0 < inp.eta * xi < 2.0:
                raise InputError(
                    f"input.x.{i}",
                    f"x[{i}] = {xi} with eta = {inp.eta}: G is a contraction only where 0 < eta*x < 2",
                )
        dtype, device = self.dtype(), self.device()
        x = torch.tensor([inp.x], dtype=dtype, device=device)
        return {"x": x, "eta": torch.full((1, 1), inp.eta, dtype=dtype, device=device)}

    def state_shape(self, ctx: Ctx) -> tuple[int, ...]:
        return (ctx["x"].shape[1],)

    def collate(self, ctxs: list[Ctx]) -> Ctx:
        x, mask = pad_rows([c["x"] for c in ctxs])
        return {"x": x, "mask": mask.to(x.dtype), "eta": torch.cat([c["eta"] for c in ctxs])}

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        g = y - ctx["eta"] * (ctx["x"] * y - 1.0)
        return g * ctx["mask"] if "mask" in ctx else g

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        return {"y": y[0].tolist()}

    def evaluate(self, iters: list[int]) -> EvalReport:
        """E_t = mean |y_t(x) − 1/x| · x over a grid of x in (0, 1] with η = 1 (no weights needed)."""
        x = torch.linspace(0.02, 1.0, 50, dtype=self.dtype(), device=self.device()).unsqueeze(0)
        ctx = {"x": x, "eta": torch.ones(1, 1, dtype=x.dtype, device=x.device)}
        ys = run_iterations(self, ctx, torch.zeros_like(x), iters)
        errors = [float(((ys[t] - 1 / x).abs() * x).mean()) for t in iters]
        return EvalReport(self.name, "mean relative error |y_t - 1/x| / (1/x)", list(iters), errors, params=0)
