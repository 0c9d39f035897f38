"""Seeded training and held-out data: dead-leaves images (occluding discs with power-law radii, the
classic synthetic model of natural-image statistics), blurred by random Gaussians, plus noise."""

from __future__ import annotations

import torch

from eqserve.models.deblur.ops import blur, gaussian_kernel

DISCS = 150
"""Discs per image, painted back to front over a uniform background."""
R_MIN = 1.5
BLUR_SIGMA = (1.0, 2.0)
"""Range of the Gaussian blur's σ (pixels) the model is trained on."""
NOISE = (0.005, 0.02)
"""Range of the noise level (std of additive Gaussian noise, intensities in [0, 1])."""
KERNEL_SIZE = 13
"""Kernel size of the training blurs: 2⌈3σ⌉ + 1 for the largest σ."""


def dead_leaves(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """n (size × size) dead-leaves images in [0, 1], float32: DISCS discs with radii of density ∝ r⁻³
    on [R_MIN, size/2] and uniform grey levels, painted one over the other."""
    r_max = size / 2
    u = torch.rand(n, DISCS, generator=generator)
    radius = (R_MIN**-2 - u * (R_MIN**-2 - r_max**-2)) ** -0.5  # inverse CDF of r⁻³
    centre = torch.rand(n, DISCS, 2, generator=generator) * size
    grey = torch.rand(n, DISCS, generator=generator)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    image = torch.rand(n, 1, 1, generator=generator).expand(n, size, size).clone()
    for d in range(DISCS):
        dy = coords.view(1, size, 1) - centre[:, d, 0, None, None]
        dx = coords.view(1, 1, size) - centre[:, d, 1, None, None]
        inside = dy**2 + dx**2 <= radius[:, d, None, None] ** 2
        image = torch.where(inside, grey[:, d, None, None], image)
    return image


def random_blurs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n Gaussian kernels (n, KERNEL_SIZE, KERNEL_SIZE) with σ uniform in BLUR_SIGMA, and n noise
    levels uniform in NOISE, float32."""
    sigma = BLUR_SIGMA[0] + torch.rand(n, generator=generator) * (BLUR_SIGMA[1] - BLUR_SIGMA[0])
    kernels = torch.stack([gaussian_kernel(float(s), KERNEL_SIZE) for s in sigma]).float()
    noise = NOISE[0] + torch.rand(n, generator=generator) * (NOISE[1] - NOISE[0])
    return kernels, noise


def degrade(
    sharp: torch.Tensor, kernels: torch.Tensor, noise: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """b = A x + noise · ε for each image (B, H, W)."""
    eps = torch.randn(sharp.shape, generator=generator)
    return blur(sharp, kernels) + noise.view(-1, 1, 1) * eps


def make_set(n: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    """A seeded set: sharp images, their kernels, noise levels and blurred noisy observations."""
    gen = torch.Generator().manual_seed(seed)
    sharp = dead_leaves(n, size, gen)
    kernels, noise = random_blurs(n, gen)
    return {"sharp": sharp, "kernel": kernels, "noise": noise, "blurred": degrade(sharp, kernels, noise, gen)}
