"""The native API: POST /v1/solve and the model listing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from eqserve.engine.errors import EngineDied, ModelStepError
from eqserve.engine.job import SolveJob, SolveResult
from eqserve.service.errors import read_json
from eqserve.service.responses import to_response
from eqserve.service.routes_stream import model_error, parse_solve, sse_response, stuck_error
from eqserve.service.schemas import SolveResponse
from eqserve.service.state import Served, ServerState, engine_down

router = APIRouter()

DISCONNECT_POLL_S = 0.25
"""How often a waiting /v1/solve checks that its client is still there."""


def _state(request: Request) -> ServerState:
    return request.app.state.eq


async def wait_result(request: Request, job: SolveJob, fut: asyncio.Future) -> SolveResult:
    """Await the solve; a client that goes away cancels it, a model fault is a 500.

    The worker answers a solve at its deadline, at the end of a tick; one whose step hangs never does,
    so the wait itself gives up `stuck_tick_s` past the deadline and answers 503 (`stuck`).
    """
    give_up = job.deadline + _state(request).settings.stuck_tick_s
    try:
        while True:
            done, _ = await asyncio.wait({fut}, timeout=DISCONNECT_POLL_S)
            if done:
                return fut.result()
            if await request.is_disconnected():
                job.cancelled = True
            if time.monotonic() > give_up:
                job.cancelled = True  # should the worker come back, it drops the row at once
                raise stuck_error()
    except asyncio.CancelledError:
        job.cancelled = True
        raise
    except ModelStepError as exc:
        raise model_error(exc, job.id) from None
    except EngineDied as exc:
        raise engine_down(exc) from None


@router.post("/v1/solve", response_model=SolveResponse, response_model_exclude_unset=True)
async def solve(request: Request) -> Any:
    """Solve one fixed point within the request's budget."""
    state = _state(request)
    req, served, job = await run_in_threadpool(parse_solve, state, await read_json(request))
    if req.stream:
        return sse_response(state, req, served, job)
    result = await wait_result(request, job, state.submit(served, job))
    # Serialized here, once: FastAPI's response_model path would validate and re-encode the answer.
    body = to_response(req.model, result).model_dump_json(exclude_unset=True)
    return Response(body, media_type="application/json")


def describe(served: Served, full: bool) -> dict[str, Any]:
    """A model's listing entry; `full` adds schemas and the example input."""
    meta = served.meta
    out: dict[str, Any] = {
        "name": meta.name,
        "description": meta.description,
        "kind": "looped-lm" if served.looped else "fixed-point",
        "state_shape": meta.state_shape,
        "dtype": meta.dtype,
        "fused_kernel": meta.fused_kernel,
    }
    if served.looped:
        rule = served.model.default_exit  # type: ignore[union-attr]
        exit_ = {
            "criterion": rule.criterion,
            "threshold": rule.threshold,
            "min_steps": rule.min_steps,
            "check_every": rule.check_every,
        }
        out["defaults"] = {"budget": {"max_iters": rule.max_iters, "exit": exit_}}
        if full:
            out["example_input"] = meta.example_input
            out["max_context"] = served.model.max_context  # type: ignore[union-attr]
        return out
    out["defaults"] = {
        "budget": {
            "max_iters": meta.default_max_iters,
            "tol": meta.default_tol,
            "stop_mode": meta.default_stop_mode,
        },
        "solver": meta.default_solver,
    }
    if full:
        out["example_input"] = meta.example_input
        out["input_schema"] = served.model.input_schema()  # type: ignore[union-attr]
        out["output_schema"] = served.model.output_schema()  # type: ignore[union-attr]
    return out


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every served model with its defaults."""
    return {"models": [describe(s, full=False) for s in _state(request).served.values()]}


@router.get("/v1/models/{name}")
async def get_model(name: str, request: Request) -> dict[str, Any]:
    """One model: schemas, defaults, an example input."""
    return describe(_state(request).get(name, "any"), full=True)
