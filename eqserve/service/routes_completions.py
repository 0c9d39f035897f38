"""A looped LM's completions: POST /v1/completions (JSON, or server-sent events in OpenAI's chunk
format) and WS /v1/completions/stream (token events, cancel)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse

from eqserve.engine.completion import CompletionJob, CompletionResult, TokenEvent
from eqserve.service.auth import require_key
from eqserve.service.completions import (
    CompletionRequest,
    build_completion,
    chunk,
    last_chunks,
    now_s,
    response,
)
from eqserve.service.errors import ApiError, parse_json, read_json, validate
from eqserve.service.routes_stream import (
    admit,
    error_event,
    handshake,
    receive_text,
    refuse,
    stream_failure,
)
from eqserve.service.routes_v1 import wait_result
from eqserve.service.state import Served, ServerState

router = APIRouter()


class TokenFeed:
    """A completion's tokens on their way from the worker to one streaming client: the worker's side
    is one thread-safe hand-over per token, then the result (or the failure) closes the feed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[TokenEvent | asyncio.Future] = asyncio.Queue()

    def push(self, event: TokenEvent) -> None:
        """On the worker: hand the token to the event loop."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def close(self, fut: asyncio.Future) -> None:
        """The completion is answered (or failed): the feed ends with it."""
        self.queue.put_nowait(fut)

    async def events(self) -> AsyncIterator[TokenEvent | asyncio.Future]:
        """Every token as it comes, then the finished future."""
        while True:
            item = await self.queue.get()
            yield item
            if isinstance(item, asyncio.Future):
                return


def parse_completion(state: ServerState, raw: Any) -> tuple[CompletionRequest, Served, CompletionJob]:
    """Validate a completion request and build its job; a refusal is counted by its reason."""
    req = validate(CompletionRequest, raw)
    served = state.get(req.model, "looped")
    try:
        return req, served, build_completion(served.model, req, state.settings)  # type: ignore[arg-type]
    except ApiError as exc:
        state.metrics.rejected.labels(served.meta.name, exc.type).inc()
        raise


def start(state: ServerState, served: Served, job: CompletionJob) -> TokenFeed:
    """Submit `job` with a feed of its tokens."""
    feed = TokenFeed(asyncio.get_running_loop())
    job.watch = feed
    state.submit(served, job).add_done_callback(feed.close)  # type: ignore[arg-type]
    return feed


@router.post("/v1/completions", dependencies=[Depends(require_key)])
async def completions(request: Request) -> Any:
    """Complete a prompt with a looped LM, each token within the request's recurrence budget."""
    state: ServerState = request.app.state.eq
    req, served, job = parse_completion(state, await read_json(request))
    created = now_s()
    if req.stream:
        return _sse(state, req, served, job, created)
    result: CompletionResult = await wait_result(request, job, state.submit(served, job))  # type: ignore[arg-type]
    return JSONResponse(response(served.meta.name, result, req.return_.per_token, created))


def _sse(
    state: ServerState, req: CompletionRequest, served: Served, job: CompletionJob, created: int
) -> StreamingResponse:
    """`data:` chunks as OpenAI streams them, then `data: [DONE]`; leaving cancels the completion."""
    feed = start(state, served, job)
    name = served.meta.name
    with_usage = req.stream_options is not None and req.stream_options.include_usage
    gauge = state.metrics.stream_clients.labels(name)

    async def body() -> AsyncIterator[bytes]:
        gauge.inc()
        try:
            async for item in feed.events():
                if isinstance(item, TokenEvent):
                    yield f"data: {json.dumps(chunk(job.id, name, created, item))}\n\n".encode()
                elif (exc := item.exception()) is not None:
                    err = stream_failure(exc, job.id)
                    yield f"data: {json.dumps(error_event(err.type, err.message))}\n\n".encode()
                else:
                    for last in last_chunks(name, item.result(), created, with_usage):
                        yield f"data: {json.dumps(last)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            job.cancelled = True
            gauge.dec()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


CANCEL_HELP = "expected {'type': 'cancel'} as a JSON text message"


async def _read_cancel(ws: WebSocket, job: CompletionJob) -> None:
    """Until the client leaves or cancels (either ends the completion); other messages get an error."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            try:
                msg = parse_json(await receive_text(ws))
                if isinstance(msg, dict) and msg.get("type") == "cancel":
                    break
                raise ApiError(422, "invalid_message", CANCEL_HELP, "type")
            except ApiError as exc:
                await ws.send_json(error_event(exc.type, exc.message, exc.field))
    job.cancelled = True


@router.websocket("/v1/completions/stream")
async def completion_stream(ws: WebSocket) -> None:
    """Stream one completion's tokens, each with its inner steps and exit value; then its answer."""
    state: ServerState = ws.app.state.eq
    if not await handshake(ws, state):
        return
    try:
        admit(ws, state)
        req, served, job = parse_completion(state, parse_json(await receive_text(ws)))
        feed = start(state, served, job)
    except ApiError as exc:
        await refuse(ws, exc)
        return
    except WebSocketDisconnect:
        return
    name, created = served.meta.name, now_s()
    gauge = state.metrics.stream_clients.labels(name)
    gauge.inc()
    reader = asyncio.create_task(_read_cancel(ws, job))
    try:
        async for item in feed.events():
            if isinstance(item, TokenEvent):
                await ws.send_json({"type": "token", **chunk(job.id, name, created, item)["choices"][0]})
            elif (exc := item.exception()) is not None:
                err = stream_failure(exc, job.id)
                await ws.send_json(error_event(err.type, err.message))
            else:
                body = response(name, item.result(), req.return_.per_token, created)
                await ws.send_json({"type": "result", **body})
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        job.cancelled = True
        reader.cancel()
        gauge.dec()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.close()
