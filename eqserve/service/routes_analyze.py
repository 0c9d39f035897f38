"""POST /v1/analyze: E_t and L_t of a served model (see `eqserve.service.analyze`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from eqserve.service.analyze import AnalyzeRequest, run
from eqserve.service.errors import ApiError, read_json, validate
from eqserve.service.state import ServerState

router = APIRouter()


@router.post("/v1/analyze")
async def analyze(request: Request) -> Any:
    """E_t (against references the client sends) and L_t of the t-step map; `"stream": true` sends
    progress events as server-sent events before the result."""
    state: ServerState = request.app.state.eq
    req = validate(AnalyzeRequest, await read_json(request))
    served = state.get(req.model)
    events = run(state, served, req)
    if not req.stream:
        async for event in events:
            if event["type"] == "result":
                return JSONResponse({k: v for k, v in event.items() if k != "type"})
        raise ApiError(500, "analysis_failed", "the analysis ended without a result")

    first = await anext(events)  # a refusal before any row runs is answered as a plain 4xx

    async def body() -> AsyncIterator[bytes]:
        yield _event(first)
        try:
            async for event in events:
                yield _event(event)
        except ApiError as exc:
            yield _event({"type": "error", "status": exc.status, "message": exc.message})

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _event(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
