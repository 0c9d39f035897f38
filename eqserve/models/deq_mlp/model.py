"""deq-mlp: the dense DEQ layer y = tanh(W y + U x + b), ‖W‖₂ < 1, with a linear readout."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file
from torch import nn

from eqserve.kernels import invariant
from eqserve.models.base import Ctx, EvalReport, ImplicitModel, InputError, run_iterations
from eqserve.models.deq_mlp.explicit import ExplicitMLP
from eqserve.models.fitting import relative_error
from eqserve.models.shipped import WEIGHTS_DIR

HELDOUT_FILE = "deq-mlp-heldout.safetensors"
EXPLICIT_FILE = "deq-mlp-explicit.safetensors"


class DeqMLPInput(BaseModel):
    """The input vector x (d_in finite floats; the shipped model was trained on [0.05, 1]^4)."""

    model_config = ConfigDict(extra="forbid")
    x: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1)


class DeqMLPOutput(BaseModel):
    """The readout of the current state: d_out floats, ≈ (diag(x) + C)⁻¹ b at the fixed point."""

    y: list[float]


class DeqMLP(ImplicitModel):
    """G(y, x) = tanh(y Wᵀ + U x + b): a contraction in y because tanh is 1-Lipschitz and ‖W‖₂ < 1."""

    name = "deq-mlp"
    Input = DeqMLPInput
    Output = DeqMLPOutput
    defaults = {"max_iters": 300, "tol": 1e-4, "stop_mode": "abs"}  # noqa: RUF012
    batch_invariant = True

    def __init__(self, d_in: int, hidden: int, d_out: int, weights_dir: Path = WEIGHTS_DIR) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.zeros(hidden, hidden))
        self.inj = nn.Linear(d_in, hidden)
        self.readout = nn.Linear(hidden, d_out)
        self.weights_dir = Path(weights_dir)

    @classmethod
    def from_weights(cls, path: str | Path) -> DeqMLP:
        """Load a checkpoint (sizes from its shapes; held-out set and twin beside it); refuse ‖W‖₂ ≥ 1."""
        path = Path(path)
        state = load_file(str(path))
        hidden, d_in = state["inj.weight"].shape
        d_out = state["readout.weight"].shape[0]
        norm = torch.linalg.matrix_norm(state["W"].double(), ord=2).item()
        if not norm < 1.0:
            raise ValueError(f"{path}: ‖W‖₂ = {norm:.6f} ≥ 1, so G would not be a contraction")
        model = cls(d_in, hidden, d_out, weights_dir=path.parent)
        model.load_state_dict(state, strict=True)
        return model

    @property
    def d_in(self) -> int:
        """Length of the input x."""
        return self.inj.in_features

    @property
    def hidden(self) -> int:
        """Size h of the state y."""
        return self.W.shape[0]

    @cached_property
    def _heldout(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.weights_dir / HELDOUT_FILE))

    @property
    def description(self) -> str:  # type: ignore[override]
        return (
            f"dense DEQ layer y = tanh(W y + U x + b), ‖W‖₂ < 1, h = {self.hidden}, linear readout; "
            "fits y*(x) = (diag(x) + C)⁻¹ b for x in [0.05, 1]^4"
        )

    @property
    def example_input(self) -> dict[str, Any]:  # type: ignore[override]
        return {"x": [round(float(v), 4) for v in self._heldout["x"][0]]}

    def encode(self, inp: DeqMLPInput) -> Ctx:  # type: ignore[override]
        if len(inp.x) != self.d_in:
            raise InputError("input.x", f"x must have {self.d_in} entries, got {len(inp.x)}")
        x = torch.tensor([inp.x], dtype=self.dtype(), device=self.device())
        with torch.no_grad():
            return {"inj": self.inj(x)}

    def state_shape(self, ctx: Ctx) -> tuple[int, ...]:
        return (self.hidden,)

    def dense_form(self, ctx: Ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, inj): the fused dense kernels serve this model's step."""
        return self.W.detach(), ctx["inj"]

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        return torch.tanh(invariant.linear(y, self.W) + ctx["inj"])

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        with torch.no_grad():
            return {"y": self.readout(y[:1]).squeeze(0).tolist()}

    def evaluate(self, iters: list[int]) -> EvalReport:
        """Mean relative L2 error of readout(y_t), y_0 = 0, on the held-out set; and the explicit twin's."""
        x = self._heldout["x"].to(self.device(), self.dtype())
        y_true = self._heldout["y"].to(self.device(), self.dtype())
        with torch.no_grad():
            ctx = {"inj": self.inj(x)}
            y0 = torch.zeros(x.shape[0], self.hidden, dtype=x.dtype, device=x.device)
            ys = run_iterations(self, ctx, y0, iters)
            errors = [relative_error(self.readout(ys[t]), y_true).mean().item() for t in iters]
            twin = ExplicitMLP.from_weights(self.weights_dir / EXPLICIT_FILE).to(x.device, x.dtype)
            twin_error = relative_error(twin(x), y_true).mean().item()
        return EvalReport(
            model=self.name,
            metric="mean relative L2 error",
            t=list(iters),
            error=errors,
            params=sum(p.numel() for p in self.parameters()),
            baseline={"name": "explicit-mlp", "params": twin.num_params(), "error": twin_error},
        )
