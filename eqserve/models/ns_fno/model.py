"""ns-fno: steady 2-D Navier–Stokes as a DEQ with a Fourier layer, z = σ(K z + W z + lift(f)), lift a small
explicit FNO of the forcing."""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file
from torch import nn

from eqserve.models.arrays import ArrayError, decode_base64
from eqserve.models.base import Ctx, EvalReport, FiniteFloat, ImplicitModel, InputError, run_iterations
from eqserve.models.fitting import relative_error
from eqserve.models.ns_fno.layers import ExplicitFNO, FourierLayer, Lift, Readout, operator_norm
from eqserve.models.ns_fno.solver import velocity
from eqserve.models.shipped import WEIGHTS_DIR
from eqserve.models.tensors import TensorMap, float_datatype

HELDOUT_FILE = "ns-fno-heldout.safetensors"
EXPLICIT_FILE = "ns-fno-explicit.safetensors"
FORCING_SCALE = 20.0
"""The networks see 20·f and predict ω/4 (the training forcings have RMS 0.02–0.08, ω RMS ≈ 0.2):
O(1) inputs and targets for Adam; fixed, so served and trained models agree."""
VORTICITY_SCALE = 4.0
MAX_GRID = 256
GELU_MAX_SLOPE = 0.5 * (1 + math.erf(1)) + math.exp(-1) / math.sqrt(math.pi)
"""max GELU′(x) = Φ(x) + x φ(x), reached at x = √2."""


class EncodedField(BaseModel):
    """A 2-D array as raw little-endian bytes (the server's base64 state format)."""

    model_config = ConfigDict(extra="forbid")
    encoding: Literal["base64"]
    dtype: str
    shape: list[int]
    data: str


class NsFnoInput(BaseModel):
    """The vorticity forcing f = curl of the body force on an n×n periodic grid over [0, 2π)²,
    as rows of numbers or base64; the shipped model was trained on smooth forcings (|k| ≤ 4) of RMS
    0.02–0.08 at 32²."""

    model_config = ConfigDict(extra="forbid")
    forcing: list[list[FiniteFloat]] | EncodedField = Field(union_mode="left_to_right")


class _ForcingTensor(BaseModel):
    """The v2 tensor form of the input: the forcing as one FP tensor (v2 carries raw bytes itself)."""

    forcing: list[list[FiniteFloat]]


class NsFnoOutput(BaseModel):
    """The steady vorticity ω (n×n) and velocity (2×n×n: u, v) of the current state."""

    vorticity: list[list[float]]
    velocity: list[list[list[float]]]


def fourier_step(
    layer: FourierLayer, z: torch.Tensor, inj: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """GELU(scale·(K z + W z) + b + inj) / max GELU′: Lipschitz ≤ scale·‖K + W‖₂ in z.

    GELU, divided by its largest slope so that it is 1-Lipschitz and the guard ‖K + W‖₂ < 1 still
    bounds G: near 0 it is x/2 + x²/√(2π), a quadratic term of the form of the advection u·∇ω,
    where relu is piecewise linear and tanh odd (both trained to higher errors, see RESULTS)."""
    lin = layer.spectral(z) + nn.functional.conv2d(z, layer.pointwise.weight)
    pre = scale * lin + layer.pointwise.bias.view(1, -1, 1, 1) + inj
    return nn.functional.gelu(pre) / GELU_MAX_SLOPE


class NsFno(ImplicitModel):
    """G(z, f) = σ(K z + W z + lift(f)), σ = GELU / max GELU′, ‖K + W‖₂ < 1, lift a few Fourier layers of
    the forcing computed once per request; the vorticity is a pointwise readout of z.

    The state z is a C-channel latent field (C, n, n) on the forcing's own grid. Rows of different
    sizes may share a batch: `step` applies the layer to each size's rows on their own grid, since
    a Fourier layer on a zero-padded grid would see another, wrongly periodic, domain.
    """

    name = "ns-fno"
    Input = NsFnoInput
    Output = NsFnoOutput
    defaults = {"max_iters": 200, "tol": 1e-4, "stop_mode": "rel"}  # noqa: RUF012

    def __init__(self, channels: int, modes: int, lift_depth: int, weights_dir: Path = WEIGHTS_DIR) -> None:
        super().__init__()
        self.lift = Lift(channels, modes, lift_depth)
        self.block = FourierLayer(channels, channels, modes)
        self.readout = Readout(channels)
        self.weights_dir = Path(weights_dir)

    @classmethod
    def from_weights(cls, path: str | Path) -> NsFno:
        """Load a checkpoint (sizes from its shapes, held-out set and twin beside it); refuse ‖K + W‖₂ ≥ 1."""
        path = Path(path)
        state = load_file(str(path))
        modes, channels = state["block.spectral.weight"].shape[1:3]
        lift_depth = len({k.split(".")[2] for k in state if k.startswith("lift.layers.")})
        model = cls(channels, modes, lift_depth, weights_dir=path.parent)
        model.load_state_dict(state, strict=True)
        norm = model.contraction_bound()
        if not norm < 1.0:
            raise ValueError(f"{path}: ‖K + W‖₂ = {norm:.6f} ≥ 1, so G would not be a contraction")
        return model

    def contraction_bound(self) -> float:
        """‖K + W‖₂ of the block: a bound on G's Lipschitz constant in z on every grid."""
        with torch.no_grad():
            return operator_norm(self.block.spectral, self.block.pointwise.weight[:, :, 0, 0]).item()

    @property
    def channels(self) -> int:
        return self.block.pointwise.out_channels

    @property
    def modes(self) -> int:
        return self.block.spectral.modes

    @cached_property
    def _heldout(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.weights_dir / HELDOUT_FILE))

    @property
    def description(self) -> str:  # type: ignore[override]
        return (
            "steady 2-D Navier–Stokes (ν = 0.02, drag 0.1, periodic) as a DEQ: one Fourier layer, "
            f"C = {self.channels}, {self.modes} modes, ‖K + W‖₂ < 1, "
            f"on a {len(self.lift.layers)}-layer lift of the forcing; "
            f"forcing n×n (n ≥ {2 * self.modes}) → vorticity"
        )

    @property
    def example_input(self) -> dict[str, Any]:  # type: ignore[override]
        return {"forcing": [[round(float(v), 5) for v in row] for row in self._heldout["f32"][0]]}

    def _forcing(self, inp: NsFnoInput) -> torch.Tensor:
        if isinstance(inp.forcing, EncodedField):
            try:
                arr = torch.as_tensor(decode_base64(inp.forcing.model_dump()))
            except ArrayError as exc:
                raise InputError(f"input.forcing.{exc.where}".rstrip("."), exc.message) from None
        else:
            widths = {len(row) for row in inp.forcing}
            if len(widths) != 1:
                raise InputError("input.forcing", "rows of the forcing must have equal length")
            arr = torch.tensor(inp.forcing, dtype=torch.float64)
        n = arr.shape[0] if arr.dim() == 2 else 0
        if arr.dim() != 2 or arr.shape[1] != n or not 2 * self.modes <= n <= MAX_GRID:
            why = f"the forcing must be a square n×n grid with {2 * self.modes} ≤ n ≤ {MAX_GRID}"
            raise InputError("input.forcing", f"{why}, got shape {list(arr.shape)}")
        return arr

    def encode(self, inp: NsFnoInput) -> Ctx:  # type: ignore[override]
        f = self._forcing(inp).to(self.device(), self.dtype()).unsqueeze(0)
        with torch.no_grad():
            inj = self.lift((FORCING_SCALE * f).unsqueeze(1))
        return {"inj": inj, "grid": torch.tensor([f.shape[-1]], device=f.device)}

    def state_shape(self, ctx: Ctx) -> tuple[int, ...]:
        n = int(ctx["grid"][0])
        return (self.channels, n, n)

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        grids = ctx["grid"]
        sizes = [int(n) for n in grids.unique().tolist()]
        if len(sizes) == 1 and sizes[0] == y.shape[-1]:
            return fourier_step(self.block, y, ctx["inj"], 1.0)
        out = torch.zeros_like(y)
        for n in sizes:
            rows = (grids == n).nonzero().squeeze(1)
            z = y.index_select(0, rows)[..., :n, :n]
            inj = ctx["inj"].index_select(0, rows)[..., :n, :n]
            out[rows, :, :n, :n] = fourier_step(self.block, z, inj, 1.0)
        return out

    def vorticity(self, z: torch.Tensor) -> torch.Tensor:
        """ω (B, n, n) of latent states (B, C, n, n)."""
        return self.readout(z) / VORTICITY_SCALE

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        with torch.no_grad():
            w = self.vorticity(y[:1])
            return {"vorticity": w[0].tolist(), "velocity": velocity(w)[0].tolist()}

    def v2_inputs(self) -> TensorMap:
        """The forcing as one [n, n] tensor (the base64 form is for the JSON of /v1/solve)."""
        return TensorMap(_ForcingTensor, float_datatype(self.dtype()))

    def evaluate(self, iters: list[int], grid: int = 32) -> EvalReport:
        """Mean relative L2 error of ω(z_t), z_0 = 0, on the held-out set at `grid`² (32 or 64); and
        the explicit FNO's on the same set."""
        f = self._heldout[f"f{grid}"].to(self.device(), self.dtype())
        w_true = self._heldout[f"w{grid}"].to(self.device(), self.dtype())
        with torch.no_grad():
            inj = self.lift((FORCING_SCALE * f).unsqueeze(1))
            ctx = {"inj": inj, "grid": torch.full((f.shape[0],), grid)}
            z0 = torch.zeros(f.shape[0], self.channels, grid, grid, dtype=f.dtype, device=f.device)
            zs = run_iterations(self, ctx, z0, iters)
            errors = [relative_error(self.vorticity(zs[t]), w_true).mean().item() for t in iters]
            twin = explicit_from_weights(self.weights_dir / EXPLICIT_FILE).to(f.device, f.dtype)
            twin_error = relative_error(twin(FORCING_SCALE * f) / VORTICITY_SCALE, w_true).mean().item()
        return EvalReport(
            model=self.name,
            metric=f"mean relative L2 error of the vorticity at {grid}x{grid}",
            t=list(iters),
            error=errors,
            params=sum(p.numel() for p in self.parameters()),
            baseline={"name": "explicit-fno", "params": twin.num_params(), "error": twin_error},
        )


def explicit_from_weights(path: str | Path) -> ExplicitFNO:
    """The explicit baseline from its checkpoint (sizes from its shapes)."""
    state = load_file(str(path))
    modes, channels = state["layers.0.spectral.weight"].shape[1:3]
    depth = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    net = ExplicitFNO(channels, modes, depth)
    net.load_state_dict(state, strict=True)
    return net
