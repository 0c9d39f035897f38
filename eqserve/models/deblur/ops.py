"""The deblurring operators, written here because deepinv does not import on our machines: a blur A
by FFT convolution with zero boundary (and its adjoint), PSNR and SSIM.

A is the "same"-size convolution of an H×W image with a centred odd kernel, zero outside the image.
It is computed by FFT on a grid large enough that the circular wrap-around never reaches the image,
so a row zero-padded into a larger batch is blurred exactly as it would be alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_SIZE = 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def gaussian_kernel(sigma: float, size: int | None = None) -> torch.Tensor:
    """A normalised, centred Gaussian kernel (size × size, odd; 2⌈3σ⌉ + 1 by default), float64."""
    size = size or 2 * math.ceil(3 * sigma) + 1
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def _kernel_spectrum(kernel: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """rfft2 of (B, K, K) centred kernels placed on a `grid` with their centre at the origin."""
    r = (kernel.shape[-1] - 1) // 2
    padded = F.pad(kernel, (0, grid[1] - kernel.shape[-1], 0, grid[0] - kernel.shape[-2]))
    return torch.fft.rfft2(torch.roll(padded, shifts=(-r, -r), dims=(-2, -1)))


def _grid(shape: torch.Size, kernel: torch.Tensor) -> tuple[int, int]:
    """An FFT grid of at least the image plus the kernel's half-width per axis: no wrap-around."""
    r = (kernel.shape[-1] - 1) // 2
    return shape[-2] + r, shape[-1] + r


def _apply(x: torch.Tensor, kernel: torch.Tensor, adjoint: bool) -> torch.Tensor:
    h, w = x.shape[-2:]
    grid = _grid(x.shape, kernel)
    spectrum = _kernel_spectrum(kernel.to(x.dtype), grid)
    if adjoint:
        spectrum = spectrum.conj()
    out = torch.fft.irfft2(torch.fft.rfft2(x, s=grid) * spectrum, s=grid)
    return out[..., :h, :w]


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """A x: (B, H, W) images convolved with (B, K, K) centred kernels (K odd), zero boundary."""
    return _apply(x, kernel, adjoint=False)


def blur_adjoint(y: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Aᵀ y: correlation with the kernel, the adjoint of `blur` (⟨A x, y⟩ = ⟨x, Aᵀ y⟩)."""
    return _apply(y, kernel, adjoint=True)


def psnr(x: torch.Tensor, ref: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of (B, H, W) images against references, for intensities in [0, peak]."""
    mse = ((x - ref) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(peak**2 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11×11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03, population
    statistics, mean over the windows that lie inside the image) of (B, H, W) images ≥ 11 px a side."""
    g = gaussian_kernel(SSIM_SIGMA, SSIM_SIZE).to(x.dtype)
    g = g.view(1, 1, SSIM_SIZE, SSIM_SIZE)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t.unsqueeze(1), g).squeeze(1)

    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    mx, my = mean(x), mean(ref)
    vx, vy, cxy = mean(x * x) - mx**2, mean(ref * ref) - my**2, mean(x * ref) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)
