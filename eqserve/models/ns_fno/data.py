"""Forcing → steady vorticity pairs from our solver, and the error metric."""

from __future__ import annotations

import torch

from eqserve.models.ns_fno.solver import random_forcing, steady_state

AMPLITUDE = (0.02, 0.08)
"""RMS range of the forcings: strong enough that the steady state is far from the linear response
(≈ 46% relative difference on average at 32²), weak enough that time-stepping from rest settles on
one steady state for every draw (at RMS ≳ 0.15 some draws blew up or did not settle)."""
CHUNK = 64
"""Rows solved together (the solver's Anderson window costs m states per row)."""


def make_dataset(count: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(forcing, steady vorticity), each (count, n, n) float64, for seeded random forcings."""
    f = random_forcing(count, n, seed, AMPLITUDE)
    w = torch.cat([steady_state(f[i : i + CHUNK])[0] for i in range(0, count, CHUNK)])
    return f, w
