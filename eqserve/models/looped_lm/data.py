"""The task: the parity of a bit string, asked as "10110=" and answered "1" then the end token.

Parity needs the whole string combined, one bit after another; a transformer of fixed depth has no
length-independent way to do that, while a recurrence can carry the running parity one more position
per step (the prefix-sum task of the "deep thinking" line of work). The held-out split is harder than
training: its strings are longer than any trained on, so only a model that runs more steps answers it.
"""

from __future__ import annotations

import random

import torch

CHARS = "01="
"""Token ids 0, 1, 2; the end token is 3."""
EOS = len(CHARS)
VOCAB = EOS + 1
TRAIN_LENGTHS = (1, 16)
"""Bit-string lengths trained on (inclusive): the short ones teach the step, the long ones its reach."""
TEST_LENGTHS = (24, 32)
"""The held-out split's lengths: all longer than any trained on."""
IGNORE = -100
"""Targets the loss skips: the prompt's next bits are random, so only the answer is taught."""


def answer(bits: str) -> str:
    """The parity of `bits` as one character."""
    return str(bits.count("1") % 2)


def sample(n: int, lengths: tuple[int, int], seed: int) -> list[tuple[str, str]]:
    """n (prompt, answer) pairs, lengths uniform in `lengths`, deterministic from `seed`."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        bits = "".join(rng.choice("01") for _ in range(rng.randint(*lengths)))
        out.append((bits + "=", answer(bits)))
    return out


def batch(pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (B, T) of prompt + answer + end, padded with the end token; the
    targets keep only the answer's tokens and the end token."""
    rows = [[CHARS.index(c) for c in p + a] + [EOS] for p, a in pairs]
    width = max(len(r) for r in rows) - 1
    x = torch.full((len(rows), width), EOS, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, ((p, _), r) in enumerate(zip(pairs, rows, strict=True)):
        x[i, : len(r) - 1] = torch.tensor(r[:-1])
        y[i, len(p) - 1 : len(r) - 1] = torch.tensor(r[len(p) :])
    return x, y
