"""deblur: DEQ-PGD image deblurring, G(y, b) = D_θ(y − η·Aᵀ(A y − b)), D_θ a 1-Lipschitz denoiser."""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file
from torch import nn

from eqserve.models.base import Ctx, EvalReport, FiniteFloat, ImplicitModel, InputError, run_iterations
from eqserve.models.deblur.ops import blur, blur_adjoint, gaussian_kernel, psnr, ssim
from eqserve.models.deblur.png import decode_png, encode_png
from eqserve.models.shipped import WEIGHTS_DIR

WEIGHTS_FILE = "deblur.safetensors"
HELDOUT_FILE = "deblur-heldout.safetensors"
EXPLICIT_FILE = "deblur-explicit.safetensors"

CHANNELS = 24
"""Feature channels of the denoiser (even: MaxMin pairs them)."""
LAYERS = 4
"""3×3 convolutions of the denoiser: 1 → C → C → C → 1."""
LAYER_GAIN = 0.995
"""Bound on each convolution's operator norm, so Lip(D_θ) ≤ α + (1 − α)·0.995⁴ < 1; a tighter bound
keeps D from passing the weak high frequencies a deconvolution has to recover."""
MIX_INIT = 2.0
"""Initial logit of α: D starts near the identity (α ≈ 0.88); from α = 0.5 a fixed point halved the
image and training spent most of its steps undoing that."""
EXPLICIT_DEPTH = 5
"""Steps of the unrolled baseline (deep unrolling, trained end to end through all of them)."""
MAX_KERNEL = 25
"""Largest blur kernel a request may send; every kernel is centred in a MAX_KERNEL² square, so the
default collate (which pads at the end of each axis) keeps the kernels of a batch centred."""
MIN_SIDE, MAX_SIDE = 11, 256
DEFAULT_BLUR_SIGMA = 1.5
DEFAULT_NOISE = 0.01
LIPSCHITZ_DELTA = 0.01
"""RMS of the perturbation of b used to measure L_t."""
BOUND_GRID = 128
"""Frequency grid on which a convolution's operator norm is bounded (max over ω of σ_max(K̂(ω)))."""


def maxmin(h: torch.Tensor) -> torch.Tensor:
    """MaxMin over channel pairs: 1-Lipschitz and gradient-norm preserving, unlike ReLU (which would
    leave a norm-constrained network unable to pass its input through)."""
    a, b = h.chunk(2, dim=1)
    return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def conv_norm(weight: torch.Tensor, grid: int = BOUND_GRID) -> float:
    """Operator norm of a zero-padded 3×3 convolution, bounded by its symbol's largest singular value
    over a grid of frequencies (exact for the circular convolution on that grid)."""
    spectrum = torch.fft.fft2(weight.detach().double(), s=(grid, grid))  # (out, in, g, g)
    return float(torch.linalg.matrix_norm(spectrum.permute(2, 3, 0, 1), ord=2).max())


class Denoiser(nn.Module):
    """D(z) = α z + (1 − α) N(z, σ): N a plain CNN of norm-bounded 3×3 convolutions and MaxMin, so
    Lip(D) < 1 in z; the noise level σ enters as a learned per-channel bias of the first layer.

    Every layer's output is multiplied by the image's mask, so an image zero-padded into a larger
    batch sees zeros around it exactly as it would alone.
    """

    def __init__(self, channels: int = CHANNELS, layers: int = LAYERS) -> None:
        super().__init__()
        dims = [1] + [channels] * (layers - 1) + [1]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in pairwise(dims))
        self.noise_gain = nn.Parameter(torch.zeros(channels))
        self.mix_logit = nn.Parameter(torch.tensor(MIX_INIT))

    def forward(self, z: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """D(z) for (B, H, W) images, (B,) noise levels and (B, H, W) masks."""
        m = mask.unsqueeze(1)
        h = self.convs[0](z.unsqueeze(1)) + noise.view(-1, 1, 1, 1) * self.noise_gain.view(1, -1, 1, 1)
        h = maxmin(h) * m
        for conv in self.convs[1:-1]:
            h = maxmin(conv(h)) * m
        alpha = torch.sigmoid(self.mix_logit)
        return (alpha * z.unsqueeze(1) + (1 - alpha) * self.convs[-1](h)).squeeze(1) * mask

    def lipschitz_bound(self) -> float:
        """α + (1 − α)·Π‖conv‖: a bound on Lip(D) in z."""
        alpha = float(torch.sigmoid(self.mix_logit.detach()))
        return alpha + (1 - alpha) * math.prod(conv_norm(c.weight) for c in self.convs)


class DeblurInput(BaseModel):
    """A blurred, noisy grayscale image (intensities in [0, 1]) as a 2-D array or a base64 PNG; the blur
    kernel (odd, square, non-negative; normalised to sum 1) or a Gaussian σ; the noise level; and,
    optionally, the sharp image, to be told PSNR and SSIM."""

    model_config = ConfigDict(extra="forbid")
    image: list[list[FiniteFloat]] | None = None
    image_png: str | None = None
    kernel: list[list[FiniteFloat]] | None = None
    blur_sigma: float = Field(DEFAULT_BLUR_SIGMA, gt=0.1, le=4.0)
    noise_level: float = Field(DEFAULT_NOISE, ge=0.0, le=0.5)
    sharp: list[list[FiniteFloat]] | None = None
    sharp_png: str | None = None
    output: Literal["array", "png", "both"] = "both"

    @model_validator(mode="after")
    def _one_image(self) -> DeblurInput:
        if (self.image is None) == (self.image_png is None):
            raise ValueError("send exactly one of image (a 2-D array) and image_png (base64 PNG)")
        if self.sharp is not None and self.sharp_png is not None:
            raise ValueError("send at most one of sharp and sharp_png")
        return self


class DeblurOutput(BaseModel):
    """The restored image (clipped to [0, 1]) as an array and/or a base64 8-bit PNG; PSNR (dB) and SSIM
    against the sharp image when the request sent one."""

    image: list[list[float]] | None = None
    image_png: str | None = None
    psnr: float | None = None
    ssim: float | None = None


@dataclass
class DeblurReport(EvalReport):
    """E_t with the PSNR (dB) and the empirical Lipschitz constant L_t of each t-step map."""

    psnr: list[float] = field(default_factory=list)
    lipschitz: list[float] = field(default_factory=list)


def _array(rows: list[list[float]], where: str) -> np.ndarray:
    if len({len(r) for r in rows}) > 1:
        raise InputError(where, "rows must all have the same length")
    return np.asarray(rows, dtype=np.float64)


def _png(text: str, where: str) -> np.ndarray:
    try:
        return decode_png(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise InputError(where, f"not a readable base64 PNG: {exc}") from None


class Deblur(ImplicitModel):
    """DEQ-PGD deblurring: a gradient step on ½‖A y − b‖², then a learned 1-Lipschitz denoiser."""

    name = "deblur"
    Input = DeblurInput
    Output = DeblurOutput
    defaults = {"max_iters": 64, "tol": 1e-3, "stop_mode": "abs"}  # noqa: RUF012
    compile_step = True  # convolutions and pointwise work that inductor fuses (bench/compile_step.py)

    def __init__(self, weights_dir: Path = WEIGHTS_DIR) -> None:
        super().__init__()
        self.denoiser = Denoiser()
        self.step_logit = nn.Parameter(torch.zeros(()))
        self.weights_dir = Path(weights_dir)

    @classmethod
    def from_weights(cls, path: str | Path) -> Deblur:
        """Load a checkpoint (held-out set and explicit twin beside it); refuse Lip(D_θ) ≥ 1."""
        path = Path(path)
        model = cls(weights_dir=path.parent)
        model.load_state_dict(load_file(str(path)), strict=True)
        bound = model.denoiser.lipschitz_bound()
        if not bound < 1.0:
            raise ValueError(f"{path}: Lip(D_θ) ≤ {bound:.6f} is not < 1, so G would not be a contraction")
        return model

    @property
    def eta(self) -> torch.Tensor:
        """The step size η = 2·sigmoid(·) ∈ (0, 2): I − η AᵀA is non-expansive since ‖A‖ ≤ 1."""
        return 2 * torch.sigmoid(self.step_logit)

    def operator(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        """G(y, b) = D(M·(y − η Aᵀ M (A y − b))) with gradients (the trainers' entry point); M the mask,
        so the blur of a row zero-padded into a larger batch stays within the row."""
        m = ctx["mask"]
        residual = m * (blur(y, ctx["kernel"]) - ctx["b"])
        return self.denoiser(m * (y - self.eta * blur_adjoint(residual, ctx["kernel"])), ctx["noise"], m)

    @cached_property
    def heldout(self) -> dict[str, torch.Tensor]:
        """The shipped held-out set: sharp, blurred, kernel and noise per image."""
        return load_file(str(self.weights_dir / HELDOUT_FILE))

    @property
    def example_input(self) -> dict[str, Any]:  # type: ignore[override]
        """A held-out image, blurred (its own noise level and the default Gaussian σ ≈ its blur)."""
        b = self.heldout["blurred"][0, :32, :32]
        return {"image": [[round(float(v), 4) for v in row] for row in b], "noise_level": DEFAULT_NOISE}

    def encode(self, inp: DeblurInput) -> Ctx:  # type: ignore[override]
        if inp.image is not None:
            image = _array(inp.image, "input.image")
        else:
            image = _png(inp.image_png or "", "input.image_png")
        where = "input.image" if inp.image is not None else "input.image_png"
        if image.ndim != 2 or not MIN_SIDE <= min(image.shape) <= max(image.shape) <= MAX_SIDE:
            raise InputError(where, f"the image must be 2-D with sides from {MIN_SIDE} to {MAX_SIDE} px")
        sharp = np.zeros_like(image)
        if inp.sharp is not None or inp.sharp_png is not None:
            if inp.sharp is not None:
                sharp = _array(inp.sharp, "input.sharp")
            else:
                sharp = _png(inp.sharp_png or "", "input.sharp_png")
            if sharp.shape != image.shape:
                why = f"has shape {list(sharp.shape)}, the image {list(image.shape)}"
                raise InputError("input.sharp", why)
        kernel = self._kernel(inp)
        r = (MAX_KERNEL - kernel.shape[0]) // 2
        like = {"dtype": self.dtype(), "device": self.device()}
        want = [inp.output in ("array", "both"), inp.output in ("png", "both")]
        return {
            "b": torch.as_tensor(image, **like).unsqueeze(0),
            "mask": torch.ones(1, *image.shape, **like),
            "kernel": F.pad(kernel.to(**like), (r, r, r, r)).unsqueeze(0),
            "noise": torch.tensor([inp.noise_level], **like),
            "sharp": torch.as_tensor(sharp, **like).unsqueeze(0),
            "has_sharp": torch.tensor([float(inp.sharp is not None or inp.sharp_png is not None)], **like),
            "want": torch.tensor([want], **like),
        }

    @staticmethod
    def _kernel(inp: DeblurInput) -> torch.Tensor:
        """The request's kernel, normalised to sum 1 (so ‖A‖ ≤ 1), or the Gaussian of `blur_sigma`."""
        if inp.kernel is None:
            k = gaussian_kernel(inp.blur_sigma)
            return k if k.shape[0] <= MAX_KERNEL else gaussian_kernel(inp.blur_sigma, MAX_KERNEL)
        k = torch.as_tensor(_array(inp.kernel, "input.kernel"))
        if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0 or k.shape[0] > MAX_KERNEL:
            raise InputError("input.kernel", f"the kernel must be square with an odd side ≤ {MAX_KERNEL}")
        if (k < 0).any() or not k.sum() > 0:
            raise InputError("input.kernel", "the kernel must be non-negative with a positive sum")
        return k / k.sum()

    def state_shape(self, ctx: Ctx) -> tuple[int, ...]:
        return tuple(ctx["b"].shape[1:])

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        with torch.no_grad():
            return self.operator(y, ctx)

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        image = y[:1].clamp(0, 1).float()
        out: dict[str, Any] = {}
        if ctx["want"][0, 0]:
            out["image"] = image[0].tolist()
        if ctx["want"][0, 1]:
            out["image_png"] = base64.b64encode(encode_png(image[0].cpu().numpy())).decode("ascii")
        if ctx["has_sharp"][0]:
            sharp = ctx["sharp"].float()
            out["psnr"] = float(psnr(image, sharp))
            out["ssim"] = float(ssim(image, sharp))
        return out

    def batch_context(self, blurred: torch.Tensor, kernels: torch.Tensor, noise: torch.Tensor) -> Ctx:
        """The batch context of equal-sized images (B, H, W) with their (B, K, K) kernels, as `collate`
        would build it from their requests (but without the decode-only entries)."""
        like = {"dtype": self.dtype(), "device": self.device()}
        return {
            "b": blurred.to(**like),
            "mask": torch.ones_like(blurred, **like),
            "kernel": kernels.to(**like),
            "noise": noise.to(**like),
        }

    def evaluate(self, iters: list[int]) -> DeblurReport:
        """E_t (mean relative L2 error), PSNR and L_t of y_t, y_0 = 0, on the held-out set; the
        unrolled baseline's error and PSNR at its own depth."""
        held = self.heldout
        sharp = held["sharp"].to(self.device(), self.dtype())
        ctx = self.batch_context(held["blurred"], held["kernel"], held["noise"])
        gen = torch.Generator().manual_seed(0)
        bump = LIPSCHITZ_DELTA * torch.randn(sharp.shape, generator=gen).to(sharp)
        both = {k: torch.cat([v, v]) for k, v in ctx.items()}
        both["b"] = torch.cat([ctx["b"], ctx["b"] + bump])
        ys = run_iterations(self, both, torch.zeros_like(both["b"]), iters)
        n = sharp.shape[0]
        errors, psnrs, lips = [], [], []
        for t in iters:
            y, moved = ys[t][:n], ys[t][n:]
            errors.append(_relative_error(y.clamp(0, 1), sharp))
            psnrs.append(float(psnr(y.clamp(0, 1), sharp).mean()))
            lips.append(float(((moved - y).flatten(1).norm(dim=1) / bump.flatten(1).norm(dim=1)).mean()))
        twin = Deblur(self.weights_dir).to(self.device(), self.dtype())
        twin.load_state_dict(load_file(str(self.weights_dir / EXPLICIT_FILE)), strict=True)
        y_twin = run_iterations(twin, ctx, torch.zeros_like(ctx["b"]), [EXPLICIT_DEPTH])[EXPLICIT_DEPTH]
        return DeblurReport(
            model=self.name,
            metric="mean relative L2 error",
            t=list(iters),
            error=errors,
            params=_params(self),
            baseline={
                "name": f"unrolled-pgd-{EXPLICIT_DEPTH}",
                "params": _params(twin),
                "error": _relative_error(y_twin.clamp(0, 1), sharp),
                "psnr": float(psnr(y_twin.clamp(0, 1), sharp).mean()),
                "depth": EXPLICIT_DEPTH,
            },
            psnr=psnrs,
            lipschitz=lips,
        )


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((y - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).mean())
