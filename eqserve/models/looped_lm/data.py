"""The task: the product of a word of permutations of three things (the group S3), asked as "cfab=" and
answered "d" then the end token.

S3 is not commutative, so counting letters (what a few attention layers do well) does not give the
answer: the word has to be multiplied out in order. A recurrence can carry the product one position
further per step (each position combines its letter with the product its predecessor held one step
before), so a word of n letters needs about n steps; the held-out split's words are longer than any
trained on, so only a model that runs more steps answers them. Every position is taught the product of
the word up to it (the "deep thinking" line's dense prefix supervision), not the answer alone.
"""

from __future__ import annotations

import itertools
import random

import torch

ELEMENTS = tuple(itertools.permutations(range(3)))
"""The six permutations, letter i standing for ELEMENTS[i]; "a" is the identity."""
LETTERS = "abcdef"
CHARS = LETTERS + "="
"""Token ids 0–5 the letters, 6 the question mark "="; the end token is 7."""
EQ = CHARS.index("=")
EOS = len(CHARS)
VOCAB = EOS + 1
TRAIN_LENGTHS = (1, 12)
"""Word lengths trained on (inclusive)."""
TEST_LENGTHS = (24, 32)
"""The held-out split's lengths: all at least twice the longest trained on."""
IGNORE = -100
"""Targets the loss skips."""


def times(a: int, b: int) -> int:
    """The letter of a·b: first a, then b."""
    pa, pb = ELEMENTS[a], ELEMENTS[b]
    return ELEMENTS.index(tuple(pb[pa[i]] for i in range(3)))


def prefixes(word: str) -> list[int]:
    """The product of the word up to each of its letters."""
    out, p = [], 0
    for c in word:
        p = times(p, LETTERS.index(c))
        out.append(p)
    return out


def answer(word: str) -> str:
    """The product of `word` as one letter (the identity "a" for the empty word)."""
    return LETTERS[prefixes(word)[-1]] if word else LETTERS[0]


def sample(n: int, lengths: tuple[int, int], seed: int) -> list[tuple[str, str]]:
    """n (prompt, answer) pairs, lengths uniform in `lengths`, deterministic from `seed`."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(*lengths)))
        out.append((word + "=", answer(word)))
    return out


def batch(pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, targets and depths (B, T) of prompt + answer + end, padded with the end token.

    The target of a letter is the product up to it, of "=" the answer, of the answer the end token;
    padding is IGNORE. The depth of a target is the core steps a one-position-per-step recurrence needs
    to reach it (position j: j + 1; the end token after the answer: 0), so training can leave out
    what its r cannot reach.
    """
    width = max(len(p) for p, _ in pairs) + 1
    x = torch.full((len(pairs), width), EOS, dtype=torch.long)
    y = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    depth = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (p, a) in enumerate(pairs):
        n = len(p)
        x[i, : n + 1] = torch.tensor([CHARS.index(c) for c in p + a])
        y[i, : n + 1] = torch.tensor([*prefixes(p[:-1]), LETTERS.index(a), EOS])
        depth[i, :n] = torch.arange(1, n + 1)
    return x, y, depth
