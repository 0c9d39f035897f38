"""KServe Open Inference Protocol v2: health, server and model metadata, and inference.

Inputs and outputs travel as named tensors (see `models.tensors`), in JSON or in the binary tensor
data extension (see `v2_binary`); the budget and solver options of /v1/solve travel as request
`parameters`. Errors answer `{"error": message}` as the protocol asks (`errors.shaped`), with 400 for
every request the client can fix (where /v1 says 422).
"""

from __future__ import annotations

import zlib
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from eqserve.models.tensors import NoTensorForm, Tensor, TensorError, TensorMap
from eqserve.service import v2_binary
from eqserve.service.errors import ApiError, parse_json, validate
from eqserve.service.responses import to_response
from eqserve.service.routes_v1 import wait_result
from eqserve.service.schemas import Budget, SolveRequest, SolverOptions
from eqserve.service.state import Served, ServerState

PLATFORM = "eqserve"
EXTENSIONS = ["binary_tensor_data", "parameters"]
"""The protocol extensions eqserve speaks (Triton's names), as server metadata lists them."""

PARAMETERS = (*Budget.model_fields, *SolverOptions.model_fields)
"""The request parameters eqserve takes from /v1: the budget and solver fields."""

UNSUPPORTED = {
    "priority": "eqserve does not schedule by priority",
    "sequence_id": "eqserve has no sequence batching (the sequence extension)",
    "sequence_start": "eqserve has no sequence batching (the sequence extension)",
    "sequence_end": "eqserve has no sequence batching (the sequence extension)",
    "classification": "eqserve does not speak the classification extension",
    "shared_memory_region": "eqserve does not speak the shared-memory extensions; send the data",
    "shared_memory_byte_size": "eqserve does not speak the shared-memory extensions; send the data",
    "shared_memory_offset": "eqserve does not speak the shared-memory extensions; send the data",
}
"""Standard parameters of extensions eqserve does not speak, and why each is refused."""

ENCODINGS = {"gzip": 31, "deflate": 15}
"""zlib's `wbits` for each request Content-Encoding Triton's clients may use."""

FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
"""Content-Types a browser posts across sites without a preflight."""


class ProtocolParameters(BaseModel):
    """The protocol's own request parameters eqserve honours."""

    binary_data_output: bool = False
    timeout: PositiveInt | None = None
    """Triton's request timeout in microseconds: the solve's deadline, as `timeout_s` is."""


class OutputParameters(BaseModel):
    """A requested output's parameters: whether it comes back as bytes (default: `binary_data_output`)."""

    binary_data: bool | None = None


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


router = APIRouter()
"""Server metadata and the model routes; the app puts them behind the API key."""

health_router = APIRouter()
"""Liveness and readiness, open even with an API key set."""


@health_router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    """The server answers."""
    return {"live": True}


@health_router.get("/v2/health/ready")
async def ready(request: Request) -> JSONResponse:
    """Every model is loaded and its worker runs, none stuck, and the server is not draining (503
    otherwise, for readiness probes)."""
    ok = request.app.state.eq.ready and not request.app.state.drain.draining
    return JSONResponse({"ready": ok}, 200 if ok else 503)


@router.get("/v2")
async def server_metadata(request: Request) -> dict[str, Any]:
    """The server's name, version and the protocol extensions it speaks."""
    return {"name": PLATFORM, "version": request.app.version, "extensions": EXTENSIONS}


def tensor_maps(name: str, served: Served, status: int) -> tuple[TensorMap, TensorMap]:
    """The model's input and output tensors; `status` (404 or 400) for a model that has none, which
    only /v1/solve can serve."""
    try:
        return served.model.v2_inputs(), served.model.v2_outputs()
    except NoTensorForm as exc:
        message = f"model {name!r} has no v2 tensor form ({exc.field} has none); solve it with POST /v1/solve"
        raise ApiError(status, "no_tensor_form", message) from None


@router.get("/v2/models/{name}")
async def model_metadata(name: str, request: Request) -> dict[str, Any]:
    """A model's input and output tensors; -1 marks a variable dimension. No versions."""
    inputs, outputs = tensor_maps(name, request.app.state.eq.get(name), 404)
    return {
        "name": name,
        "versions": [],
        "platform": PLATFORM,
        "inputs": inputs.metadata(),
        "outputs": outputs.metadata(),
    }


@router.get("/v2/models/{name}/ready")
async def model_ready(name: str, request: Request) -> JSONResponse:
    """The model's worker runs and is not stuck, and the server is not draining (503 otherwise)."""
    state: ServerState = request.app.state.eq
    ok = state.worker_ok(state.get(name, "any")) and not request.app.state.drain.draining
    return JSONResponse({"name": name, "ready": ok}, 200 if ok else 503)


def check_keys(parameters: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """A 400 naming the first parameter outside `allowed`, saying why where it is a standard one."""
    for key in parameters:
        if key not in allowed:
            why = UNSUPPORTED.get(key, f"unknown parameter; eqserve takes {', '.join(allowed)}")
            raise ApiError(400, "invalid_request", f"{where}.{key}: {why}", f"{where}.{key}")


def solve_options(parameters: dict[str, Any]) -> tuple[Budget, SolverOptions, ProtocolParameters]:
    """The request parameters as /v1's budget and solver options, validated the same way, and the
    protocol's own."""
    check_keys(parameters, (*PARAMETERS, *ProtocolParameters.model_fields), "parameters")

    def pick(schema: type[BaseModel]) -> dict[str, Any]:
        return {k: v for k, v in parameters.items() if k in schema.model_fields}

    protocol = validate(ProtocolParameters, pick(ProtocolParameters), prefix="parameters")
    budget = pick(Budget)
    if protocol.timeout is not None:
        if "timeout_s" in budget:
            raise ApiError(400, "invalid_request", "parameters: give timeout (µs) or timeout_s, not both")
        budget["timeout_s"] = protocol.timeout / 1e6
    return (
        validate(Budget, budget, prefix="parameters"),
        validate(SolverOptions, pick(SolverOptions), prefix="parameters"),
        protocol,
    )


def inflate(raw: bytes, encoding: str) -> bytes:
    """A request body as sent before the client compressed it with `encoding`."""
    if encoding == "identity":
        return raw
    if encoding not in ENCODINGS:
        message = f"Content-Encoding {encoding!r}: eqserve takes gzip or deflate"
        raise ApiError(400, "invalid_request", message, "content-encoding")
    try:
        return zlib.decompress(raw, ENCODINGS[encoding])
    except zlib.error as exc:
        message = f"Content-Encoding {encoding}: the body does not inflate: {exc}"
        raise ApiError(400, "invalid_request", message, "content-encoding") from None


def check_media(content_type: str | None) -> None:
    """A 415 for the bodies a page on another site can post without asking (forms, text); Triton's
    clients send JSON without a Content-Type, binary bodies with the extension's header."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media in FORM_TYPES:
        message = "send the body as application/json (or application/octet-stream with binary tensors)"
        raise ApiError(415, "unsupported_media_type", message, "content-type")


def read_request(raw: bytes, headers: Headers, in_map: TensorMap) -> tuple[InferenceRequest, dict[str, Any]]:
    """The request and the model's JSON input from a body, with every tensor decoded and checked:
    work that grows with the tensors, so the route runs it off the event loop."""
    encoding = headers.get("content-encoding", "identity").lower()
    header, tail = v2_binary.split(inflate(raw, encoding), headers.get(v2_binary.HEADER))
    body = validate(InferenceRequest, parse_json(header))
    for i, t in enumerate(body.inputs):
        check_keys(t.parameters or {}, (v2_binary.SIZE,), f"inputs.{i}.parameters")
    v2_binary.read_inputs(body.inputs, tail)
    try:
        return body, in_map.to_dict(body.inputs)
    except TensorError as exc:
        raise ApiError(400, "invalid_tensor", str(exc), f"inputs.{exc.name}") from None


def requested(body: InferenceRequest, out_map: TensorMap, binary_default: bool) -> dict[str, bool]:
    """The outputs to answer, each with whether it travels as bytes; a 400 naming a bad one."""
    if body.outputs is None:
        return dict.fromkeys(out_map.specs, binary_default)
    wanted: dict[str, bool] = {}
    for i, out in enumerate(body.outputs):
        if out.name not in out_map.specs:
            message = f"unknown output {out.name!r}; the model produces {', '.join(out_map.specs)}"
            raise ApiError(400, "invalid_request", f"outputs.{i}.name: {message}", f"outputs.{i}.name")
        where = f"outputs.{i}.parameters"
        check_keys(out.parameters or {}, tuple(OutputParameters.model_fields), where)
        flag = validate(OutputParameters, out.parameters or {}, prefix=where).binary_data
        wanted[out.name] = binary_default if flag is None else flag
    return wanted


@router.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> Response:
    """Solve one fixed point within the budget the parameters set; outputs as tensors, in JSON or as
    bytes after it."""
    state: ServerState = request.app.state.eq
    served = state.get(name)
    in_map, out_map = tensor_maps(name, served, 400)
    check_media(request.headers.get("content-type"))
    body, inp = await run_in_threadpool(read_request, await request.body(), request.headers, in_map)
    budget, solver, protocol = solve_options(body.parameters)
    wanted = requested(body, out_map, protocol.binary_data_output)
    req = SolveRequest(model=name, input=inp, budget=budget, solver=solver)
    job = await run_in_threadpool(state.build, served, req)  # a model's encode may be slow
    res = to_response(name, await wait_result(request, job, state.submit(served, job)))
    produced = {t.name: t for t in out_map.to_tensors(res.output)} if res.output is not None else {}
    parameters = {
        "status": res.status,
        "iterations": res.iterations,
        "residual": res.residual,
        "rel_residual": res.rel_residual,
        **res.timing.model_dump(),
    }
    header_json = {
        "model_name": name,
        "id": body.id if body.id is not None else res.id,
        "parameters": {k: v for k, v in parameters.items() if v is not None},
    }
    outputs = [produced[n] for n in wanted if n in produced]
    binary = [wanted[t.name] for t in outputs]
    if not any(binary):
        return JSONResponse({**header_json, "outputs": [t.model_dump(exclude_none=True) for t in outputs]})
    content, length = v2_binary.encode(header_json, outputs, binary)
    return Response(content, media_type="application/octet-stream", headers={v2_binary.HEADER: str(length)})
