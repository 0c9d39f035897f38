"""The deq-mlp target map y*(x) = A(x)⁻¹ b, A(x) = diag(x) + C, and seeded samples of it.

C is a fixed skew-symmetric coupling, so xᵀA(x)x = Σ xᵢ³ > 0 and A(x) is invertible for every
x > 0; on [0.05, 1]^4 the map is smooth but 1/x-like, steep where some xᵢ is near 0.05.
"""

from __future__ import annotations

import math

import torch

D_IN = 4
D_OUT = 4
X_LOW = 0.05
X_HIGH = 1.0

COUPLING = torch.tensor(
    [
        [0.0, 0.3, -0.2, 0.1],
        [-0.3, 0.0, 0.25, -0.15],
        [0.2, -0.25, 0.0, 0.3],
        [-0.1, 0.15, -0.3, 0.0],
    ],
    dtype=torch.float64,
)
RHS = torch.ones(D_OUT, dtype=torch.float64)


def target(x: torch.Tensor) -> torch.Tensor:
    """The true map: solve (diag(x) + C) y = b for each row of x (N, 4), in float64."""
    x = x.to(torch.float64)
    a = torch.diag_embed(x) + COUPLING
    return torch.linalg.solve(a, RHS.expand(x.shape[0], D_OUT))


def sample_inputs(n: int, generator: torch.Generator) -> torch.Tensor:
    """n inputs (n, 4) log-uniform on [0.05, 1]^4, so the steep corner is well covered."""
    u = torch.rand(n, D_IN, generator=generator, dtype=torch.float64)
    return torch.exp(math.log(X_LOW) + u * (math.log(X_HIGH) - math.log(X_LOW)))


def make_dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n (x, y*) pairs in float32, deterministic from `seed`."""
    x = sample_inputs(n, torch.Generator().manual_seed(seed))
    return x.float(), target(x).float()
