"""Train looped-lm Huginn's way, and the explicit baseline on the same batches; write both weight files.

Each step samples its recurrence r as Huginn does (r − 1 ~ Poisson(λ), λ ~ LogNormal(log(mean) − σ²/2, σ))
and backpropagates through the last `mean_backprop_depth` steps only, from a random state: the model
has to improve its answer at every step count it may be run with, rather than at one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eqserve.models.looped_lm import checkpoint
from eqserve.models.looped_lm.config import LoopedConfig
from eqserve.models.looped_lm.data import CHARS, IGNORE, TRAIN_LENGTHS, VOCAB, batch, sample
from eqserve.models.looped_lm.explicit import ExplicitLM, matching_layers
from eqserve.models.looped_lm.model import LoopedTransformer

WEIGHTS = "looped-lm.safetensors"
EXPLICIT_WEIGHTS = "looped-lm-explicit.safetensors"
SIGMA = 0.5
"""Huginn's spread of the log-normal rate of the recurrence sampler."""


def sample_steps(cfg: LoopedConfig, gen: torch.Generator) -> tuple[int, int]:
    """(steps without gradient, steps with it): Huginn's `randomized_iteration_sampler` while training."""
    k = cfg.mean_backprop_depth
    mu = math.log(cfg.mean_recurrence) - SIGMA**2 / 2
    rate = math.exp(mu + SIGMA * torch.randn((), generator=gen).item())
    total = int(torch.poisson(torch.tensor([rate]), generator=gen).item()) + 1
    return max(total - k, 0), min(k, total)


def init_weights(model: nn.Module, cfg: LoopedConfig, depth: int) -> None:
    """Huginn's scales: weights N(0, std²), the output projections of each sublayer smaller by
    √(2·depth) so that a deep unrolled stack starts near the identity; norms at 1, q/k bias at 0."""
    std = cfg.init_std
    for name, p in model.named_parameters():
        if name.endswith("qk_bias"):
            nn.init.zeros_(p)
        elif "norm" in name or "ln_f" in name:
            nn.init.ones_(p)
        elif name.endswith("proj.weight"):
            nn.init.normal_(p, std=std / math.sqrt(2 * depth))
        elif p.dim() == 1:
            nn.init.zeros_(p)
        else:
            nn.init.normal_(p, std=std)


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)


def _fit(
    step_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params: list[nn.Parameter],
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
    tag: str,
    log: Callable[[str], None],
) -> float:
    """AdamW with a linear warmup then cosine decay, gradients clipped at 1; returns the seconds taken."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )
    start = time.perf_counter()
    running = 0.0
    for i in range(steps):
        x, y = batches(i)
        value = step_loss(x, y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * value.item() if i else value.item()
        if (i + 1) % max(1, steps // 20) == 0:
            log(f"{tag} step {i + 1}/{steps} loss {running:.4f} ({time.perf_counter() - start:.0f} s)")
    return time.perf_counter() - start


def train(
    out_dir: Path,
    *,
    steps: int = 5000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
    n_embd: int = 64,
    mean_recurrence: int = 8,
    mean_backprop_depth: int = 4,
    warm_lengths: float = 0.3,
) -> dict:
    """Train looped-lm and its explicit baseline on the same seeded batches; write both; evaluate.

    The longest string of a step's batch grows from 2 bits to the full training length over the first
    `warm_lengths` of the steps: parity gives no signal on long strings until short ones are solved.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = LoopedConfig(
        n_embd=n_embd, n_heads=4, intermediate_size=2 * n_embd, vocab_size=VOCAB, chars=CHARS,
        mean_recurrence=mean_recurrence, mean_backprop_depth=mean_backprop_depth,
    )  # fmt: skip
    low, high = TRAIN_LENGTHS

    def batches(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        top = min(high, 2 + int((high - 2) * i / max(1.0, warm_lengths * steps)))
        return batch(sample(batch_size, (low, max(low, top)), seed * 1_000_000 + i))

    model = LoopedTransformer(cfg)
    depth = cfg.n_layers_in_prelude + cfg.n_layers_in_coda + cfg.n_layers_in_recurrent_block * mean_recurrence
    init_weights(model, cfg, depth)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    looped_s = _fit(
        lambda x, y: _loss(model(x, sample_steps(cfg, gen), random_state=True)[0], y),
        list(model.parameters()), batches, steps, lr, "looped-lm", log,
    )  # fmt: skip
    model.eval()
    checkpoint.save(model, out_dir / WEIGHTS)

    params = sum(p.numel() for p in model.parameters())
    baseline = ExplicitLM(cfg, matching_layers(cfg, params))
    init_weights(baseline, cfg, baseline.n_layers)
    baseline.train()
    explicit_s = _fit(
        lambda x, y: _loss(baseline(x), y), list(baseline.parameters()), batches, steps, lr, "explicit", log
    )
    baseline.eval()
    baseline.save(out_dir / EXPLICIT_WEIGHTS)

    report = checkpoint.load(out_dir / WEIGHTS).evaluate([1, 2, 4, 8, 16, 32, 64])
    log(f"trained in {looped_s:.0f} s (looped) + {explicit_s:.0f} s (explicit)")
    return {"model": "looped-lm", "train_s": {"looped": looped_s, "explicit": explicit_s}} | {
        "t": report.t, "error": report.error, "params": report.params, "baseline": report.baseline,
    }  # fmt: skip
