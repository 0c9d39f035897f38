"""Training of both LP networks: MSE in scaled units, Adam; the implicit one as a DEQ.

The implicit net's loss is taken at its fixed point, the answer it serves: the forward pass runs
Picard without a graph to `rel` tolerance, warm-started from the LP's fixed point of the previous
epoch, and the gradient is the phantom one (Geng et al. 2021): back-propagation through PHANTOM_STEPS
steps of G from the detached fixed point, a truncated Neumann series of (I − ∂G/∂z)⁻¹ that a
contraction makes short. After every step the gain is recalibrated from the norm of ∂G/∂z measured
by power iteration at the batch's fixed points, so the training sees the contraction it is served with.
Unrolled training instead fits z_T for one T, and nothing then holds E_t down past T.

Stages follow the paper's code: most epochs at one step size, the rest at a tenth of it. When an
epoch's loss jumps (or turns non-finite), the weights and optimizer roll back to the best epoch and
the step size halves.
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

FORWARD_TOL, FORWARD_ITERS = 1e-4, 100
"""The training forward's Picard: the served `rel` tolerance and iteration budget."""

PHANTOM_STEPS = 3
"""Steps of G from the detached fixed point that the loss is back-propagated through."""

POWER_ITERS, SETTLE_POWER_ITERS = 3, 20
"""Power-iteration steps for the norm of ∂G/∂z: per training batch, and for the final gain."""


@dataclass(frozen=True)
class Stage:
    """A phase of training: step size and epochs."""

    lr: float
    epochs: int


def deq_output(net: ImplicitGNN, g: Graph, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed point (Picard from z0) with the phantom gradient attached, and the detached fixed point."""
    emb = net.embed(g)
    with torch.no_grad():
        z_star, _ = net.solve(g, (emb[0].detach(), emb[1].detach()), FORWARD_TOL, FORWARD_ITERS, z0)
    z = z_star
    for _ in range(PHANTOM_STEPS):
        z = net.step(g, emb, z)
    return z, z_star


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
    implicit = isinstance(net, ImplicitGNN)
    warm = [g.var.new_zeros(g.var.shape[0]) for g in train_set.graphs]
    for k, stage in enumerate(stages):
        opt = torch.optim.Adam(net.parameters(), lr=stage.lr)
        best_loss, best = math.inf, (copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()))
        start = time.perf_counter()
        for epoch in range(1, stage.epochs + 1):
            net.train()
            total = 0.0
            perm = torch.randperm(len(train_set), generator=gen).tolist()
            for i in range(0, len(perm), batch_lps):
                idx = perm[i : i + batch_lps]
                g, y = train_set.batch(idx)
                target = (y / g.scale).to(g.var.dtype)
                if implicit:
                    pred, z_star = deq_output(net, g, torch.cat([warm[j] for j in idx]))
                    warm_batch = z_star.split([len(warm[j]) for j in idx])
                    for j, z_j in zip(idx, warm_batch, strict=True):
                        warm[j] = z_j
                else:
                    pred = net(g)
                loss = ((pred - target) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if implicit:
                    emb = net.embed(g)
                    net.calibrate(net.jacobian_norms(g, emb, z_star, POWER_ITERS))
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
                err = errors(net, heldout, None).mean().item()
                log(
                    f"{tag} stage {k + 1} (lr {opt.param_groups[0]['lr']:.1e}) epoch "
                    f"{epoch}/{stage.epochs} loss {loss_epoch:.4e} held-out err {err:.4f} "
                    f"({time.perf_counter() - start:.0f} s)"
                )
        net.load_state_dict(best[0])
    if implicit:
        settle_gain(net, train_set, batch_lps)


def settle_gain(net: ImplicitGNN, data: LpSet, batch_lps: int, rounds: int = 2) -> None:
    """Set L to the largest ‖∂F/∂u‖ over `data`'s fixed points (power iteration to convergence), so that
    ‖∂G/∂z‖ ≤ μ at every one of them; twice, since the fixed points move with the gain."""
    net.eval()
    for _ in range(rounds):
        seen = []
        for i in range(0, len(data), batch_lps):
            g, _ = data.batch(list(range(i, min(i + batch_lps, len(data)))))
            with torch.no_grad():
                emb = net.embed(g)
                z, _ = net.solve(g, emb, FORWARD_TOL, FORWARD_ITERS)
            seen.append(net.jacobian_norms(g, emb, z, SETTLE_POWER_ITERS).max() / net.gain())
        with torch.no_grad():
            net.lip.copy_(torch.stack(seen).max())


def stages_for(epochs: int, lr: float) -> list[Stage]:
    """Both nets: 3/4 of the epochs at lr, then the rest at lr/10 (the paper's 10,000 + 5,000 steps, in
    proportion; its second stage doubles the unrolled depth, which a DEQ has no use for)."""
    first = max(1, round(0.75 * epochs))
    return [Stage(lr, first), Stage(lr / 10, max(1, epochs - first))]


def picard_iters(net: ImplicitGNN, data: LpSet) -> dict:
    """Plain Picard iterations from 0 to `rel` 1e-4 on `data`: mean, max and the share within 100."""
    g, _ = data.batch(list(range(len(data))))
    with torch.no_grad():
        _, iters = net.eval().fixed_point(g)
    return {
        "mean": iters.double().mean().item(),
        "max": int(iters.max()),
        "within_100": (iters <= 100).double().mean().item(),
    }


def export(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, for safetensors."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}


def train(
    out_dir: Path,
    *,
    emb: int = 16,
    explicit: bool = False,
    epochs: int = 40,
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
    stages = stages_for(epochs, lr)
    tag = f"lp-gnn{'-explicit' if explicit else ''} d={emb}"
    fit(net, train_set, heldout, stages, batch_lps=batch_lps, seed=seed, tag=tag, log=log)
    save_file(export(net), str(out_dir / (EXPLICIT_FILE if explicit else IMPLICIT_FILE)))
    result = {
        "model": "lp-gnn-explicit" if explicit else "lp-gnn",
        "emb": emb,
        "params": param_count(net),
        "train_error": errors(net, train_set, None).mean().item(),
        "heldout_error": errors(net, heldout, None).mean().item(),
        "heldout_picard_iters": picard_iters(net, heldout) if isinstance(net, ImplicitGNN) else None,
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
