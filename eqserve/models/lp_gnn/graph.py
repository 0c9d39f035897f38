"""The bipartite graph of an LP, with the scalings the LP's solution is invariant under, and batching.

Constraint nodes carry `[b_i / s, type_i]` (type 1 for `=`), variable nodes `[c_j / ‖c‖∞, l_j / s, u_j / s]`
with `s = max(‖l‖∞, ‖u‖∞)`, edge (i, j) carries `A_ij`. Both scalings are exact symmetries of the LP:
`y*(A, b, c, l, u) = s · y*(A, b/s, c/‖c‖∞, l/s, u/s)`, so the networks work in units of `s` and the
prediction is scaled back. A batch of LPs is one graph of disjoint pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eqserve.models.lp_gnn.data import LP


@dataclass
class Graph:
    """Node features, edges and, per variable node, its LP's scale `s` and the index of its LP."""

    cons: torch.Tensor
    var: torch.Tensor
    edges: torch.Tensor
    vals: torch.Tensor
    scale: torch.Tensor
    lp: torch.Tensor

    @property
    def num_lps(self) -> int:
        """Number of LPs (disjoint pieces)."""
        return int(self.lp[-1]) + 1 if len(self.lp) else 0

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Graph:
        """The same graph on `device`, with float features of `dtype`."""
        return Graph(
            self.cons.to(device, dtype),
            self.var.to(device, dtype),
            self.edges.to(device),
            self.vals.to(device, dtype),
            self.scale.to(device, dtype),
            self.lp.to(device),
        )


def _max_abs(x: torch.Tensor) -> torch.Tensor:
    """‖x‖∞, or 1 where x is all zeros (nothing to scale)."""
    m = x.abs().max() if x.numel() else x.new_zeros(())
    return torch.where(m > 0, m, torch.ones_like(m))


def lp_graph(lp: LP, dtype: torch.dtype = torch.float32) -> Graph:
    """The normalised graph of one LP (finite bounds assumed)."""
    f64 = torch.float64
    b, c = torch.as_tensor(lp.b, dtype=f64), torch.as_tensor(lp.c, dtype=f64)
    low, up = torch.as_tensor(lp.l, dtype=f64), torch.as_tensor(lp.u, dtype=f64)
    s = _max_abs(torch.cat([low, up]))
    cons = torch.stack([b / s, torch.as_tensor(lp.eq, dtype=f64)], dim=1)
    var = torch.stack([c / _max_abs(c), low / s, up / s], dim=1)
    edges = torch.stack([torch.as_tensor(lp.rows), torch.as_tensor(lp.cols)]).long()
    return Graph(
        cons.to(dtype),
        var.to(dtype),
        edges,
        torch.as_tensor(lp.vals, dtype=dtype),
        s.to(dtype).expand(lp.n).clone(),
        torch.zeros(lp.n, dtype=torch.long),
    )


def union(graphs: list[Graph]) -> Graph:
    """One graph of single-LP pieces; constraint and variable indices are offset, LP i is numbered i."""
    device = graphs[0].var.device
    n_cons = torch.tensor([g.cons.shape[0] for g in graphs], device=device)
    n_var = torch.tensor([g.var.shape[0] for g in graphs], device=device)
    n_edges = torch.tensor([g.edges.shape[1] for g in graphs], device=device)
    cons_at = torch.cumsum(n_cons, 0) - n_cons
    var_at = torch.cumsum(n_var, 0) - n_var
    shift = torch.stack([cons_at.repeat_interleave(n_edges), var_at.repeat_interleave(n_edges)])
    return Graph(
        torch.cat([g.cons for g in graphs]),
        torch.cat([g.var for g in graphs]),
        torch.cat([g.edges for g in graphs], dim=1) + shift,
        torch.cat([g.vals for g in graphs]),
        torch.cat([g.scale for g in graphs]),
        torch.arange(len(graphs), device=device).repeat_interleave(n_var),
    )


def lp_errors(pred: torch.Tensor, true: torch.Tensor, g: Graph) -> torch.Tensor:
    """Per-LP relative error ‖ŷ − y*‖ / (‖y*‖ + 1) for per-variable vectors over a batched graph."""
    count = g.num_lps
    diff = torch.zeros(count, dtype=torch.float64, device=pred.device)
    norm = torch.zeros(count, dtype=torch.float64, device=pred.device)
    diff.index_add_(0, g.lp, (pred.double() - true.double()) ** 2)
    norm.index_add_(0, g.lp, true.double() ** 2)
    return diff.sqrt() / (norm.sqrt() + 1)
