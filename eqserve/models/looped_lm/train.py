"""Train looped-lm on the S3 word task, and the explicit baseline on the same batches; write both.

Each step draws its recurrence r uniformly from 1 to a little past the batch's longest prompt and
teaches every position that r reaches (position j needs j + 1 steps when the product moves one
position per step) the product of the word up to it: a position the recurrence cannot have reached is
not asked for, so what is rewarded is the step that carries the product one position on, which works
for any length, rather than a fixed-depth shortcut for the trained ones. Steps past the longest teach
the state to stay put once it is right. Gradient runs through the last `backprop_depth` steps
(Huginn's truncated backprop), from the zero state the served model starts from.

The rotary base is small (`ROPE_BASE`) so that every rotation's period is shorter than the distances
within a trained prompt: a longer word then shows attention no angle that training did not; under
Huginn's large base the slow rotations reach new angles past the trained distances and the model
that had learnt the step fails on words longer than about 16 letters.
"""

from __future__ import annotations

import math
import random
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
ROPE_BASE = 2.0
"""The slowest of 8 rotary pairs turns by 2^(-7/8) rad a position, a full turn in under 12 positions."""
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def sample_steps(longest: int, extra: int, backprop_depth: int, rng: random.Random) -> tuple[int, int]:
    """(steps without gradient, steps with it): r uniform in 1 … longest + extra, the last
    `backprop_depth` of them with gradient."""
    r = rng.randint(1, longest + extra)
    k = min(r, backprop_depth)
    return r - k, k


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
    step_loss: Callable[[Batch], torch.Tensor],
    params: list[nn.Parameter],
    batches: Callable[[int], Batch],
    steps: int,
    lr: float,
    tag: str,
    log: Callable[[str], None],
) -> tuple[float, float]:
    """AdamW with a linear warmup then cosine decay, gradients clipped at 1; returns the wall and CPU
    seconds taken (the CPU seconds are what a shared box does not inflate)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )
    start, cpu = time.perf_counter(), time.process_time()
    running = 0.0
    for i in range(steps):
        value = step_loss(batches(i))
        opt.zero_grad(set_to_none=True)
        value.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * value.item() if i else value.item()
        if (i + 1) % max(1, steps // 20) == 0:
            log(f"{tag} step {i + 1}/{steps} loss {running:.4f} ({time.perf_counter() - start:.0f} s)")
    return time.perf_counter() - start, time.process_time() - cpu


def train(
    out_dir: Path,
    *,
    steps: int = 4000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
    n_embd: int = 64,
    backprop_depth: int = 6,
    extra_steps: int = 4,
) -> dict:
    """Train looped-lm and its explicit baseline on the same seeded batches; write both; evaluate."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    longest = TRAIN_LENGTHS[1] + 1  # the "=" of the longest word
    cfg = LoopedConfig(
        n_embd=n_embd, n_heads=4, intermediate_size=2 * n_embd, vocab_size=VOCAB, chars=CHARS,
        rope_base=ROPE_BASE, mean_recurrence=(longest + extra_steps + 1) // 2,
        mean_backprop_depth=backprop_depth,
    )  # fmt: skip

    def batches(i: int) -> Batch:
        return batch(sample(batch_size, TRAIN_LENGTHS, seed * 1_000_000 + i))

    model = LoopedTransformer(cfg)
    unrolled = cfg.n_layers_in_recurrent_block * cfg.mean_recurrence
    init_weights(model, cfg, cfg.n_layers_in_prelude + cfg.n_layers_in_coda + unrolled)
    rng = random.Random(seed)

    def looped_loss(b: Batch) -> torch.Tensor:
        x, y, need = b
        free, grad = sample_steps(int(need.max()), extra_steps, backprop_depth, rng)
        reached = torch.where(need <= free + grad, y, IGNORE)
        return _loss(model(x, (free, grad))[0], reached)

    model.train()
    looped_s = _fit(looped_loss, list(model.parameters()), batches, steps, lr, "looped-lm", log)
    model.eval()
    checkpoint.save(model, out_dir / WEIGHTS)

    params = sum(p.numel() for p in model.parameters())
    baseline = ExplicitLM(cfg, matching_layers(cfg, params))
    init_weights(baseline, cfg, baseline.n_layers)
    baseline.train()
    explicit_s = _fit(
        lambda b: _loss(baseline(b[0]), b[1]),
        list(baseline.parameters()), batches, steps, lr, "explicit", log,
    )  # fmt: skip
    baseline.eval()
    baseline.save(out_dir / EXPLICIT_WEIGHTS)

    report = checkpoint.load(out_dir / WEIGHTS).evaluate([1, 2, 4, 8, 16, 32, 64])
    log(f"trained in {looped_s[0]:.0f} s (looped) + {explicit_s[0]:.0f} s (explicit), wall")
    seconds = {"looped": looped_s[0], "explicit": explicit_s[0]}
    cpu = {"looped": looped_s[1], "explicit": explicit_s[1]}
    return {"model": "looped-lm", "train_s": seconds, "train_cpu_s": cpu} | {
        "t": report.t, "error": report.error, "params": report.params, "baseline": report.baseline,
    }  # fmt: skip
