"""What crosses the engine's parts: a request's job, the watch over its iterates, its result."""

from __future__ import annotations

import dataclasses
import itertools
import math
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from eqserve.kernels.reference import Stop
from eqserve.models.base import Ctx
from eqserve.models.padding import Shape
from eqserve.service.arrays import Encoding
from eqserve.solvers import Method, SolverState

NEVER = 2**62
"""`Watch.next_due` of a watch that wants no iterate before the last."""


class Watch(Protocol):
    """Who looks at a solve's iterates while it runs: a stream, an analysis. The engine hands it the
    iterates it asks for and always the last one; it runs no more steps without the host than the next
    due iterate allows, so a watch that asks for every iterate makes its batch step once per run."""

    wants_y: bool
    """Whether `push` looks at the state (otherwise it gets None and no view is kept)."""

    def next_due(self, t: int) -> int:
        """The first iteration after `t` whose iterate it wants (NEVER for none but the last)."""
        ...

    def push(self, t: int, residual: float, rel_residual: float, y: torch.Tensor | None) -> None:
        """Iterate t (y a (1, *state_shape) view, never written later); called on the worker."""
        ...


class EveryIterate:
    """A watch that wants every `every`-th iterate and hands it to a function."""

    def __init__(self, fn: Callable[[int, float, float, torch.Tensor | None], None], every: int = 1):
        self.fn, self.every, self.wants_y = fn, every, True

    def next_due(self, t: int) -> int:
        """The next multiple of `every`."""
        return (t // self.every + 1) * self.every

    def push(self, t: int, residual: float, rel_residual: float, y: torch.Tensor | None) -> None:
        """Hand it on."""
        self.fn(t, residual, rel_residual, y)


@dataclass
class Resume:
    """Where a solve stopped on its budget, so that it can go on: state, solver history, counts."""

    y: torch.Tensor
    solver: SolverState
    iterations: int
    first_res: float
    trace: list[dict[str, float]]


@dataclass
class SolveJob:
    """One accepted request: its encoded context, start state, budget and solver options."""

    id: str
    ctx: Ctx
    y0: torch.Tensor
    max_iters: int
    tol: float
    rel_mode: bool = False
    timeout_s: float | None = None
    damping: float = 1.0
    method: Method | None = None
    """The update rule; None: Anderson where `m` > 0, damped Picard otherwise."""
    m: int = 0
    """History length of Anderson and Broyden."""
    trace: bool = False
    every: int = 1
    """The trace keeps every `every`-th iterate's residuals (a stream's watch reads it too)."""
    return_state: bool = False
    state_encoding: Encoding = "list"
    watch: Watch | None = None
    resume: Resume | None = None
    submitted: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    _cancelled: bool = field(default=False, repr=False)

    cancellations: ClassVar[int] = 0
    """Counts every job ever cancelled, so that a worker rescans its rows only when it moved."""

    def __post_init__(self) -> None:
        if self.method is None:
            self.method = "anderson" if self.m else "picard"

    @property
    def cancelled(self) -> bool:
        """Whether the client cancelled (or left); the worker stops the row at the end of its run."""
        return self._cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        self._cancelled = value
        if value:
            SolveJob.cancellations += 1

    @property
    def deadline(self) -> float:
        """Monotonic time past which the solve stops with status `deadline`."""
        return math.inf if self.timeout_s is None else self.submitted + self.timeout_s

    @property
    def start(self) -> torch.Tensor:
        """The state the row starts from: y0, or where an extended solve stopped."""
        return self.y0 if self.resume is None else self.resume.y

    @property
    def shape(self) -> Shape:
        """This request's state shape (one row's, without the leading 1)."""
        return tuple(self.y0.shape[1:])


@dataclass
class SolveResult:
    """What a finished solve reports."""

    id: str
    status: str
    iterations: int
    residual: float | None
    rel_residual: float | None
    output: dict[str, Any] | None
    trace: list[dict[str, float]] | None
    state: Any
    """The final state as `encode_state` gives it (None unless asked for)."""
    queue_ms: float
    solve_ms: float
    resume: Resume | None = None


RESUMABLE = (Stop.MAX_ITERS, Stop.DEADLINE)
"""Statuses after which a solve may be extended."""


def extend_job(job: SolveJob, result: SolveResult, more_iters: int) -> SolveJob:
    """A job that goes on from where `result` stopped, for `more_iters` more iterations."""
    if result.resume is None:
        raise ValueError(f"a solve that ended {result.status!r} cannot be extended")
    return dataclasses.replace(
        job,
        max_iters=result.resume.iterations + more_iters,
        resume=result.resume,
        submitted=time.monotonic(),
        _cancelled=False,
        future=Future(),
    )


_ids = itertools.count(1)
_PROCESS = secrets.token_hex(4)
"""This process's part of every request id, so that replicas sharing dashboards and logs never collide."""


def new_id() -> str:
    """A request id unique across processes: a random per-process prefix and a counter."""
    return f"req-{_PROCESS}-{next(_ids):08d}"
