"""bench/lp_paper_recipe.py: the paper's unrolled implicit GNN has the paper's parameter count and
wiring, and its convergence measure tells a converging G from one that is not."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from eqserve.models.lp_gnn.data import make_dataset
from eqserve.models.lp_gnn.lpset import LpSet

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.append(str(BENCH))  # the bench imports lp_table beside it
_spec = importlib.util.spec_from_file_location("lp_paper_recipe", BENCH / "lp_paper_recipe.py")
assert _spec is not None and _spec.loader is not None
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)


@pytest.mark.parametrize("d", [4, 8, 16])
def test_parameter_count_is_the_papers(d: int) -> None:
    assert sum(p.numel() for p in recipe.UnrolledGNN(d).parameters()) == 29 * d * d + 59 * d + 22


def test_the_head_reads_the_latent_state_after_the_loop() -> None:
    torch.manual_seed(0)
    net = recipe.UnrolledGNN(8).eval()
    data = LpSet(*make_dataset(3, seed=5))
    g, _ = data.batch([0, 1, 2])
    net.depth = 4
    with torch.no_grad():
        emb = net.embed(g)
        y = torch.zeros(g.var.shape[0])
        for _ in range(4):
            y = net.step(g, emb, y)
        want = net.layers.head(torch.cat([emb[1], y[:, None]], dim=1)).squeeze(1)
        assert torch.equal(net(g), want)
        assert y.abs().max() > 0  # the steps moved y, so the check above saw them


def test_convergence_share_counts_only_lps_within_the_tolerance() -> None:
    torch.manual_seed(0)
    data = LpSet(*make_dataset(4, seed=6))
    net = recipe.UnrolledGNN(4)
    assert recipe.picard_share(net, data, tol=0.0, iters=3) == 0.0  # y still moves after 3 steps
    with torch.no_grad():
        net.layers.to_y.weight.zero_()
        net.layers.to_y.bias.fill_(1.0)  # G(y) = 1 for every y: the second step repeats the first exactly
    assert recipe.picard_share(net, data, tol=0.0, iters=3) == 1.0
