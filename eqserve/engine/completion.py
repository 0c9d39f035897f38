"""What crosses the token engine: a completion's job, the watch over its tokens, its result."""

from __future__ import annotations

import math
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal, Protocol

from eqserve.models.looped import ExitRule


@dataclass
class TokenEvent:
    """One decided token: its index in the completion, text, inner steps and last exit value."""

    index: int
    token: int
    text: str
    iterations: int
    exit_value: float | None
    exited: bool
    """Whether the exit rule stopped the inner loop (False: the budget did)."""


class TokenWatch(Protocol):
    """Who sees a completion's tokens as they are decided (a stream); called on the worker."""

    def push(self, event: TokenEvent) -> None: ...


@dataclass
class CompletionJob:
    """One accepted completion: its prompt's tokens, per-token budget and sampling."""

    id: str
    prompt: list[int]
    max_tokens: int
    rule: ExitRule
    temperature: float = 0.0
    seed: int = 0
    """Seeds the sampler of this completion alone, so its tokens do not depend on its batch-mates."""
    stop: tuple[str, ...] = ()
    warm_start: bool = False
    """Each token's state starts from the previous token's (Huginn's continuous compute)."""
    timeout_s: float | None = None
    watch: TokenWatch | None = None
    submitted: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    resume = None
    """Completions are not extended; the scheduler's rows read this."""

    @property
    def deadline(self) -> float:
        """Monotonic time past which the completion ends with what it has."""
        return math.inf if self.timeout_s is None else self.submitted + self.timeout_s

    @property
    def shape(self) -> tuple[int, ...]:
        """A row is one sequence: no state shape of its own to batch by."""
        return ()


FinishReason = Literal["stop", "length", "deadline", "cancelled"]


@dataclass
class CompletionResult:
    """What a finished completion reports: its text, and each token's inner steps and exit value."""

    id: str
    status: str
    """`ok`, or `cancelled` / `deadline` (the text so far) — the engine's request statuses."""
    finish_reason: FinishReason
    text: str
    tokens: list[int]
    iterations: list[int]
    exit_values: list[float | None]
    exited: list[bool]
    prompt_tokens: int
    queue_ms: float
    solve_ms: float

    @property
    def total_iterations(self) -> int:
        """Inner steps over every token: the recurrence compute the completion took."""
        return sum(self.iterations)
