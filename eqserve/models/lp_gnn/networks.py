"""The explicit GNN of Chen et al. (2023) and its implicit counterpart G(y, x) (Liu et al. 2026).

Parameter counts are the paper's: explicit 29d² + 29d, implicit 29d² + 59d + 22, counted as Keras'
count_params counts them (Chen et al.'s code is Keras), BatchNorm's running mean and variance
included. The implicit net is the explicit trunk with y as a fourth variable feature, BatchNorm on
the raw features (2 + 3) and after each of its 7 hidden layers, and a head that reads each
variable's embedding together with its current y.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from eqserve.models.lp_gnn.conv import HalfConv
from eqserve.models.lp_gnn.graph import Graph

CONS_FEATURES, VAR_FEATURES = 2, 3


def _norm(width: int, on: bool) -> nn.Module:
    return nn.BatchNorm1d(width) if on else nn.Identity()


class Trunk(nn.Module):
    """Node embeddings, then four half-convolutions (v→c, c→v, v→c, c→v), each followed by ReLU."""

    def __init__(self, d: int, with_state: bool, norm: bool) -> None:
        super().__init__()
        self.cons_in, self.var_in = _norm(CONS_FEATURES, norm), _norm(VAR_FEATURES, norm)
        self.cons_emb = nn.Linear(CONS_FEATURES, d)
        self.var_emb = nn.Linear(VAR_FEATURES + int(with_state), d)
        self.convs = nn.ModuleList(HalfConv(d, to_constraints=k % 2 == 0) for k in range(4))
        self.norms = nn.ModuleList(_norm(d, norm) for _ in range(6))

    def forward(self, g: Graph, z: torch.Tensor | None = None) -> torch.Tensor:
        """Variable embeddings (N, d); z (N,), if given, is appended to the variable features."""
        var = self.var_in(g.var)
        if z is not None:
            var = torch.cat([var, z[:, None]], dim=1)
        h_cons = F.relu(self.norms[0](self.cons_emb(self.cons_in(g.cons))))
        h_var = F.relu(self.norms[1](self.var_emb(var)))
        for conv, norm in zip(self.convs, self.norms[2:], strict=True):
            if conv.to_constraints:
                h_cons = F.relu(norm(conv(h_cons, h_var, g)))
            else:
                h_var = F.relu(norm(conv(h_cons, h_var, g)))
        return h_var


class ExplicitGNN(nn.Module):
    """x ↦ ŷ in one pass: the trunk, then a per-variable head d → d → 1."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.trunk = Trunk(d, with_state=False, norm=False)
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1, bias=False))

    def forward(self, g: Graph) -> torch.Tensor:
        """The predicted solution (N,) in units of each LP's scale s."""
        return self.head(self.trunk(g)).squeeze(1)


class ImplicitGNN(nn.Module):
    """G(z, x): the trunk with z among the variable features, then a head reading [embedding, z]."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.trunk = Trunk(d, with_state=True, norm=True)
        self.hidden = nn.Linear(d + 1, d)
        self.hidden_norm = nn.BatchNorm1d(d)
        self.update = nn.Linear(d + 1, 1)

    def forward(self, g: Graph, z: torch.Tensor) -> torch.Tensor:
        """One step z ↦ G(z, x), all (N,) in units of each LP's scale s."""
        zc = z[:, None]
        h = F.relu(self.hidden_norm(self.hidden(torch.cat([self.trunk(g, z), zc], dim=1))))
        return self.update(torch.cat([h, zc], dim=1)).squeeze(1)

    def unroll(self, g: Graph, iters: int) -> torch.Tensor:
        """z_T from z_0 = 0 after `iters` steps."""
        z = g.var.new_zeros(g.var.shape[0])
        for _ in range(iters):
            z = self(g, z)
        return z


def param_count(net: nn.Module) -> int:
    """Trainable scalars plus BatchNorm's running mean and variance (Keras' count_params)."""
    stats = sum(
        b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var"))
    )
    return sum(p.numel() for p in net.parameters()) + stats
