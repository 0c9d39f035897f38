"""The looped-LM contract: a recurrent-depth language model served token by token.

A looped LM (Huginn's shape: prelude, a core block iterated on a latent state with the prelude's
output injected every step, coda and head) is the engine's nested case: a row is a sequence at its
current token, its inner loop runs core steps until the row's exit rule or budget, then the row emits
a token and starts the next token's inner loop. The token engine drives a model through the batched
methods below; rows in one call are at different positions and different inner steps.

Every batched method must give each row the bits it would get alone (batch invariance: a prompt's
tokens and per-token iteration counts must not depend on what shares its batch), and must leave the
rows' caches exactly as the same calls one row at a time would.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors.torch import load_file
from torch import nn

from eqserve.models.base import ModelMeta

Criterion = Literal["none", "latent-diff", "entropy-diff", "kl", "argmax-stability"]
"""Huginn's exit criteria: a token's inner loop stops once its exit value passes the threshold."""

CRITERIA: tuple[str, ...] = ("none", "latent-diff", "entropy-diff", "kl", "argmax-stability")


@dataclass(frozen=True)
class ExitRule:
    """When a token's inner loop stops: its value below `threshold` (argmax-stability: that many checks
    without the top token changing), never before `min_steps`, always at `max_iters`."""

    criterion: Criterion = "none"
    threshold: float = 0.0
    min_steps: int = 1
    check_every: int = 1
    max_iters: int = 32


class LoopedLM(nn.Module, ABC):
    """A recurrent-depth LM: `embed` a token, `core_step` its state, `logits` from the state."""

    name: ClassVar[str]
    max_context: int
    """Positions a sequence may hold: prompt and generated tokens together."""
    eos: int | None = None
    """The token that ends a completion, if the vocabulary has one."""
    default_exit: ClassVar[ExitRule] = ExitRule()
    """A request's per-token budget and exit rule where it sets none."""
    example_prompt: ClassVar[str] = ""
    description: str = ""
    """Overrides the docstring's first line in the listing (a model directory's eqserve.toml sets it)."""

    def load(self, path: str | Path) -> LoopedLM:
        """Load weights from a safetensors checkpoint (strict: every tensor must match)."""
        self.load_state_dict(load_file(str(path)), strict=True)
        return self

    def meta(self) -> ModelMeta:
        """The listing entry of the model (/v1/models): its docstring's first line and its defaults."""
        doc = self.description or inspect.getdoc(type(self)) or self.name
        example = {"prompt": self.example_prompt} if self.example_prompt else None
        return ModelMeta(
            name=self.name,
            description=doc.splitlines()[0],
            state_shape=None,
            dtype=str(next(self.parameters(), torch.empty(0)).dtype).removeprefix("torch."),
            example_input=example,
            default_max_iters=self.default_exit.max_iters,
            default_solver={},
        )

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The tokens of `text`; `InputError("prompt", ...)` for text the vocabulary cannot spell."""

    @abstractmethod
    def decode(self, tokens: list[int]) -> str:
        """The text of `tokens`."""

    @abstractmethod
    def new_cache(self) -> Any:
        """An empty per-sequence cache (opaque to the engine)."""

    @abstractmethod
    def prefill(self, tokens: list[int], steps: int, cache: Any) -> None:
        """Run `tokens` (the prompt but its last token) through the whole model with `steps` core steps
        each, writing every position's keys and values into `cache`."""

    def prefill_start(self, tokens: list[int], cache: Any) -> Any:
        """Begin the prefill of `tokens` step by step: the engine then runs one core step of the whole
        prompt per batch step, beside the decoding rows, and stops it on the request's exit rule (so a
        newcomer's prompt neither holds up the batch nor runs past its rule). Returns the opaque state
        the next two methods take. The default only keeps the tokens: the prompt is prefilled whole,
        at the steps counted, by `prefill_finish`; a model that can step its whole-prompt pass
        overrides all three."""
        return tokens

    def prefill_step(self, state: Any, repeat: bool = False) -> torch.Tensor | None:
        """One core step of every prompt position: their latent states (T, d), which latent-diff
        compares step to step; None where the model does not step its prefill (it then runs to the
        request's budget). With `repeat`, the last step computed again and nothing kept: what the
        static baseline's waiting rows cost, as the reference computes its fixed-step prefill."""
        return None

    def prefill_finish(self, state: Any, steps: int, cache: Any) -> None:
        """The prompt has run `steps` core steps: write every position's keys and values into `cache`,
        as `prefill(tokens, steps, cache)` does."""
        self.prefill(state, steps, cache)

    @abstractmethod
    def embed(self, tokens: list[int], caches: list[Any]) -> torch.Tensor:
        """(B, d): the prelude's output `e` for each row's current token, at the position after its
        cache's last; records the token's prelude keys and values in its cache."""

    @abstractmethod
    def init_state(self, e: torch.Tensor) -> torch.Tensor:
        """(B, d): each row's starting latent state, a deterministic function of its own row of `e`."""

    @abstractmethod
    def core_step(
        self, s: torch.Tensor, e: torch.Tensor, caches: list[Any], steps: list[int]
    ) -> torch.Tensor:
        """One recurrence `s ← core(adapter([s, e]))` for each row at its inner step `steps[r]` (0-based):
        attends to earlier positions at that step (or their latest step, where a token exited sooner)
        and records the row's own keys and values for that step."""

    @abstractmethod
    def logits(self, s: torch.Tensor, caches: list[Any], commit: bool) -> torch.Tensor:
        """(B, vocab): the coda and head on each row's state. With `commit` the row's token is done:
        its coda keys and values and its number of core steps are kept, and its cache moves on one
        position; without, nothing is kept (an exit criterion peeking at the distribution)."""
