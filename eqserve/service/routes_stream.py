"""Streaming solves: WS /v1/solve/stream (with cancel and extend) and server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from eqserve.engine.errors import EngineDied, ModelStepError
from eqserve.engine.job import SolveJob, SolveResult, extend_job
from eqserve.service import auth
from eqserve.service.drain import refusal
from eqserve.service.errors import ApiError, error_body, internal_error, parse_json, validate
from eqserve.service.responses import to_response
from eqserve.service.schemas import ExtendMessage, SolveRequest
from eqserve.service.state import Served, ServerState, engine_down
from eqserve.service.streams import EventStream, iterate_encoder
from eqserve.service.ws_protocol import SEND_TEXTS

router = APIRouter()

CLOSE_CODES = {401: 1008, 503: 1013}
"""The close code after an error event: policy violation for a missing key, "try again later" while
the server drains, normal otherwise."""

STUCK_RETRY_S = 5
"""Retry-After of a solve given up on a stuck worker: time for a load balancer to route elsewhere."""


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
            return
        err = stream_failure(exc, job.id)
        stream.finish(error_event(err.type, err.message))

    def give_up() -> None:  # the worker did not answer by the deadline: it is stuck in a step
        job.cancelled = True
        err = stuck_error()
        stream.finish(error_event(err.type, err.message))

    fut.add_done_callback(done)
    if job.timeout_s is not None:
        wait_s = job.deadline + state.settings.stuck_tick_s - time.monotonic()
        timer = asyncio.get_running_loop().call_later(wait_s, give_up)
        fut.add_done_callback(lambda _: timer.cancel())
    return fut


def stuck_error() -> ApiError:
    """The 503 of a solve whose model's worker has not come back from a tick `stuck_tick_s` past the
    solve's deadline: the worker answers deadlines only between ticks, so the route answers it."""
    message = "the model did not answer by the request's deadline: its worker is stuck in a step"
    return ApiError(503, "stuck", message, "model", {"Retry-After": str(STUCK_RETRY_S)})


def stream_failure(exc: BaseException, request_id: str) -> ApiError:
    """The error event's error of a streamed request that failed: its engine process gone (503), its
    model's fault named (500), anything else hidden."""
    if isinstance(exc, EngineDied):
        return engine_down(exc)
    if isinstance(exc, ModelStepError):
        return model_error(exc, request_id)
    return internal_error(exc, request_id)


async def refuse(ws: WebSocket, exc: ApiError) -> None:
    """A stream refused before it starts: its error event, then the close code of its status."""
    await ws.send_json(error_event(exc.type, exc.message, exc.field))
    await ws.close(code=CLOSE_CODES.get(exc.status, 1000))


def model_error(exc: ModelStepError, request_id: str) -> ApiError:
    """The 500 of a model that failed in its step: it names the model, the log has the cause."""
    return internal_error(exc, request_id, "model_error", f"model {exc.model!r} failed in its step")


def parse_solve(state: ServerState, raw: Any) -> tuple[SolveRequest, Served, SolveJob]:
    """Validate a /v1/solve request and encode it into its job. Run off the event loop: a model's
    `encode` may take long (lp-gnn's HiGHS reference), and the loop must go on serving the others."""
    req = validate(SolveRequest, raw)
    served = state.get(req.model)
    return req, served, state.build(served, req)


def attach_stream(state: ServerState, req: SolveRequest, served: Served, job: SolveJob) -> EventStream:
    """The event stream of a streaming request, attached to its job."""
    ret = req.return_
    encode = iterate_encoder(served.model, job.ctx, ret.state, ret.output, ret.encoding)
    keep_y = ret.state or ret.output
    stream = EventStream(asyncio.get_running_loop(), state.settings.stream_buffer, encode, keep_y)
    stream.attach(job)
    return stream


def sse_response(state: ServerState, req: SolveRequest, served: Served, job: SolveJob) -> StreamingResponse:
    """POST /v1/solve with "stream": true: one `data:` line per event; leaving cancels the solve."""
    stream = attach_stream(state, req, served, job)
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


CONTROL_HELP = "expected {'type': 'cancel'} or {'type': 'extend', 'max_iters': N} as a JSON text message"


async def receive_text(ws: WebSocket) -> str:
    """The next text message; a binary one is a 422 ApiError, a disconnect WebSocketDisconnect."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise ApiError(422, "invalid_message", f"a binary message; {CONTROL_HELP}")
    return message["text"]


class _Control:
    """What the client sends while its solve runs: cancel at once, queue extends. Any other message
    gets an error event and changes nothing: the stream stays under the client's control."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.job: SolveJob | None = None
        self.extends: asyncio.Queue[ExtendMessage | None] = asyncio.Queue()

    async def read(self) -> None:
        """Read control messages until the client leaves, which cancels the solve."""
        try:
            while True:
                try:
                    self._act(parse_json(await receive_text(self.ws)))
                except ApiError as exc:
                    await self.ws.send_json(error_event(exc.type, exc.message, exc.field))
        except (WebSocketDisconnect, RuntimeError):
            if self.job is not None:
                self.job.cancelled = True
            self.extends.put_nowait(None)

    def _act(self, msg: Any) -> None:
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "cancel":
            if self.job is not None:
                self.job.cancelled = True
            self.extends.put_nowait(None)
        elif kind == "extend":
            self.extends.put_nowait(validate(ExtendMessage, msg))
        else:
            raise ApiError(422, "invalid_message", CONTROL_HELP, "type")


async def handshake(ws: WebSocket, state: ServerState) -> bool:
    """Accept a stream's WebSocket where its origin is allowed; else refuse it before the handshake
    (the client sees 403)."""
    if not auth.same_origin_or_allowed(ws.headers, state.settings.allowed_origins):
        await ws.close(code=1008)
        return False
    await ws.accept()
    return True


def admit(ws: WebSocket, state: ServerState) -> None:
    """A stream's checks once accepted: its key (the header, or `?token=` for browsers), and no new
    streams while the server drains; an ApiError otherwise."""
    token = ws.headers.get("authorization") or (
        f"Bearer {ws.query_params['token']}" if "token" in ws.query_params else None
    )
    auth.check(ws.url.path, token, state.settings.api_key)
    if ws.app.state.drain.draining:
        raise refusal()


@router.websocket("/v1/solve/stream")
async def solve_stream(ws: WebSocket) -> None:
    """Stream one solve's iterates; the client may cancel, and extend a solve stopped on budget."""
    state: ServerState = ws.app.state.eq
    if not await handshake(ws, state):
        return
    try:
        admit(ws, state)
        text = await receive_text(ws)
        req, served, job = await run_in_threadpool(lambda: parse_solve(state, parse_json(text)))
        stream = attach_stream(state, req, served, job)
    except ApiError as exc:
        await refuse(ws, exc)
        return
    except WebSocketDisconnect:
        return
    gauge = state.metrics.stream_clients.labels(served.meta.name)
    gauge.inc()
    control = _Control(ws)
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
        result: SolveResult | None = None if not fut.done() or fut.exception() else fut.result()
        if result is None or result.resume is None:
            return
        ext = await ws.app.state.drain.until(control.extends.get(), state.settings.stream_grace_s)
        if ext is None:
            return
        if result.resume.iterations + ext.max_iters > state.settings.max_iters_cap:
            cap = state.settings.max_iters_cap
            await ws.send_json(error_event("over_cap", f"extending past the server's cap {cap}", "max_iters"))
            return
        job = extend_job(job, result, ext.max_iters)
        stream.reset()
        stream.attach(job)
