"""The FastAPI application: lifespan of the engines, health routes, error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from eqserve.models.base import ImplicitModel
from eqserve.service.auth import require_key
from eqserve.service.config import Settings
from eqserve.service.drain import Drain, DrainGate
from eqserve.service.errors import error_body, install_handlers
from eqserve.service.fronts import Fronts, engine_addresses
from eqserve.service.limits import BodyCap
from eqserve.service.openapi import install as install_openapi
from eqserve.service.routes_analyze import router as analyze_router
from eqserve.service.routes_completions import router as completions_router
from eqserve.service.routes_docs import mount_docs
from eqserve.service.routes_page import mount_page
from eqserve.service.routes_repository import router as repository_router
from eqserve.service.routes_stream import router as stream_router
from eqserve.service.routes_v1 import router as v1_router
from eqserve.service.routes_v2 import health_router as v2_health_router
from eqserve.service.routes_v2 import router as v2_router
from eqserve.service.state import ServerState


def create_app(
    settings: Settings, models: dict[str, ImplicitModel] | None = None, follow: dict[str, str] | None = None
) -> FastAPI:
    """An app serving `settings.models` (or the given model objects, for tests); with `follow`, a further
    front of another's engine processes (`--api-workers`)."""
    state = ServerState(settings, follow=follow)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start(models)
        further = follow is None and settings.api_workers > 1
        fronts = Fronts(settings, engine_addresses(state)) if further else None
        if fronts is not None:
            fronts.start()
        yield
        if fronts is not None:
            fronts.stop()
        state.stop()

    app = FastAPI(title="eqserve", version="0.1.0", lifespan=lifespan, openapi_url=None)
    app.state.eq = state
    app.state.drain = drain = Drain()
    app.add_middleware(BodyCap, cap=settings.max_body_bytes)
    app.add_middleware(DrainGate, drain=drain)
    install_handlers(app)
    mount_docs(app)
    install_openapi(app)
    app.include_router(v1_router, dependencies=[Depends(require_key)])
    app.include_router(analyze_router, dependencies=[Depends(require_key)])
    app.include_router(stream_router)
    app.include_router(completions_router)
    app.include_router(v2_health_router)
    app.include_router(v2_router, dependencies=[Depends(require_key)])
    if settings.model_control:
        app.include_router(repository_router, dependencies=[Depends(require_key)])
    mount_page(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Any:
        """Every model is loaded and its worker runs, none stuck in a step, and the server is not draining."""
        if drain.draining:
            return JSONResponse(error_body("draining", "the server is shutting down"), 503)
        if down := state.not_ready():
            message = f"the worker of {', '.join(map(repr, down))} stopped or is stuck in a step"
            return JSONResponse(error_body("not_ready", message), 503)
        if not state.ready:
            return JSONResponse(error_body("not_ready", "models are loading or a worker stopped"), 503)
        return {"status": "ready", "models": list(state.served)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus metrics of every served model."""
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
