"""One JSON error shape for every failure: {"error": {"type", "message", "field"?}}, and under /v2 the
protocol's {"error": message}."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

TEXT_CAP = 200
"""Longest message or field an error carries: both may quote the request, which may be huge."""


def clip(text: str, cap: int = TEXT_CAP) -> str:
    """`text`, cut to `cap` characters with an ellipsis."""
    return text if len(text) <= cap else text[: cap - 1] + "…"


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
        message, field = clip(message), None if field is None else clip(field)
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


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is JSON's. Browsers send other types (text/plain, forms) cross-origin
    without asking the server first; requiring JSON keeps other sites' pages from posting solves."""
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON off the event loop; 415 unless it is declared JSON, 422 saying
    where it is malformed."""
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json", "content-type")
    return await run_in_threadpool(parse_json, await request.body())


def parse_json(raw: str | bytes) -> Any:
    """`raw` parsed as JSON, or a 422 saying where it is malformed or that it nests too deeply."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ApiError(422, "invalid_json", "request body nests too deeply") from None
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
        return internal_error(exc).response(request.url.path)


def internal_error(
    exc: BaseException,
    request_id: str | None = None,
    type_: str = "internal_error",
    what: str = "internal server error",
) -> ApiError:
    """A 500 saying `what` and nothing of `exc` (its text may carry paths, values or code of the
    server): the cause goes to the log under a request id, which the answer quotes."""
    request_id = request_id or f"err-{uuid.uuid4().hex[:12]}"
    log.error("%s, request id %s", what, request_id, exc_info=exc)
    return ApiError(500, type_, f"{what}; request id {request_id}")
