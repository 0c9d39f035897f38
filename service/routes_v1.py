"""The native API: POST /v1/solve and the model listing."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from fastapi import APIRouter, Request

from service.engine import ModelStepError, QueueFull, SolveJob, SolveResult
from service.errors import ApiError, read_json, validate
from service.jobs import build_job
from service.schemas import SolveRequest, SolveResponse, Timing
from service.state import Served, ServerState

router = APIRouter()

DISCONNECT_POLL_S = 0.25
"""How often a waiting /v1/solve checks that its client is still there."""


def _state(request: Request) -> ServerState:
    return request.app.state.eq


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def to_response(model: str, r: SolveResult) -> SolveResponse:
    """The JSON answer of a finished solve (non-finite residuals become null)."""
    trace = (
        [
            {**p, "residual": _finite(p["residual"]), "rel_residual": _finite(p["rel_residual"])}
            for p in r.trace
        ]
        if r.trace is not None
        else None
    )
    extra: dict[str, Any] = {}
    if trace is not None:
        extra["trace"] = trace
    if r.state is not None:
        extra["state"] = r.state
    return SolveResponse(
        id=r.id,
        model=model,
        output=r.output,
        status=r.status,  # type: ignore[arg-type]
        iterations=r.iterations,
        residual=_finite(r.residual),
        rel_residual=_finite(r.rel_residual),
        timing=Timing(
            queue_ms=r.queue_ms,
            solve_ms=r.solve_ms,
            per_iter_us=r.solve_ms * 1e3 / r.iterations if r.iterations else 0.0,
        ),
        **extra,
    )


def submit(served: Served, job: SolveJob) -> asyncio.Future:
    """Hand a job to its engine; 429 with Retry-After when the queue is full."""
    try:
        return asyncio.wrap_future(served.engine.submit(job))
    except QueueFull as exc:
        raise ApiError(
            429, "overloaded", str(exc), headers={"Retry-After": str(int(exc.retry_after))}
        ) from None


async def wait_result(request: Request, job: SolveJob, fut: asyncio.Future) -> SolveResult:
    """Await the solve; a client that goes away cancels it, a model fault is a 500."""
    try:
        while True:
            done, _ = await asyncio.wait({fut}, timeout=DISCONNECT_POLL_S)
            if done:
                return fut.result()
            if await request.is_disconnected():
                job.cancelled = True
    except asyncio.CancelledError:
        job.cancelled = True
        raise
    except ModelStepError as exc:
        raise ApiError(500, "model_error", str(exc)) from None


@router.post("/v1/solve", response_model=SolveResponse, response_model_exclude_unset=True)
async def solve(request: Request) -> Any:
    """Solve one fixed point within the request's budget."""
    state = _state(request)
    req = validate(SolveRequest, await read_json(request))
    served = state.get(req.model)
    job = build_job(served.model, served.meta, req, state.settings)
    result = await wait_result(request, job, submit(served, job))
    return to_response(req.model, result)


def describe(served: Served, full: bool) -> dict[str, Any]:
    """A model's listing entry; `full` adds schemas and the example input."""
    meta = served.meta
    out: dict[str, Any] = {
        "name": meta.name,
        "description": meta.description,
        "state_dim": meta.state_dim,
        "dtype": meta.dtype,
        "fused_kernel": meta.fused_kernel,
        "defaults": {
            "budget": {
                "max_iters": meta.default_max_iters,
                "tol": meta.default_tol,
                "stop_mode": meta.default_stop_mode,
            },
            "solver": meta.default_solver,
        },
    }
    if full:
        out["example_input"] = meta.example_input
        out["input_schema"] = served.model.input_schema()
        out["output_schema"] = served.model.output_schema()
    return out


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every served model with its defaults."""
    return {"models": [describe(s, full=False) for s in _state(request).served.values()]}


@router.get("/v1/models/{name}")
async def get_model(name: str, request: Request) -> dict[str, Any]:
    """One model: schemas, defaults, an example input."""
    return describe(_state(request).get(name), full=True)
