"""Fourier layers written here (no neuraloperator: it would pull a training stack into the server)."""

from __future__ import annotations

import math

import torch
from torch import nn


class SpectralConv2d(nn.Module):
    """A convolution on the periodic grid kept to the lowest `modes` wavenumbers per axis: in Fourier
    space a learned complex (c_out × c_in) matrix per kept mode (kx in [−m, m), ky in [0, m)), the
    same matrices on any grid n ≥ 2m (rfft2 with its default scaling is resolution-free)."""

    def __init__(self, c_in: int, c_out: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        scale = 1 / math.sqrt(c_in * c_out)
        self.weight = nn.Parameter(scale * torch.randn(2 * modes, modes, c_out, c_in, 2))

    def matrices(self) -> torch.Tensor:
        """The per-mode matrices (2m, m, c_out, c_in), complex; rows 0..m−1 are kx = 0..m−1, rows
        m..2m−1 are kx = −m..−1 (the rfft2 order)."""
        return torch.view_as_complex(self.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, c_in, n, n) → (B, c_out, n, n)."""
        n, m = z.shape[-1], self.modes
        if n < 2 * m:
            raise ValueError(f"a {n}×{n} grid is below the {2 * m}×{2 * m} the kept modes need")
        z_hat = torch.fft.rfft2(z)
        w = self.matrices()
        out = torch.zeros(z.shape[0], w.shape[2], n, n // 2 + 1, dtype=z_hat.dtype, device=z.device)
        out[:, :, :m, :m] = torch.einsum("bixy,xyoi->boxy", z_hat[:, :, :m, :m], w[:m])
        out[:, :, n - m :, :m] = torch.einsum("bixy,xyoi->boxy", z_hat[:, :, n - m :, :m], w[m:])
        return torch.fft.irfft2(out, s=(n, n))


def operator_norm(spectral: SpectralConv2d, pointwise: torch.Tensor) -> torch.Tensor:
    """‖K + W‖₂ on real fields, K the spectral conv and W a pointwise (1×1) map, on any grid: both are
    diagonal in Fourier space, so it is the largest σ_max of R_k + W over kept modes k, and of W alone
    on the others (Parseval). Differentiable, for the normalisation the training applies."""
    per_mode = torch.linalg.svdvals(spectral.matrices() + pointwise.to(torch.complex64)).amax()
    return torch.maximum(per_mode, torch.linalg.svdvals(pointwise).amax())


class FourierLayer(nn.Module):
    """K z + W z + b: one Fourier layer before its activation."""

    def __init__(self, c_in: int, c_out: int, modes: int) -> None:
        super().__init__()
        self.spectral = SpectralConv2d(c_in, c_out, modes)
        self.pointwise = nn.Conv2d(c_in, c_out, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.spectral(z) + self.pointwise(z)


class Lift(nn.Module):
    """The forcing's encoder: `depth` Fourier layers 1 → C → … → C with GELU between them and none after
    (the DEQ adds its output inside its own activation). Deeper than one linear layer because the
    injection carries the forcing's nonlinear features into every step; the weight-tied block then
    needs fewer channels for the same parameter count and trains to a lower error (see RESULTS)."""

    def __init__(self, channels: int, modes: int, depth: int) -> None:
        super().__init__()
        widths = [1] + [channels] * (depth - 1)
        self.layers = nn.ModuleList(FourierLayer(c, channels, modes) for c in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n, n) → (B, C, n, n)."""
        z = self.layers[0](x)
        for layer in self.layers[1:]:
            z = layer(nn.functional.gelu(z))
        return z


class Readout(nn.Module):
    """The pointwise projection C → 2C → 1 (GELU) from the latent field to the vorticity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(channels, 2 * channels, 1)
        self.out = nn.Conv2d(2 * channels, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, n, n) → (B, n, n)."""
        return self.out(nn.functional.gelu(self.hidden(z))).squeeze(1)


class ExplicitFNO(nn.Module):
    """The explicit baseline: lift the forcing, `depth` Fourier layers with their own weights, read out."""

    def __init__(self, channels: int, modes: int, depth: int) -> None:
        super().__init__()
        self.lift = FourierLayer(1, channels, modes)
        self.layers = nn.ModuleList(FourierLayer(channels, channels, modes) for _ in range(depth))
        self.readout = Readout(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled forcing (B, n, n) → scaled vorticity (B, n, n)."""
        z = self.lift(x.unsqueeze(1))
        for layer in self.layers:
            z = nn.functional.gelu(layer(z))
        return self.readout(z)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
