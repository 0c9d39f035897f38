"""The OpenAPI spec and its two viewers, behind the API key when one is set.

FastAPI serves them open; here they follow the key like the API they describe. With a key set the
viewers are of little use in a browser (they fetch the spec without the key): fetch the spec with
the key (`curl -H "Authorization: Bearer $KEY" .../openapi.json`) and generate clients from it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from eqserve.service.auth import require_key

router = APIRouter(dependencies=[Depends(require_key)], include_in_schema=False)

SPEC = "/openapi.json"


@router.get(SPEC)
async def spec(request: Request) -> dict[str, Any]:
    """The OpenAPI document of the server."""
    return request.app.openapi()


@router.get("/docs")
async def swagger(request: Request) -> HTMLResponse:
    """Swagger UI on the spec."""
    return get_swagger_ui_html(openapi_url=SPEC, title=f"{request.app.title} API")


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc on the spec."""
    return get_redoc_html(openapi_url=SPEC, title=f"{request.app.title} API")


def mount_docs(app: FastAPI) -> None:
    """Serve the spec and its viewers (build the app with openapi_url=None, so FastAPI serves none)."""
    app.include_router(router)
