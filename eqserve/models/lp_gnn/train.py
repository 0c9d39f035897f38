"""Training of both LP networks: MSE in scaled units, Adam; the implicit one as a DEQ.

The implicit net's loss is taken at its fixed point, the answer it serves: the forward pass runs
Picard without a graph to `rel` tolerance, one step of G with a graph attaches the parameters, and
the gradient is the implicit one, (I − ∂G/∂z)⁻ᵀ applied by a fixed-point iteration in the backward
hook (it converges because G is a contraction, at the same rate). Unrolled training instead fits
z_T for one T, and nothing then holds E_t down past T.

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


FORWARD_TOL, FORWARD_ITERS = 1e-4, 60
"""The training forward's Picard: the served `rel` tolerance, and a bound on its cost."""

BACKWARD_TOL, BACKWARD_ITERS = 1e-4, 40
"""The backward's fixed-point iteration for the implicit gradient: relative tolerance and a bound."""


@dataclass(frozen=True)
class Stage:
    """A phase of training: step size and epochs."""

    lr: float
    epochs: int


def deq_output(net: ImplicitGNN, g: Graph) -> torch.Tensor:
    """The fixed point z* with the implicit gradient attached: dL/dθ = (∂G/∂θ)ᵀ v, v = dL/dz* + (∂G/∂z)ᵀ v."""
    emb, gain = net.embed(g), net.gain()
    with torch.no_grad():
        fixed = (emb[0].detach(), emb[1].detach())
        z_star, _ = net.solve(g, fixed, gain.detach(), FORWARD_TOL, FORWARD_ITERS)
    z = net.step(g, emb, z_star, gain)
    if not z.requires_grad:
        return z
    z_in = z.detach().requires_grad_()
    g_z = net.step(g, emb, z_in, gain)

    def implicit_grad(grad: torch.Tensor) -> torch.Tensor:
        v = grad
        for _ in range(BACKWARD_ITERS):
            (jv,) = torch.autograd.grad(g_z, z_in, v, retain_graph=True)
            v_next = grad + jv
            done = (v_next - v).norm() <= BACKWARD_TOL * (v_next.norm() + 1e-12)
            v = v_next
            if done:
                break
        return v

    z.register_hook(implicit_grad)
    return z


def loss_of(net: nn.Module, g: Graph, target: torch.Tensor) -> torch.Tensor:
    """MSE in scaled units, the implicit net's at its fixed point."""
    pred = deq_output(net, g) if isinstance(net, ImplicitGNN) else net(g)
    return ((pred - target) ** 2).mean()


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
                loss = loss_of(net, g, (y / g.scale).to(g.var.dtype))
                opt.zero_grad()
                loss.backward()
                opt.step()
                if isinstance(net, ImplicitGNN):
                    net.project()
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


def stages_for(epochs: int, lr: float) -> list[Stage]:
    """Both nets: 3/4 of the epochs at lr, then the rest at lr/10 (the paper's 10,000 + 5,000 steps, in
    proportion; its second stage doubles the unrolled depth, which a DEQ has no use for)."""
    first = max(1, round(0.75 * epochs))
    return [Stage(lr, first), Stage(lr / 10, max(1, epochs - first))]


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
