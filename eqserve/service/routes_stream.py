"""Streaming solves: WS /v1/solve/stream (with cancel and extend) and server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from eqserve.service import auth
from eqserve.service.engine import ModelStepError, SolveJob, SolveResult, extend_job
from eqserve.service.errors import ApiError, error_body, validate
from eqserve.service.responses import to_response
from eqserve.service.schemas import ExtendMessage, SolveRequest
from eqserve.service.state import Served, ServerState
from eqserve.service.streams import EventStream, iterate_encoder
from eqserve.service.ws_protocol import SEND_TEXTS

router = APIRouter()


def error_event(type_: str, message: str, field: str | None = None) -> dict[str, Any]:
    """A stream's error event: the API's error shape with `"type": "error"`."""
    return {"type": "error", **error_body(type_, message, field)}


def result_event(model: str, result: SolveResult) -> dict[str, Any]:
    """The final stream event: /v1/solve's answer (the stream adds how many iterates it dropped)."""
    body = to_response(model, result).model_dump(mode="json", exclude_unset=True)
    return {"type": "result", **body}


def start_leg(state: ServerState, served: Served, job: SolveJob, stream: EventStream) -> asyncio.Future:
    """Submit `job`; its result (or failure) becomes the stream's final event."""
    fut = state.submit(served, job)

    def done(f: asyncio.Future) -> None:
        if f.cancelled():
            return
        exc = f.exception()
        if exc is None:
            stream.finish(result_event(served.meta.name, f.result()))
        elif isinstance(exc, ModelStepError):
            stream.finish(error_event("model_error", str(exc)))
        else:
            stream.finish(error_event("internal_error", repr(exc)))

    fut.add_done_callback(done)
    return fut


def prepare(state: ServerState, req: SolveRequest) -> tuple[Served, SolveJob, EventStream]:
    """Build the job of a streaming request with its event stream attached."""
    served = state.get(req.model)
    job = state.build(served, req)
    ret = req.return_
    encode = iterate_encoder(served.model, job.ctx, ret.state, ret.output)
    keep_y = ret.state or ret.output
    stream = EventStream(asyncio.get_running_loop(), state.settings.stream_buffer, encode, keep_y)
    stream.attach(job)
    return served, job, stream


def sse_response(state: ServerState, req: SolveRequest) -> StreamingResponse:
    """POST /v1/solve with "stream": true: one `data:` line per event; leaving cancels the solve."""
    served, job, stream = prepare(state, req)
    start_leg(state, served, job, stream)
    gauge = state.metrics.stream_clients.labels(served.meta.name)

    async def body() -> AsyncIterator[bytes]:
        gauge.inc()
        try:
            async for batch in stream.batches():
                yield "".join(f"data: {text}\n\n" for text in batch).encode()
        finally:
            job.cancelled = True
            gauge.dec()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def batch_sender(ws: WebSocket) -> Callable[[list[str]], Awaitable[None]]:
    """Sends a batch of texts, each its own message: in one write where the server offers
    `SEND_TEXTS` (eqserve's uvicorn protocol), else one `send_text` each (other ASGI servers)."""
    extension = ws.scope.get("extensions", {}).get(SEND_TEXTS)
    if extension is not None:
        return extension["send"]

    async def send_each(texts: list[str]) -> None:
        for text in texts:
            await ws.send_text(text)

    return send_each


class _Control:
    """What the client sends while its solve runs: cancel at once, queue extends."""

    def __init__(self, ws: WebSocket, cap: int) -> None:
        self.ws, self.cap = ws, cap
        self.job: SolveJob | None = None
        self.extends: asyncio.Queue[ExtendMessage | None] = asyncio.Queue()

    async def read(self) -> None:
        try:
            while True:
                msg = await self.ws.receive_json()
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "cancel":
                    if self.job is not None:
                        self.job.cancelled = True
                    await self.extends.put(None)
                elif kind == "extend":
                    try:
                        await self.extends.put(validate(ExtendMessage, msg))
                    except ApiError as exc:
                        await self.ws.send_json(error_event(exc.type, exc.message, exc.field))
                else:
                    expected = "expected {'type': 'cancel'} or {'type': 'extend', ...}"
                    await self.ws.send_json(error_event("invalid_message", expected, "type"))
        except (WebSocketDisconnect, RuntimeError, json.JSONDecodeError):
            if self.job is not None:
                self.job.cancelled = True
            await self.extends.put(None)


@router.websocket("/v1/solve/stream")
async def solve_stream(ws: WebSocket) -> None:
    """Stream one solve's iterates; the client may cancel, and extend a solve stopped on budget."""
    state: ServerState = ws.app.state.eq
    await ws.accept()
    try:
        token = ws.headers.get("authorization") or (
            f"Bearer {ws.query_params['token']}" if "token" in ws.query_params else None
        )
        auth.check(ws.url.path, token, state.settings.api_key)
        req = validate(SolveRequest, await ws.receive_json())
        served, job, stream = prepare(state, req)
    except ApiError as exc:
        await ws.send_json(error_event(exc.type, exc.message, exc.field))
        await ws.close(code=1008 if exc.status == 401 else 1000)
        return
    except (json.JSONDecodeError, KeyError) as exc:
        await ws.send_json(error_event("invalid_json", f"request is not valid JSON: {exc}"))
        await ws.close()
        return
    except WebSocketDisconnect:
        return
    gauge = state.metrics.stream_clients.labels(served.meta.name)
    gauge.inc()
    control = _Control(ws, state.settings.max_iters_cap)
    reader = asyncio.create_task(control.read())
    try:
        await _legs(ws, state, served, job, stream, control)
    except (WebSocketDisconnect, RuntimeError, OSError):  # OSError: uvicorn's ClientDisconnected
        job.cancelled = True
    finally:
        if control.job is not None:
            control.job.cancelled = True
        reader.cancel()
        gauge.dec()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # the client may be gone already
            await ws.close()


async def _legs(
    ws: WebSocket, state: ServerState, served: Served, job: SolveJob, stream: EventStream, control: _Control
) -> None:
    """Run the solve, then each extension the client asks for within the grace period."""
    send = batch_sender(ws)
    while True:
        control.job = job
        try:
            fut = start_leg(state, served, job, stream)
        except ApiError as exc:
            await ws.send_json(error_event(exc.type, exc.message, exc.field))
            return
        async for batch in stream.batches():
            await send(batch)
        result: SolveResult | None = None if fut.exception() else fut.result()
        if result is None or result.resume is None:
            return
        try:
            ext = await asyncio.wait_for(control.extends.get(), state.settings.stream_grace_s)
        except TimeoutError:
            return
        if ext is None:
            return
        if result.resume.iterations + ext.max_iters > state.settings.max_iters_cap:
            cap = state.settings.max_iters_cap
            await ws.send_json(error_event("over_cap", f"extending past the server's cap {cap}", "max_iters"))
            return
        job = extend_job(job, result, ext.max_iters)
        stream.reset()
        stream.attach(job)
