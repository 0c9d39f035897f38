"""KServe Open Inference Protocol v2: health, server and model metadata, and inference.

Inputs and outputs travel as named tensors (see `models.tensors`); the budget and solver options of
/v1/solve travel as request `parameters`. Errors answer `{"error": message}` as the protocol asks,
with 400 for every request the client can fix (where /v1 says 422).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from eqserve.models.tensors import Tensor, TensorError
from eqserve.service.errors import ApiError, read_json, validate
from eqserve.service.responses import to_response
from eqserve.service.routes_v1 import wait_result
from eqserve.service.schemas import Budget, SolveRequest, SolverOptions
from eqserve.service.state import ServerState

PLATFORM = "eqserve"
PARAMETERS = (*Budget.model_fields, *SolverOptions.model_fields)
"""The request parameters eqserve takes: /v1's budget and solver fields."""


class RequestOutput(BaseModel):
    """An output the client asks for by name."""

    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """POST /v2/models/{name}/infer."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[Tensor]
    outputs: list[RequestOutput] | None = None


def v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The protocol's error shape; a 422 of the shared helpers becomes the protocol's 400."""
    return JSONResponse({"error": message}, 400 if status == 422 else status, headers)


class V2Route(APIRoute):
    """A route whose errors (its dependencies', such as auth, included) answer in the v2 shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, with ApiError and TensorError answered as `{"error": message}`."""
        handler = super().get_route_handler()

        async def v2_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return v2_error(exc.status, exc.message, exc.headers)
            except TensorError as exc:
                return v2_error(400, str(exc))

        return v2_handler


router = APIRouter(route_class=V2Route)
"""Server metadata and the model routes; the app puts them behind the API key."""

health_router = APIRouter()
"""Liveness and readiness, open even with an API key set."""


@health_router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    """The server answers."""
    return {"live": True}


@health_router.get("/v2/health/ready")
async def ready(request: Request) -> JSONResponse:
    """Every model is loaded and its worker runs (503 otherwise, for readiness probes)."""
    ok = request.app.state.eq.ready
    return JSONResponse({"ready": ok}, 200 if ok else 503)


@router.get("/v2")
async def server_metadata(request: Request) -> dict[str, Any]:
    """The server's name, version and protocol extensions (none)."""
    return {"name": PLATFORM, "version": request.app.version, "extensions": []}


@router.get("/v2/models/{name}")
async def model_metadata(name: str, request: Request) -> dict[str, Any]:
    """A model's input and output tensors; -1 marks a variable dimension. No versions."""
    model = request.app.state.eq.get(name).model
    return {
        "name": name,
        "versions": [],
        "platform": PLATFORM,
        "inputs": model.v2_inputs().metadata(),
        "outputs": model.v2_outputs().metadata(),
    }


@router.get("/v2/models/{name}/ready")
async def model_ready(name: str, request: Request) -> JSONResponse:
    """The model's worker runs (503 otherwise)."""
    ok = request.app.state.eq.get(name).engine.alive
    return JSONResponse({"name": name, "ready": ok}, 200 if ok else 503)


def solve_options(parameters: dict[str, Any]) -> tuple[Budget, SolverOptions]:
    """The request parameters as /v1's budget and solver options, validated the same way."""
    for key in parameters:
        if key not in PARAMETERS:
            raise ApiError(
                400,
                "invalid_request",
                f"parameters.{key}: unknown parameter; eqserve takes {', '.join(PARAMETERS)}",
                f"parameters.{key}",
            )

    def pick(schema: type[BaseModel]) -> dict[str, Any]:
        return {k: v for k, v in parameters.items() if k in schema.model_fields}

    budget = validate(Budget, pick(Budget), prefix="parameters")
    return budget, validate(SolverOptions, pick(SolverOptions), prefix="parameters")


@router.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> dict[str, Any]:
    """Solve one fixed point within the budget the parameters set; outputs as tensors."""
    state: ServerState = request.app.state.eq
    served = state.get(name)
    body = validate(InferenceRequest, await read_json(request))
    out_map = served.model.v2_outputs()
    wanted = [o.name for o in body.outputs] if body.outputs else list(out_map.specs)
    for out in wanted:
        if out not in out_map.specs:
            raise TensorError(out, f"unknown output {out!r}; {name} produces {', '.join(out_map.specs)}")
    inp = served.model.v2_inputs().to_dict(body.inputs)
    budget, solver = solve_options(body.parameters)
    req = SolveRequest(model=name, input=inp, budget=budget, solver=solver)
    job = state.build(served, req)
    res = to_response(name, await wait_result(request, job, state.submit(served, job)))
    produced = {t.name: t for t in out_map.to_tensors(res.output)} if res.output is not None else {}
    parameters = {
        "status": res.status,
        "iterations": res.iterations,
        "residual": res.residual,
        "rel_residual": res.rel_residual,
        **res.timing.model_dump(),
    }
    return {
        "model_name": name,
        "id": body.id if body.id is not None else res.id,
        "parameters": {k: v for k, v in parameters.items() if v is not None},
        "outputs": [produced[n].model_dump(exclude_none=True) for n in wanted if n in produced],
    }
