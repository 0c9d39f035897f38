"""Held-out or training LPs as batched graphs with their solutions, and a network's per-LP errors on them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from eqserve.models.lp_gnn.data import LP
from eqserve.models.lp_gnn.graph import Graph, lp_errors, lp_graph, union
from eqserve.models.lp_gnn.networks import ImplicitGNN


class LpSet:
    """LPs as graphs with their solutions, cut into batches of disjoint-union graphs."""

    def __init__(self, lps: list[LP], sols: list[np.ndarray]) -> None:
        self.graphs = [lp_graph(lp) for lp in lps]
        self.sols = [torch.as_tensor(y, dtype=torch.float64) for y in sols]

    def __len__(self) -> int:
        return len(self.graphs)

    def batch(self, idx: list[int]) -> tuple[Graph, torch.Tensor]:
        """The union graph of LPs `idx` and their solutions y* (float64, unscaled)."""
        return union([self.graphs[i] for i in idx]), torch.cat([self.sols[i] for i in idx])


def predict(net: nn.Module, g: Graph, iters: int | None) -> torch.Tensor:
    """The prediction in scaled units: the explicit net's one pass; the implicit net's z_T, or with
    `iters` None its fixed point (Picard to the served default, `rel` 1e-4)."""
    if not isinstance(net, ImplicitGNN):
        return net(g)
    return net.fixed_point(g)[0] if iters is None else net.unroll(g, iters)


def errors(net: nn.Module, data: LpSet, iters: int | None, batch: int = 500) -> torch.Tensor:
    """Per-LP errors ‖ŷ − y*‖ / (‖y*‖ + 1) in eval mode."""
    net.eval()
    param = next(net.parameters())
    out = []
    with torch.no_grad():
        for i in range(0, len(data), batch):
            g, y = data.batch(list(range(i, min(i + batch, len(data)))))
            g = g.to(param.device, param.dtype)
            out.append(lp_errors(predict(net, g, iters) * g.scale, y.to(param.device), g).cpu())
    return torch.cat(out)
