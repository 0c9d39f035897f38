"""POST /v1/completions in OpenAI's shape, with eqserve's per-token budget: request, job, answers.

OpenAI's fields keep their meaning (`prompt`, `max_tokens`, `temperature`, `stop`, `stream`, `seed`,
`n` = 1); eqserve's travel beside them (the official client sends them through `extra_body`):
`budget` — `max_iters` (recurrence cap per token), `timeout_s`, `exit` (Huginn's criterion,
`threshold`, `min_steps`, `check_every`) — `continuous_compute` (each token starts from the previous
token's state) and `return.per_token`. Unlike OpenAI, `temperature` defaults to 0 (greedy): the
looped models served answer tasks with one right answer.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from eqserve.engine.completion import CompletionJob, CompletionResult, TokenEvent
from eqserve.engine.job import new_id
from eqserve.models.base import FiniteFloat, InputError
from eqserve.models.looped import Criterion, ExitRule, LoopedLM
from eqserve.service.config import Settings
from eqserve.service.errors import ApiError
from eqserve.service.jobs import capped
from eqserve.service.streams import finite_or_none

STOP_CAP = 4
"""Most stop strings a request may give (OpenAI's bound)."""


class ExitOptions(BaseModel):
    """When a token's inner loop stops; unset fields take the model's defaults."""

    model_config = ConfigDict(extra="forbid")
    criterion: Criterion | None = None
    threshold: FiniteFloat | None = Field(default=None, ge=0)
    min_steps: int | None = Field(default=None, ge=1)
    check_every: int | None = Field(default=None, ge=1)


class TokenBudget(BaseModel):
    """The test-time compute of a completion: per token, and a deadline for the whole."""

    model_config = ConfigDict(extra="forbid")
    max_iters: int | None = Field(default=None, ge=1)
    timeout_s: FiniteFloat | None = Field(default=None, gt=0)
    exit: ExitOptions = Field(default_factory=ExitOptions)


class CompletionReturn(BaseModel):
    """What to send besides the text: each token's iterations and exit value."""

    model_config = ConfigDict(extra="forbid")
    per_token: bool = False


class StreamOptions(BaseModel):
    """OpenAI's stream options: a last chunk with the usage."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: str
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1)
    temperature: FiniteFloat = Field(default=0.0, ge=0, le=2)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    n: Literal[1] = 1
    user: str | None = None
    budget: TokenBudget = Field(default_factory=TokenBudget)
    continuous_compute: bool = False
    return_: CompletionReturn = Field(default_factory=CompletionReturn, alias="return")


def build_completion(model: LoopedLM, req: CompletionRequest, settings: Settings) -> CompletionJob:
    """The engine job of a validated request; 422 naming the field that is over a cap or unreadable."""
    try:
        prompt = model.encode(req.prompt)
    except InputError as exc:
        raise ApiError(422, "invalid_input", exc.message, exc.field) from None
    if len(prompt) >= model.max_context:
        message = f"the prompt has {len(prompt)} tokens; model {model.name!r} holds {model.max_context}"
        raise ApiError(422, "over_cap", message, "prompt")
    if req.max_tokens > settings.max_tokens_cap:
        message = f"max_tokens {req.max_tokens} exceeds the server's cap {settings.max_tokens_cap}"
        raise ApiError(422, "over_cap", message, "max_tokens")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > STOP_CAP or any(not s for s in stops):
        raise ApiError(422, "invalid_request", f"stop takes up to {STOP_CAP} non-empty strings", "stop")
    default, given, ex = model.default_exit, req.budget, req.budget.exit
    max_iters, timeout = capped(given.max_iters, default.max_iters, given.timeout_s, settings)
    rule = ExitRule(
        criterion=ex.criterion or default.criterion,
        threshold=default.threshold if ex.threshold is None else ex.threshold,
        min_steps=ex.min_steps or default.min_steps,
        check_every=ex.check_every or default.check_every,
        max_iters=max_iters,
    )
    return CompletionJob(
        id=new_id().replace("req-", "cmpl-", 1),
        prompt=prompt,
        max_tokens=req.max_tokens,
        rule=rule,
        temperature=req.temperature,
        seed=secrets.randbits(63) if req.seed is None else req.seed,
        stop=tuple(stops),
        warm_start=req.continuous_compute,
        timeout_s=timeout,
    )


def usage(result: CompletionResult, per_token: bool) -> dict[str, Any]:
    """OpenAI's token counts, and the recurrence the completion took."""
    its = result.iterations
    recurrence: dict[str, Any] = {
        "total": result.total_iterations,
        "mean": result.total_iterations / len(its) if its else 0.0,
        "max": max(its, default=0),
    }
    if per_token:
        recurrence["per_token"] = list(its)
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": len(result.tokens),
        "total_tokens": result.prompt_tokens + len(result.tokens),
        "recurrence": recurrence,
    }


def response(model: str, result: CompletionResult, per_token: bool, created: int) -> dict[str, Any]:
    """The answer of a completion: OpenAI's `text_completion` with eqserve's status and timing."""
    choice: dict[str, Any] = {
        "index": 0,
        "text": result.text,
        "finish_reason": result.finish_reason,
        "logprobs": None,
    }
    if per_token:
        choice["tokens"] = [
            {"iterations": n, "exit_value": finite_or_none(v), "exited": x}
            for n, v, x in zip(result.iterations, result.exit_values, result.exited, strict=True)
        ]
    return {
        "id": result.id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(result, per_token),
        "status": result.status,
        "timing": {"queue_ms": result.queue_ms, "solve_ms": result.solve_ms},
    }


def chunk(job_id: str, model: str, created: int, event: TokenEvent) -> dict[str, Any]:
    """One streamed token in OpenAI's chunk shape, with its inner steps and exit value."""
    choice = {
        "index": 0,
        "text": event.text,
        "finish_reason": None,
        "logprobs": None,
        "token_index": event.index,
        "iterations": event.iterations,
        "exit_value": finite_or_none(event.exit_value),
        "exited": event.exited,
    }
    base = {"id": job_id, "object": "text_completion", "created": created, "model": model}
    return {**base, "choices": [choice]}


def last_chunks(model: str, result: CompletionResult, created: int, with_usage: bool) -> list[dict[str, Any]]:
    """The stream's end: a chunk with the finish reason, then (if asked) one with the usage."""
    done = {"index": 0, "text": "", "finish_reason": result.finish_reason, "logprobs": None}
    base = {"id": result.id, "object": "text_completion", "created": created, "model": model}
    out = [{**base, "choices": [done], "status": result.status}]
    if with_usage:
        out.append({**base, "choices": [], "usage": usage(result, per_token=False)})
    return out


def now_s() -> int:
    """OpenAI's `created`: whole seconds since the epoch."""
    return int(time.time())
