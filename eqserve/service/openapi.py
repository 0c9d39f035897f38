"""The OpenAPI document, completed with what FastAPI cannot see: the routes read and validate their
bodies themselves (off the event loop, with errors that name the field), so FastAPI knows neither the
request bodies nor the error answers. Generated clients and fuzzers work from this document."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from eqserve.service.analyze import AnalyzeRequest
from eqserve.service.auth import OPEN_PATHS
from eqserve.service.completions import CompletionRequest
from eqserve.service.routes_v2 import InferenceRequest
from eqserve.service.schemas import SolveRequest

REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("/v1/solve", "post"): SolveRequest,
    ("/v1/completions", "post"): CompletionRequest,
    ("/v1/analyze", "post"): AnalyzeRequest,
    ("/v2/models/{name}/infer", "post"): InferenceRequest,
}
"""The body each operation that solves (or completes) reads."""

V1_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        }
    },
}
V2_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}

RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}
}

ERRORS = {
    400: "the request is malformed (v2: wrong types, shapes or values, naming the field)",
    401: "the server has an API key and the request does not carry it",
    404: "no such model",
    413: "the body exceeds the server's --max-body-bytes",
    415: "the body is not declared JSON",
    422: "malformed JSON, wrong types or shapes, values out of range or over the server's caps",
    429: "the model's waiting queue is full; retry after Retry-After seconds",
    500: "the model failed in its step, or an internal error (the message quotes the logged request id)",
    503: "the server is draining for shutdown or over its connection limit, or the model's worker is stuck "
    "in a step past the request's deadline",
}


def _errors(path: str, method: str, solve: bool) -> dict[int, bool]:
    """The error statuses of an operation, each with whether it carries Retry-After."""
    statuses = {500: False}
    if not path.startswith(OPEN_PATHS):
        statuses[401] = False
    if "{name}" in path or solve:
        statuses[404] = False
    if method == "post":
        statuses |= {413: False, 415: False, (400 if path.startswith("/v2") else 422): False}
    if solve:
        statuses |= {429: True, 503: True}
    return statuses


def _add_model(schema: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    """Put `model`'s JSON schema (and those it refers to) in the components; its reference."""
    body = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(body.pop("$defs", {}))
    components[model.__name__] = body
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def complete(schema: dict[str, Any]) -> None:
    """Add the request bodies and the error answers of every /v1 and /v2 operation, in place."""
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            model = REQUEST_BODIES.get((path, method))
            if model is not None:
                ref = _add_model(schema, model)
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
            responses = op.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's own shape, which these routes never answer
            if not path.startswith(("/v1", "/v2")):
                continue
            shape = V2_ERROR if path.startswith("/v2") else V1_ERROR
            for status, retry in _errors(path, method, model is not None).items():
                answer: dict[str, Any] = {
                    "description": ERRORS[status],
                    "content": {"application/json": {"schema": shape}},
                }
                if retry:
                    answer["headers"] = RETRY_AFTER
                responses.setdefault(str(status), answer)
    sse = {"text/event-stream": {"schema": {"type": "string"}}}
    for path in ("/v1/solve", "/v1/completions"):
        schema["paths"][path]["post"]["responses"]["200"]["content"] |= sse


def install(app: FastAPI) -> None:
    """Make `app.openapi()` return the completed document (built once, as FastAPI does)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            complete(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
