"""The JSON shapes of /v1/solve: request (budget, solver, return options) and response."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from eqserve.models.base import FiniteFloat

ANDERSON_M_CAP = 16
"""The longest Anderson history a request may ask for."""


class Budget(BaseModel):
    """How much test-time compute a request may spend; unset fields take the model's defaults."""

    model_config = ConfigDict(extra="forbid")
    max_iters: int | None = Field(default=None, ge=1)
    tol: FiniteFloat | None = Field(default=None, ge=0)
    stop_mode: Literal["abs", "rel"] | None = None
    timeout_s: FiniteFloat | None = Field(default=None, gt=0)


class SolverOptions(BaseModel):
    """The update rule: damped Picard, or Anderson or Broyden with memory m."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["picard", "anderson", "broyden"] | None = None
    damping: FiniteFloat | None = Field(default=None, gt=0, le=1)
    m: int | None = Field(default=None, ge=1, le=ANDERSON_M_CAP)


class ReturnOptions(BaseModel):
    """What to send besides the output: the residual trace, the raw state, and (in stream events) the
    state `y` and decoded `output` of every `every`-th iterate."""

    model_config = ConfigDict(extra="forbid")
    trace: bool = False
    state: bool = False
    output: bool = False
    every: int = Field(default=1, ge=1)
    encoding: Literal["list", "base64"] = "list"
    """How `state` and the stream's `y` are sent: nested lists in the state's shape, or base64."""


class SolveRequest(BaseModel):
    """POST /v1/solve."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: str
    input: dict[str, Any]
    budget: Budget = Field(default_factory=Budget)
    solver: SolverOptions = Field(default_factory=SolverOptions)
    warm_start: list[Any] | dict[str, Any] | None = None
    """The starting state: numbers nested in the state's shape (or all of them in one flat list), or
    {"encoding": "base64", "dtype", "shape", "data"}."""
    return_: ReturnOptions = Field(default_factory=ReturnOptions, alias="return")
    stream: bool = False


class ExtendMessage(BaseModel):
    """WebSocket: spend `max_iters` more iterations on a solve that stopped on its budget."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["extend"]
    max_iters: int = Field(ge=1)


class Timing(BaseModel):
    """Where the time went: waiting for a row, iterating, and per iteration."""

    queue_ms: float
    solve_ms: float
    per_iter_us: float


class TracePoint(BaseModel):
    """Residuals after iteration t."""

    t: int
    residual: float | None
    rel_residual: float | None


class SolveResponse(BaseModel):
    """The answer of /v1/solve."""

    id: str
    model: str
    output: dict[str, Any] | None
    status: Literal["converged", "max_iters", "deadline", "diverged", "cancelled"]
    iterations: int
    residual: float | None
    rel_residual: float | None
    trace: list[TracePoint] | None = None
    state: list[Any] | dict[str, Any] | None = None
    timing: Timing
