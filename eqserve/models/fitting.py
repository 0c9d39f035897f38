"""What the built-in models' trainers share: the relative error, and Adam with a one-cycle step size."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def relative_error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-row relative L2 error ‖pred − true‖ / ‖true‖ over every non-batch axis (E_t before the mean)."""
    return (pred - true).flatten(1).norm(dim=1) / true.flatten(1).norm(dim=1)


def squared_relative_error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """The training loss: the mean over rows of the squared relative error."""
    return (relative_error(pred, true) ** 2).mean()


def fit(
    net: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    tag: str,
    log: Callable[[str], None],
    loss: Loss | None = None,
    warmup: float = 0.05,
) -> None:
    """Adam on `loss(x, y)` (default: the mean squared relative error of `net(x)`), the step size one
    cycle (a `warmup` share rising, then cosine decay); logs the held-out error about ten times."""
    x, y, x_val, y_val = data
    loss = loss or (lambda xb, yb: squared_relative_error(net(xb), yb))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=warmup)
    for epoch in range(1, epochs + 1):
        net.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            value = loss(x[idx], y[idx])
            opt.zero_grad()
            value.backward()
            opt.step()
            sched.step()
            total += value.item() * idx.numel()
        if epoch == 1 or epoch % max(1, epochs // 10) == 0 or epoch == epochs:
            net.eval()
            with torch.no_grad():
                val = relative_error(net(x_val), y_val).mean().item()
            log(f"{tag} epoch {epoch}/{epochs} loss {total / x.shape[0]:.3e} held-out rel err {val:.4f}")
