"""Graceful drain: on SIGTERM the server stops taking solves, lets those in flight finish, then exits.

The drain begins at once: `/readyz` answers 503 (the load balancer takes the server out), new solves
503 with Retry-After, a stream waiting for an `extend` ends. Solves in flight, streams included,
finish and are answered; those still running after `--drain-timeout-s` are stopped and answered
`cancelled`. Only then does uvicorn close the listener and the connections, so that no client is cut
off without its answer, and the process exits 0. A second signal skips the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
from types import FrameType
from typing import TypeVar

import uvicorn
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from eqserve.service.errors import ApiError
from eqserve.service.state import ServerState

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_S = 0.05
"""How often the drain looks whether the solves in flight have all been answered."""

ANSWER_S = 5.0
"""After the cancellation, how long the cancelled solves' answers may take to go out."""

RETRY_AFTER_S = 5
"""Retry-After of a solve refused while draining: by then another replica should take it."""


SOLVE_PATHS = ("/v1/solve", "/v1/analyze")
"""The /v1 routes whose POST starts solves."""


def is_solve(scope: Scope) -> bool:
    """Whether a request starts solves: POST /v1/solve (SSE included), the stream, a v2 infer, and
    POST /v1/analyze (whose rows are solves)."""
    path = scope["path"]
    if scope["type"] == "websocket":
        return path == "/v1/solve/stream"
    return (
        scope["type"] == "http"
        and scope["method"] == "POST"
        and (path in SOLVE_PATHS or (path.startswith("/v2/models/") and path.endswith("/infer")))
    )


def refusal() -> ApiError:
    """The 503 of a solve that arrives while the server drains."""
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    return ApiError(503, "draining", "the server is shutting down; retry on another replica", headers=retry)


class Drain:
    """Whether the server drains, and how many solve requests are still being handled."""

    def __init__(self) -> None:
        self.active = 0
        self._started = asyncio.Event()

    @property
    def draining(self) -> bool:
        """Whether the drain has begun."""
        return self._started.is_set()

    async def until(self, aw: Awaitable[T], timeout: float) -> T | None:
        """`aw`'s result, or None once `timeout` s have passed or the drain has begun."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._started.wait())
        try:
            await asyncio.wait({task, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            return task.result() if task.done() else None
        finally:
            task.cancel()
            stop.cancel()

    def begin(self) -> None:
        """From now on, refuse new solves and report not ready."""
        self._started.set()

    async def run(self, state: ServerState, timeout: float) -> None:
        """Drain: refuse new solves, wait up to `timeout` s for those in flight, cancel the rest."""
        self.begin()
        log.info("draining: %d solve request(s) in flight, up to %.0f s", self.active, timeout)
        if not await self._settled(timeout):
            log.warning("drain timeout: cancelling %d solve request(s)", self.active)
            await run_in_threadpool(state.stop)  # every waiting or running solve ends `cancelled`
            await self._settled(ANSWER_S)

    async def _settled(self, timeout: float) -> bool:
        """Whether every solve request is answered within `timeout` s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.active:
                    await asyncio.sleep(POLL_S)
        return not self.active


class DrainGate:
    """ASGI middleware: counts the solve requests being handled, and refuses new HTTP ones with 503
    while the server drains (the stream route refuses its own: it answers in events)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not is_solve(scope):
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["type"] == "http":
            await refusal().response(scope["path"])(scope, receive, send)
            return
        self.drain.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.active -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM or SIGINT drains the app before it exits (with status 0:
    the drain was asked for and done); a second one exits at once, as uvicorn does."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task | None = None

    async def serve(self, sockets: list | None = None) -> None:
        """Serve, remembering the loop that the signal handler hands the drain to."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Begin the drain on the first signal; defer to uvicorn on any later one."""
        if self._loop is None or self._draining is not None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        self.config.app.state.drain.begin()  # at once: a request already on its way sees it
        self._draining = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        app = self.config.app
        await app.state.drain.run(app.state.eq, app.state.eq.settings.drain_timeout_s)
        self.should_exit = True
