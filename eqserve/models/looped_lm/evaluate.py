"""Exact-answer error on the held-out (longer) split, served the way the token engine serves it.

The looped model answers through its `LoopedLM` methods (prefill, embed, core_step r times, logits with
commit), r fixed per token and greedy; the explicit baseline through its whole-sequence forward. An
answer counts when its tokens are exactly the word's product and the end token.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from eqserve.models.base import EvalReport
from eqserve.models.looped_lm.data import CHARS, EOS, TEST_LENGTHS, sample
from eqserve.models.looped_lm.explicit import ExplicitLM
from eqserve.models.looped_lm.model import LoopedTransformer

N_TEST = 256
TEST_SEED = 1_000_003
MAX_NEW = 3
"""Tokens generated per answer: enough to see whether the end token follows the one answer letter."""


def greedy_looped(
    model: LoopedTransformer, prompts: list[list[int]], steps: int, max_new: int
) -> list[list[int]]:
    """Greedy completions through the contract's methods, every token with `steps` core steps, the rows
    batched; a row stops at the end token."""
    caches = [model.new_cache() for _ in prompts]
    for p, c in zip(prompts, caches, strict=True):
        if len(p) > 1:
            model.prefill(p[:-1], steps, c)
    outs: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))
    current = [p[-1] for p in prompts]
    with torch.no_grad():
        for _ in range(max_new):
            rows = [caches[i] for i in live]
            e = model.embed([current[i] for i in live], rows)
            s = model.init_state(e)
            for j in range(steps):
                s = model.core_step(s, e, rows, [j] * len(live))
            tokens = model.logits(s, rows, commit=True).argmax(-1).tolist()
            for i, t in zip(live, tokens, strict=True):
                outs[i].append(t)
                current[i] = t
            live = [i for i in live if current[i] != EOS]
            if not live:
                break
    return outs


def greedy_parallel(
    forward: Callable[[torch.Tensor], torch.Tensor], prompts: list[list[int]], max_new: int
) -> list[list[int]]:
    """Greedy completions by re-running a whole-sequence forward (logits (B, T, V)) per new token."""
    seqs = [list(p) for p in prompts]
    outs: list[list[int]] = [[] for _ in prompts]
    with torch.no_grad():
        for _ in range(max_new):
            width = max(len(s) for s in seqs)
            x = torch.full((len(seqs), width), EOS, dtype=torch.long)
            for i, s in enumerate(seqs):
                x[i, : len(s)] = torch.tensor(s)
            logits = forward(x)
            for i, s in enumerate(seqs):
                if outs[i][-1:] != [EOS]:
                    t = int(logits[i, len(s) - 1].argmax())
                    outs[i].append(t)
                    s.append(t)
    return [o[: o.index(EOS) + 1] if EOS in o else o for o in outs]


def held_out() -> tuple[list[list[int]], list[list[int]]]:
    """The held-out prompts and their exact expected completions (answer then end token)."""
    pairs = sample(N_TEST, TEST_LENGTHS, TEST_SEED)
    prompts = [[CHARS.index(c) for c in p] for p, _ in pairs]
    return prompts, [[CHARS.index(c) for c in a] + [EOS] for _, a in pairs]


def error(outs: list[list[int]], wanted: list[list[int]]) -> float:
    """The share of completions that are not exactly the expected one."""
    return sum(o != w for o, w in zip(outs, wanted, strict=True)) / len(wanted)


def evaluate(model: LoopedTransformer, iters: list[int], weights_dir: Path) -> EvalReport:
    """The looped model's error at each r in `iters`, and the explicit baseline's, on the held-out split."""
    from eqserve.models.looped_lm.train import EXPLICIT_WEIGHTS

    prompts, wanted = held_out()
    lo, hi = TEST_LENGTHS
    errors = [error(greedy_looped(model, prompts, r, MAX_NEW), wanted) for r in iters]
    baseline = ExplicitLM.from_weights(weights_dir / EXPLICIT_WEIGHTS).eval()
    base_error = error(greedy_parallel(baseline, prompts, MAX_NEW), wanted)
    return EvalReport(
        model=model.name,
        metric=f"exact-answer error, S3 words of {lo}-{hi} letters (trained on shorter)",
        t=list(iters),
        error=errors,
        params=sum(p.numel() for p in model.parameters()),
        baseline={
            "name": f"explicit-transformer ({baseline.n_layers} layers)",
            "error": base_error,
            "params": sum(p.numel() for p in baseline.parameters()),
        },
    )
