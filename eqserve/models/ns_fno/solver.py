"""Steady 2-D Navier–Stokes in vorticity form on the periodic square [0, 2π)², pseudo-spectral.

    u·∇ω = ν Δω − α ω + f,   u = (∂ψ/∂y, −∂ψ/∂x),   −Δψ = ω

The linear drag α makes the steady state unique for the forcings we draw (with ν alone, at these
amplitudes, time-stepping settles on periodic orbits or depends on the start). The discrete
equations are the 2/3-dealiased Galerkin ones: `residual` is what a steady state must make zero.
Arrays are (..., n, n), axis -2 is x and axis -1 is y.
"""

from __future__ import annotations

import math

import torch

from eqserve.solvers import anderson

NU = 0.02
"""Viscosity ν."""
DRAG = 0.1
"""Linear drag α."""
FORCING_MAX_K = 4
"""Forcings live on the wavenumbers 1 ≤ |k| ≤ FORCING_MAX_K (so any grid n ≥ 2·4 + 2 holds them exactly)."""


def wavenumbers(n: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(kx, ky) of the rfft2 layout of an n×n grid: shapes (n, 1) and (1, n//2 + 1)."""
    kx = torch.fft.fftfreq(n, 1.0 / n, dtype=dtype).view(n, 1)
    ky = torch.fft.rfftfreq(n, 1.0 / n, dtype=dtype).view(1, n // 2 + 1)
    return kx, ky


def _dealias(n: int) -> torch.Tensor:
    """The 2/3-rule mask on the rfft2 layout."""
    kx, ky = wavenumbers(n)
    cut = n / 3
    return (kx.abs() < cut) & (ky.abs() < cut)


def velocity_hat(w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """û, v̂ of the vorticity's rfft2: ψ̂ = ω̂/|k|² (zero mean), u = ∂ψ/∂y, v = −∂ψ/∂x."""
    n = w_hat.shape[-2]
    kx, ky = wavenumbers(n, w_hat.real.dtype)
    k2 = kx**2 + ky**2
    psi_hat = w_hat / torch.where(k2 == 0, 1.0, k2)
    psi_hat = torch.where(k2 == 0, 0.0, psi_hat)
    return 1j * ky * psi_hat, -1j * kx * psi_hat


def velocity(w: torch.Tensor) -> torch.Tensor:
    """The velocity (..., 2, n, n) of a vorticity field (..., n, n)."""
    n = w.shape[-1]
    u_hat, v_hat = velocity_hat(torch.fft.rfft2(w))
    return torch.stack([torch.fft.irfft2(u_hat, s=(n, n)), torch.fft.irfft2(v_hat, s=(n, n))], dim=-3)


def _advection_hat(w_hat: torch.Tensor) -> torch.Tensor:
    """The dealiased rfft2 of u·∇ω."""
    n = w_hat.shape[-2]
    kx, ky = wavenumbers(n, w_hat.real.dtype)
    u_hat, v_hat = velocity_hat(w_hat)
    irfft = lambda a: torch.fft.irfft2(a, s=(n, n))  # noqa: E731
    prod = irfft(u_hat) * irfft(1j * kx * w_hat) + irfft(v_hat) * irfft(1j * ky * w_hat)
    return torch.fft.rfft2(prod) * _dealias(n)


def _linear(n: int, dtype: torch.dtype) -> torch.Tensor:
    """ν|k|² + α on the rfft2 layout."""
    kx, ky = wavenumbers(n, dtype)
    return NU * (kx**2 + ky**2) + DRAG


def residual(w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The steady equation's residual u·∇ω − νΔω + αω − f on the grid (zero at a discrete steady state)."""
    n = w.shape[-1]
    w_hat = torch.fft.rfft2(w)
    r_hat = _advection_hat(w_hat) + _linear(n, w.dtype) * w_hat - torch.fft.rfft2(f)
    return torch.fft.irfft2(r_hat, s=(n, n))


def steady_state(
    f: torch.Tensor, *, dt: float = 0.1, tol: float = 1e-11, max_steps: int = 5000, m: int = 6
) -> tuple[torch.Tensor, int]:
    """Time-step ∂ω/∂t = f − u·∇ω + νΔω − αω from ω = 0 until it stops moving, in float64.

    One step is semi-implicit Euler (diffusion and drag implicit, advection explicit), whose fixed
    point satisfies the discrete steady equations exactly; the slow decay of the flow (≈ α) would
    take thousands of steps, so the steps are Anderson-mixed (the engine's solver math, window m).
    Stops when every row moves by ≤ tol·‖f‖ in a step; returns (ω, steps) or raises.
    """
    f = f.to(torch.float64)
    n = f.shape[-1]
    rows = f.reshape(-1, n, n)
    b = rows.shape[0]
    f_hat = torch.fft.rfft2(rows)
    lin = _linear(n, torch.float64)

    def advance(y: torch.Tensor) -> torch.Tensor:
        w_hat = torch.fft.rfft2(y.view(b, n, n))
        w_hat = (w_hat + dt * (f_hat - _advection_hat(w_hat))) / (1 + dt * lin)
        return torch.fft.irfft2(w_hat, s=(n, n)).reshape(b, n * n)

    y = torch.zeros(b, n * n, dtype=torch.float64)
    hist = torch.zeros(b, m, 2 * n * n, dtype=torch.float64)
    gram = torch.zeros(b, m, m, dtype=torch.float64)
    beta = torch.ones(b, 1, dtype=torch.float64)
    scale = rows.flatten(1).norm(dim=1)
    for step in range(1, max_steps + 1):
        gy = advance(y)
        moved = (gy - y).norm(dim=1)
        if not torch.isfinite(moved).all():
            break
        if (moved <= tol * scale).all():
            return gy.view(f.shape), step
        point = torch.full((b,), (step - 1) % m, dtype=torch.long)
        prev = torch.full((b,), (step - 2) % m if step > 1 else 0, dtype=torch.long)
        anderson.record(y, gy, hist, gram, prev, point)
        gamma, ok = anderson.solve(gram, point, torch.full_like(point, m), 1e-10, 1e8)
        y = torch.where(ok.unsqueeze(1), anderson.mix(y, gy, hist, gamma, gamma * beta, beta), gy)
    raise RuntimeError(f"no steady state within {max_steps} steps (dt = {dt})")


def random_forcing(count: int, n: int, seed: int, amplitude: tuple[float, float]) -> torch.Tensor:
    """`count` smooth random forcings (count, n, n), float64: Gaussian coefficients on 1 ≤ |k| ≤ 4,
    each scaled to an RMS drawn uniformly from `amplitude`. The same seed gives the same continuous
    fields on any grid n ≥ 10, so a 64² set samples the very forcings of a 32² one."""
    gen = torch.Generator().manual_seed(seed)
    m = FORCING_MAX_K
    ks = torch.arange(-m, m + 1, dtype=torch.float64)
    kx, ky = ks.view(-1, 1), ks.view(1, -1)
    keep = ((kx**2 + ky**2) >= 1) & ((kx**2 + ky**2) <= m**2) & ((ky > 0) | ((ky == 0) & (kx > 0)))
    parts = torch.randn(2, count, *keep.shape, generator=gen, dtype=torch.float64)
    coef = torch.complex(parts[0], parts[1]) * keep
    rms = torch.empty(count, dtype=torch.float64).uniform_(*amplitude, generator=gen)
    x = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    angle = kx.view(-1, 1, 1, 1) * x.view(1, 1, n, 1) + ky.view(1, -1, 1, 1) * x.view(1, 1, 1, n)
    phase = torch.exp(1j * angle)
    field = 2 * torch.einsum("cab,abxy->cxy", coef, phase.to(coef.dtype)).real
    field = field / field.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
    return field * rms.view(-1, 1, 1)
