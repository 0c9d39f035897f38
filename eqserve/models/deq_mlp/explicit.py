"""The explicit twin of deq-mlp: a plain tanh MLP of about the same parameter count."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


def mlp_params(d_in: int, width: int, depth: int, d_out: int) -> int:
    """Parameter count of an MLP with `depth` hidden tanh layers of `width` units."""
    return (d_in + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * d_out


def matching_width(params: int, d_in: int, depth: int, d_out: int) -> int:
    """The hidden width whose MLP parameter count is closest to `params`."""
    return min(range(1, 4096), key=lambda w: abs(mlp_params(d_in, w, depth, d_out) - params))


class ExplicitMLP(nn.Module):
    """x → tanh(L₁x) → … → tanh(L_depth ·) → linear readout; the baseline the DEQ is compared to."""

    def __init__(self, d_in: int, width: int, depth: int, d_out: int) -> None:
        super().__init__()
        dims = [d_in] + [width] * depth + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction for a batch x (N, d_in) → (N, d_out)."""
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)

    def num_params(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_weights(cls, path: str | Path) -> ExplicitMLP:
        """Build from a safetensors checkpoint, with the sizes read off the tensor shapes."""
        state = load_file(str(path))
        n_layers = sum(1 for k in state if k.endswith(".weight"))
        width, d_in = state["layers.0.weight"].shape
        d_out = state[f"layers.{n_layers - 1}.weight"].shape[0]
        model = cls(d_in, width, n_layers - 1, d_out)
        model.load_state_dict(state, strict=True)
        return model
