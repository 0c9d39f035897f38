"""One JSON error shape for every failure: {"error": {"type", "message", "field"?}}, and under /v2 the
protocol's {"error": message}."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answered as JSON with `status`; `field` names the request field at fault."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.field = status, type_, message, field
        self.headers = headers

    def response(self, path: str) -> JSONResponse:
        """The JSON response for this error on a route at `path`."""
        return shaped(path, self.status, self.type, self.message, self.field, self.headers)


def error_body(type_: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The error JSON; `field` only when one field is at fault."""
    err: dict[str, Any] = {"type": type_, "message": message}
    if field is not None:
        err["field"] = field
    return {"error": err}


def shaped(
    path: str,
    status: int,
    type_: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in the shape of the protocol at `path`: v2 clients read `{"error": message}` (and take
    400 where v1 says 422); every other route answers `error_body`."""
    if path == "/v2" or path.startswith("/v2/"):
        return JSONResponse({"error": message}, 400 if status == 422 else status, headers)
    return JSONResponse(error_body(type_, message, field), status, headers)


def validate(schema: type[M], data: Any, prefix: str = "") -> M:
    """Validate `data` against a pydantic schema; the first error becomes a 422 naming its field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        field = ".".join([prefix, *loc] if prefix else loc) or prefix or None
        raise ApiError(422, "invalid_request", f"{field or 'body'}: {first['msg']}", field) from None


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON, or a 422 saying where it is malformed."""
    return parse_json(await request.body())


def parse_json(raw: bytes) -> Any:
    """`raw` parsed as JSON, or a 422 saying where it is malformed."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_json", f"request body is not valid JSON: {exc}") from None


def install_handlers(app: FastAPI) -> None:
    """Route every exception through the one error shape."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"][1:]) or None
        return shaped(request.url.path, 422, "invalid_request", str(first["msg"]), field)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return shaped(request.url.path, exc.status_code, kind, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The cause goes to the log only: its text may carry paths, values or code of the server.
        log.exception("unhandled error")
        return shaped(
            request.url.path, 500, "internal_error", "internal server error; the server log has the cause"
        )
