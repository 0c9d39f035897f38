"""A DEQ layer as torchdeq users write it: a plain `nn.Module` f(z, x), nothing eqserve-specific."""

from __future__ import annotations

import torch
from torch import nn


class DEQLayer(nn.Module):
    """f(z, x) = tanh(W z + U x + b), with ‖W‖₂ = `gain` < 1 so that f is a contraction in z."""

    def __init__(self, d_in: int, d_hidden: int, gain: float = 0.8, seed: int = 0) -> None:
        super().__init__()
        self.W = nn.Linear(d_hidden, d_hidden, bias=False)
        self.U = nn.Linear(d_in, d_hidden)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            # tanh is 1-Lipschitz, so a spectral norm below 1 makes z ↦ f(z, x) contractive.
            self.W.weight.mul_(gain / torch.linalg.matrix_norm(self.W.weight, ord=2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.W(z) + self.U(x))
