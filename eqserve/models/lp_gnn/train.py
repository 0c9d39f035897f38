"""Training of both LP networks: MSE in scaled units, Adam, the implicit one through unrolled iterations.

The implicit net's loss averages over every unrolled iterate, not only the last, so that each
step moves toward y*: that keeps E_t falling past the T it was trained with.

A stage fixes the number of unrolled iterations and the step size. When an epoch's loss jumps
(or turns non-finite), the weights and optimizer roll back to the best epoch and the step size halves.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from eqserve.models.lp_gnn.data import make_dataset, save_lps
from eqserve.models.lp_gnn.graph import Graph
from eqserve.models.lp_gnn.lpset import LpSet, errors
from eqserve.models.lp_gnn.model import EXPLICIT_FILE, HELDOUT_FILE, IMPLICIT_FILE
from eqserve.models.lp_gnn.networks import ExplicitGNN, ImplicitGNN, param_count

HELDOUT_SEED = 20_230_501
"""The shipped held-out set's seed: fixed, so every training run writes the same set."""

JUMP = 2.0
"""An epoch whose loss exceeds this many times the best one so far counts as a jump."""


@dataclass(frozen=True)
class Stage:
    """A phase of training: unrolled iterations (None: the explicit net), step size, epochs."""

    iters: int | None
    lr: float
    epochs: int


def loss_of(net: nn.Module, g: Graph, target: torch.Tensor, iters: int | None) -> torch.Tensor:
    """MSE in scaled units; for the implicit net the mean over the unrolled iterates z_1 … z_T."""
    if iters is None:
        return ((net(g) - target) ** 2).mean()
    z, total = torch.zeros_like(target), target.new_zeros(())
    for _ in range(iters):
        z = net(g, z)
        total = total + ((z - target) ** 2).mean()
    return total / iters


def fit(
    net: nn.Module,
    train_set: LpSet,
    heldout: LpSet,
    stages: list[Stage],
    *,
    batch_lps: int = 100,
    seed: int = 0,
    tag: str = "",
    log: Callable[[str], None] = print,
) -> None:
    """Adam on the MSE of scaled solutions, stage by stage, with roll-back on jumps; logs progress."""
    gen = torch.Generator().manual_seed(seed)
    for k, stage in enumerate(stages):
        opt = torch.optim.Adam(net.parameters(), lr=stage.lr)
        best_loss, best = math.inf, (copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()))
        start = time.perf_counter()
        for epoch in range(1, stage.epochs + 1):
            net.train()
            total = 0.0
            perm = torch.randperm(len(train_set), generator=gen).tolist()
            for i in range(0, len(perm), batch_lps):
                g, y = train_set.batch(perm[i : i + batch_lps])
                loss = loss_of(net, g, (y / g.scale).to(g.var.dtype), stage.iters)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * g.num_lps
            loss_epoch = total / len(train_set)
            if not math.isfinite(loss_epoch) or loss_epoch > JUMP * best_loss:
                net.load_state_dict(best[0])
                opt.load_state_dict(best[1])
                for group in opt.param_groups:
                    group["lr"] *= 0.5
                log(
                    f"{tag} stage {k + 1} epoch {epoch}: loss {loss_epoch:.3e} jumped; "
                    f"rolled back, lr {opt.param_groups[0]['lr']:.2e}"
                )
                continue
            if loss_epoch < best_loss:
                best_loss, best = (
                    loss_epoch,
                    (copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())),
                )
            if epoch == 1 or epoch % max(1, stage.epochs // 10) == 0 or epoch == stage.epochs:
                err = errors(net, heldout, stage.iters).mean().item()
                log(
                    f"{tag} stage {k + 1} (T={stage.iters}, lr {opt.param_groups[0]['lr']:.1e}) epoch "
                    f"{epoch}/{stage.epochs} loss {loss_epoch:.4e} held-out err {err:.4f} "
                    f"({time.perf_counter() - start:.0f} s)"
                )
        net.load_state_dict(best[0])


def stages_for(explicit: bool, epochs: int, lr: float) -> list[Stage]:
    """The paper's schedule: explicit in one stage; implicit 3/4 of the epochs at T = 3, then T = 6, lr/10."""
    if explicit:
        return [Stage(None, lr, epochs)]
    first = max(1, round(0.75 * epochs))
    return [Stage(3, lr, first), Stage(6, lr / 10, max(1, epochs - first))]


def export(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, for safetensors."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}


def train(
    out_dir: Path,
    *,
    emb: int = 16,
    explicit: bool = False,
    epochs: int = 200,
    seed: int = 0,
    n_train: int = 2500,
    n_heldout: int = 300,
    batch_lps: int = 100,
    lr: float = 1e-2,
    log: Callable[[str], None] = print,
) -> dict:
    """Train one network (implicit by default, or its explicit twin) of embedding size `emb`; write its
    weights (lp-gnn.safetensors or lp-gnn-explicit.safetensors) and the held-out set to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(seed)
    train_set = LpSet(*make_dataset(n_train, seed))
    held_lps, held_sols = make_dataset(n_heldout, HELDOUT_SEED)
    save_lps(out_dir / HELDOUT_FILE, held_lps, held_sols)
    heldout = LpSet(held_lps, held_sols)
    log(
        f"data: {n_train} training LPs (seed {seed}), {n_heldout} held-out LPs "
        f"({time.perf_counter() - start:.0f} s)"
    )
    net = ExplicitGNN(emb) if explicit else ImplicitGNN(emb)
    stages = stages_for(explicit, epochs, lr)
    tag = f"lp-gnn{'-explicit' if explicit else ''} d={emb}"
    fit(net, train_set, heldout, stages, batch_lps=batch_lps, seed=seed, tag=tag, log=log)
    save_file(export(net), str(out_dir / (EXPLICIT_FILE if explicit else IMPLICIT_FILE)))
    iters = stages[-1].iters
    result = {
        "model": "lp-gnn-explicit" if explicit else "lp-gnn",
        "emb": emb,
        "params": param_count(net),
        "iters": iters,
        "train_error": errors(net, train_set, iters).mean().item(),
        "heldout_error": errors(net, heldout, iters).mean().item(),
        "epochs": epochs,
        "seed": seed,
        "n_train": n_train,
        "train_seconds": time.perf_counter() - start,
    }
    log(
        f"{tag}: {result['params']} params, train err {result['train_error']:.4f}, "
        f"held-out err {result['heldout_error']:.4f}, {result['train_seconds']:.0f} s"
    )
    return result
