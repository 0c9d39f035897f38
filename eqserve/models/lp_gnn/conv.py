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
