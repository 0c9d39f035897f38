"""One half-convolution of the bipartite LP graph (Chen et al. 2023): messages from one side to the other."""

from __future__ import annotations

import torch
from torch import nn

from eqserve.models.lp_gnn.graph import Graph


def mlp(d_in: int, d_out: int, first_bias: bool = True) -> nn.Sequential:
    """Two layers, d_in → d_out → d_out, ReLU between."""
    return nn.Sequential(nn.Linear(d_in, d_out, bias=first_bias), nn.ReLU(), nn.Linear(d_out, d_out))


class HalfConv(nn.Module):
    """h_dst ← out([Σ_src A_ij · msg(h_src), self(h_dst)]), either variables → constraints or back.

    Constraint embeddings have width `d_cons`, variable embeddings `d_var` (the implicit net's carry
    the state as one extra column). As in Chen et al.'s code, the MLP on the variable side has no
    bias in its first layer; that is what makes the explicit GNN's parameter count 29d² + 29d.
    """

    def __init__(self, d_cons: int, d_var: int, to_constraints: bool) -> None:
        super().__init__()
        self.to_constraints = to_constraints
        d_src, d_dst = (d_var, d_cons) if to_constraints else (d_cons, d_var)
        self.msg = mlp(d_src, d_src, first_bias=not to_constraints)
        self.self_ = mlp(d_dst, d_dst, first_bias=to_constraints)
        self.out = mlp(d_src + d_dst, d_dst)

    def forward(self, h_cons: torch.Tensor, h_var: torch.Tensor, g: Graph) -> torch.Tensor:
        """The new embeddings of the destination side (constraints or variables)."""
        if self.to_constraints:
            src, dst, src_idx, dst_idx = h_var, h_cons, g.edges[1], g.edges[0]
        else:
            src, dst, src_idx, dst_idx = h_cons, h_var, g.edges[0], g.edges[1]
        messages = g.vals[:, None] * self.msg(src)[src_idx]
        pooled = dst.new_zeros(dst.shape[0], messages.shape[1]).index_add_(0, dst_idx, messages)
        return self.out(torch.cat([pooled, self.self_(dst)], dim=1))

    def lipschitz(self, src: Blocks, dst: Blocks) -> torch.Tensor:
        """A bound on the Lipschitz constant in the state of this layer's output, from its inputs'
        column blocks (see `mlp_bound`); it needs ‖A‖₂ ≤ 1, which `lp_graph` ensures."""
        d_src = self.msg[2].out_features
        d_dst = self.self_[2].out_features
        pooled = mlp_bound(self.msg, src)
        return mlp_bound(self.out, [(d_src, pooled), (d_dst, mlp_bound(self.self_, dst))])


Blocks = list[tuple[int, torch.Tensor | float]]
"""An input's columns as consecutive blocks (width, Lipschitz bound in the state); 0: independent of it."""


def mlp_bound(net: nn.Sequential, blocks: Blocks) -> torch.Tensor:
    """Lipschitz bound of Linear → ReLU → Linear on an input of column blocks: ‖W₂‖ · Σ_k ‖W₁[:, k]‖ · l_k,
    by the triangle inequality (ReLU is 1-Lipschitz); blocks that do not depend on the state add nothing."""
    w1, at = net[0].weight, 0
    total = w1.new_zeros(())
    for width, lip in blocks:
        if not (isinstance(lip, float) and lip == 0.0):
            total = total + spectral(w1[:, at : at + width]) * lip
        at += width
    return spectral(net[2].weight) * total


def spectral(w: torch.Tensor) -> torch.Tensor:
    """‖w‖₂, the largest singular value (differentiable)."""
    return torch.linalg.matrix_norm(w, ord=2)
