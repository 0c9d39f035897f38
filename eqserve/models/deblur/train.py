"""Train deblur as a DEQ (phantom gradient at the fixed point) and its unrolled twin (the same operator
for EXPLICIT_DEPTH steps, back-propagated through all of them) on the same seeded dead-leaves data."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from eqserve.models.deblur.data import dead_leaves, degrade, make_set, random_blurs
from eqserve.models.deblur.model import (
    EXPLICIT_DEPTH,
    EXPLICIT_FILE,
    HELDOUT_FILE,
    LAYER_GAIN,
    WEIGHTS_FILE,
    Deblur,
    conv_norm,
)

TRAIN_DEPTH = 16
"""Picard steps of the DEQ's forward solve while training (from y0 = 0): the training depth."""
PHANTOM_STEPS = 2
"""Steps of G, from the detached fixed point, that the loss is back-propagated through (the phantom
gradient of Geng et al. 2021; 1 would be Jacobian-free backprop)."""
POOL, POOL_SIZE, CROP = 768, 48, 32
"""Training images: random CROP² crops (and flips) of a seeded pool of dead-leaves images."""
HELDOUT, HELDOUT_SIZE, HELDOUT_SEED = 32, 48, 1_000_003
POWER_GRID = 16
"""Side of the images on which each convolution's norm is tracked by power iteration while training."""
EVAL_ITERS = [1, 2, 4, 8, 16, 32, 64]


class NormBound(nn.Module):
    """W / max(1, σ(W)/LAYER_GAIN), σ the convolution's operator norm estimated by one power-iteration
    step per use from a kept vector (it moves little between optimiser steps)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.register_buffer("u", F.normalize(torch.randn(1, in_channels * POWER_GRID**2), dim=1))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        shape = (1, weight.shape[1], POWER_GRID, POWER_GRID)
        with torch.no_grad():
            v = F.conv2d(self.u.view(shape), weight, padding=1).flatten(1)
            v = F.normalize(v, dim=1)
            back = F.conv_transpose2d(v.view(1, -1, POWER_GRID, POWER_GRID), weight, padding=1)
            u = F.normalize(back.flatten(1), dim=1)
            self.u.copy_(u)
        sigma = (v * F.conv2d(u.view(shape), weight, padding=1).flatten(1)).sum()
        return weight / torch.clamp(sigma / LAYER_GAIN, min=1.0)


def _bounded(model: Deblur) -> Deblur:
    for conv in model.denoiser.convs:
        parametrize.register_parametrization(conv, "weight", NormBound(conv.in_channels))
    return model


def _export(model: Deblur) -> dict[str, torch.Tensor]:
    """Plain tensors with each convolution's norm brought within LAYER_GAIN on the exact bound."""
    for conv in model.denoiser.convs:
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
        with torch.no_grad():
            conv.weight.mul_(min(1.0, LAYER_GAIN / conv_norm(conv.weight)))
    return {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}


def _batch(pool: torch.Tensor, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    idx = torch.randint(0, pool.shape[0], (batch,), generator=gen)
    i, j = (int(v) for v in torch.randint(0, POOL_SIZE - CROP + 1, (2,), generator=gen))
    sharp = pool[idx, i : i + CROP, j : j + CROP]
    if torch.rand((), generator=gen) < 0.5:
        sharp = sharp.transpose(1, 2)
    kernels, noise = random_blurs(batch, gen)
    return sharp, {"blurred": degrade(sharp, kernels, noise, gen), "kernel": kernels, "noise": noise}


def _loss(model: Deblur, sharp: torch.Tensor, obs: dict, implicit: bool) -> torch.Tensor:
    ctx = model.batch_context(obs["blurred"], obs["kernel"], obs["noise"])
    y = torch.zeros_like(sharp)
    if implicit:
        with torch.no_grad():
            for _ in range(TRAIN_DEPTH):
                y = model.operator(y, ctx)
    for _ in range(PHANTOM_STEPS if implicit else EXPLICIT_DEPTH):
        y = model.operator(y, ctx)
    return F.mse_loss(y, sharp)


def _fit(
    model: Deblur, pool: torch.Tensor, *, steps: int, batch: int, lr: float, seed: int, implicit: bool,
    tag: str, log: Callable[[str], None],
) -> None:  # fmt: skip
    """Adam with a cosine step size; logs the running loss as PSNR."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    running, start = 0.0, time.perf_counter()
    for step in range(1, steps + 1):
        sharp, obs = _batch(pool, batch, gen)
        with parametrize.cached():
            loss = _loss(model, sharp, obs, implicit)
            opt.zero_grad()
            loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if step % max(1, steps // 10) == 0:
            mse = running / max(1, steps // 10)
            log(f"{tag} step {step}/{steps} train PSNR {-10 * math.log10(mse):.2f} dB "
                f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
            running = 0.0


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file readable by everyone (it ships as package data)."""
    save_file(tensors, str(path))
    path.chmod(0o644)


def train(
    out_dir: Path,
    *,
    epochs: int = 1,
    seed: int = 0,
    log: Callable[[str], None] = print,
    steps: int = 800,
    batch: int = 16,
    lr: float = 4e-3,
    threads: int = 1,
) -> dict:
    """Train the DEQ and its unrolled twin (the same `epochs` × `steps` optimiser steps each, so the
    comparison is fair; one thread); write both and the held-out set to out_dir; return the evaluation."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    start = time.perf_counter()
    pool = dead_leaves(POOL, POOL_SIZE, torch.Generator().manual_seed(seed))
    _save(make_set(HELDOUT, HELDOUT_SIZE, HELDOUT_SEED), out_dir / HELDOUT_FILE)
    log(f"data ready ({time.perf_counter() - start:.0f} s)")

    deq = _bounded(Deblur(out_dir))
    _fit(deq, pool, steps=epochs * steps, batch=batch, lr=lr, seed=seed, implicit=True, tag="deblur", log=log)
    _save(_export(deq), out_dir / WEIGHTS_FILE)
    deq_s = time.perf_counter() - start

    torch.manual_seed(seed)
    twin = _bounded(Deblur(out_dir))
    _fit(twin, pool, steps=epochs * steps, batch=batch, lr=lr, seed=seed, implicit=False,
         tag=f"unrolled-{EXPLICIT_DEPTH}", log=log)  # fmt: skip
    _save(_export(twin), out_dir / EXPLICIT_FILE)

    model = Deblur.from_weights(out_dir / WEIGHTS_FILE)
    report = model.evaluate(EVAL_ITERS)
    elapsed = time.perf_counter() - start
    log(f"done in {elapsed:.0f} s (deq {deq_s:.0f} s); Lip(D) ≤ {model.denoiser.lipschitz_bound():.4f}")
    for t, e, p, lip in zip(report.t, report.error, report.psnr, report.lipschitz, strict=True):
        log(f"  t = {t:>3}: error {e:.4f}, PSNR {p:.2f} dB, L_t {lip:.3f}")
    b = report.baseline
    log(f"  {b['name']}: error {b['error']:.4f}, PSNR {b['psnr']:.2f} dB")
    return {
        "model": "deblur",
        "params": report.params,
        "lipschitz_bound": model.denoiser.lipschitz_bound(),
        "t": report.t,
        "error": report.error,
        "psnr": report.psnr,
        "lipschitz": report.lipschitz,
        "baseline": report.baseline,
        "train_seconds": elapsed,
        "steps": epochs * steps,
        "seed": seed,
    }
