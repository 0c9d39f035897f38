"""A looped LM small enough to reason about, for the token engine's tests.

Its vocabulary is the ten digits and an end token; each token's latent state converges, at a rate
set by the digit, to twice the one-hot of the next digit (after 9, the end), so a greedy completion
counts up and a token's inner steps under an exit rule follow from the digit alone.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from eqserve.models.base import InputError
from eqserve.models.looped import LoopedLM

EOS = 10


def rate(digit: int) -> float:
    """The contraction of the inner loop of `digit`'s token."""
    return 0.2 + 0.07 * digit


class CountLM(LoopedLM):
    """Counts up from the prompt's last digit; `fail_on` makes its core step raise on that digit, and
    its prefill on a prompt holding it before the last."""

    name = "count-lm"
    max_context = 32
    eos = EOS
    example_prompt = "3"

    def __init__(self, fail_on: int | None = None, step_s: float = 0.0) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.step_s = step_s
        """Seconds each core step sleeps: a completion that lasts at least a known time."""

    def encode(self, text: str) -> list[int]:
        if not text or not text.isdigit():
            raise InputError("prompt", "the prompt must be a non-empty string of digits")
        return [int(c) for c in text]

    def decode(self, tokens: list[int]) -> str:
        return "".join(str(t) for t in tokens if t != EOS)

    def new_cache(self) -> list[int]:
        return []

    def prefill(self, tokens: list[int], steps: int, cache: Any) -> None:
        if self.fail_on in tokens:
            raise RuntimeError("a fault in the model's prefill")
        cache.extend(tokens)

    def embed(self, tokens: list[int], caches: list[Any]) -> torch.Tensor:
        e = torch.zeros(len(tokens), EOS + 1)
        for i, (t, cache) in enumerate(zip(tokens, caches, strict=True)):
            cache.append(t)
            e[i, EOS if t >= 9 else t + 1] = 2.0
        return e

    def init_state(self, e: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(e)

    def core_step(
        self, s: torch.Tensor, e: torch.Tensor, caches: list[Any], steps: list[int]
    ) -> torch.Tensor:
        digits = [c[-1] for c in caches]
        if self.fail_on in digits:
            raise RuntimeError("a fault in the model's step")
        time.sleep(self.step_s)
        a = torch.tensor([[rate(d)] for d in digits])
        return a * s + (1 - a) * e

    def logits(self, s: torch.Tensor, caches: list[Any], commit: bool) -> torch.Tensor:
        return 4 * s
