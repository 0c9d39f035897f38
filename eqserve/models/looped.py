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


@dataclass
class _LastToken:
    """The default prompt loop's state: the last prompt token's inner loop over the prefilled rest."""

    cache: Any
    e: torch.Tensor
    s: torch.Tensor
    s_in: torch.Tensor | None = None
    steps: int = 0


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
        """Run `tokens` (a prompt but its last token) through the whole model with `steps` core steps
        each, writing every position's keys and values into `cache`."""

    def prefill_start(self, tokens: list[int], cache: Any, max_steps: int) -> Any:
        """Begin the loop of a whole prompt, `tokens`, the first new token's loop: the engine then runs
        one core step of it per batch step (`prefill_step`), beside the decoding rows, until the
        request's exit rule (judged as the reference `generate` judges its prefill: latent-diff over
        every position's state, the distribution criteria on the last position's next-token
        distribution) or its budget of `max_steps`; `prefill_finish` then gives the first token's
        logits. Returns the opaque state the other three take.

        The default serves a model that only has the methods below: it prefills all but the last token
        at once at `max_steps` core steps (`prefill`) and runs the last token's own inner loop as the
        prompt's loop. A model that can step its whole prompt overrides all four, so that a prompt
        runs only as many steps as its rule needs."""
        self.prefill(tokens[:-1], max_steps, cache)
        e = self.embed(tokens[-1:], [cache])
        return _LastToken(cache, e, self.init_state(e))

    def prefill_step(self, states: list[Any], repeat: list[bool]) -> list[torch.Tensor | None]:
        """One core step of each prompt in `states` (prompts of different lengths at different steps,
        one call per batch step): their latent states (T_i, d), which latent-diff compares step to
        step (None where the model does not give them: the prompt then runs to its budget). Where
        `repeat[i]`, prompt i's last step is computed again and nothing kept: what the static
        baseline's waiting rows cost, as the reference computes its fixed-step batch."""
        if not states:
            return []
        s = torch.cat([st.s_in if r else st.s for st, r in zip(states, repeat, strict=True)])
        steps = [st.steps - 1 if r else st.steps for st, r in zip(states, repeat, strict=True)]
        new = self.core_step(s, torch.cat([st.e for st in states]), [st.cache for st in states], steps)
        for i, (st, r) in enumerate(zip(states, repeat, strict=True)):
            if not r:
                st.s_in, st.s, st.steps = st.s, new[i : i + 1], st.steps + 1
        return [new[i : i + 1] for i in range(len(states))]

    def prefill_logits(self, states: list[Any]) -> torch.Tensor:
        """(P, vocab): each prompt's next-token logits at its last position, from its current states,
        nothing kept (a distribution criterion peeking)."""
        return self.logits(torch.cat([st.s for st in states]), [st.cache for st in states], False)

    def prefill_finish(self, state: Any, steps: int, cache: Any) -> torch.Tensor:
        """The prompt's loop stopped after `steps` core steps: `cache` takes every prompt position
        (the next token goes after the last); returns the first new token's logits (vocab,)."""
        return self.logits(state.s, [cache], True)[0]

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

    def batch_step(
        self,
        s: torch.Tensor | None,
        e: torch.Tensor | None,
        caches: list[Any],
        steps: list[int],
        prompts: list[Any],
        repeat: list[bool],
    ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """One batch step: `core_step` of the decoding rows (none where `caches` is empty: s and e are
        then None) and `prefill_step` of the prompts, whose results it returns. The default makes the
        two calls; a model overrides it to run both as one pass (one set of dense products over the
        rows' tokens and the prompts' positions), which saves a step's fixed cost."""
        new = self.core_step(s, e, caches, steps) if caches else None  # type: ignore[arg-type]
        return new, (self.prefill_step(prompts, repeat) if prompts else [])

    @abstractmethod
    def logits(self, s: torch.Tensor, caches: list[Any], commit: bool) -> torch.Tensor:
        """(B, vocab): the coda and head on each row's state. With `commit` the row's token is done:
        its coda keys and values and its number of core steps are kept, and its cache moves on one
        position; without, nothing is kept (an exit criterion peeking at the distribution)."""
