"""A solve's events on their way from the worker thread to one streaming client.

The worker never waits for the client: each stream holds a small bounded buffer, and when it is
full the oldest buffered iterate is dropped (the result never is) and counted.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import torch

from models.base import ImplicitModel
from service.engine import SolveJob


def finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN or infinity: such residuals travel as null."""
    return x if x is not None and math.isfinite(x) else None


class EventStream:
    """Bounded, thread-safe buffer of iterate events plus one final event."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._items: deque[dict[str, Any]] = deque()
        self._capacity = max(1, capacity)
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._signalled = False
        self._final: dict[str, Any] | None = None
        self.dropped = 0

    def push(self, event: dict[str, Any]) -> None:
        """Add an iterate (worker thread); drop the oldest buffered one when full."""
        with self._lock:
            if len(self._items) >= self._capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(event)
            self._signal_locked()

    def finish(self, event: dict[str, Any]) -> None:
        """Set the final event, which is never dropped (any thread)."""
        with self._lock:
            self._final = event
            self._signal_locked()

    def _signal_locked(self) -> None:
        if not self._signalled:
            self._signalled = True
            self._loop.call_soon_threadsafe(self._wake.set)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every buffered iterate in order, then the final event."""
        while True:
            await self._wake.wait()
            with self._lock:
                self._wake.clear()
                self._signalled = False
                items = list(self._items)
                self._items.clear()
                final = self._final
            for item in items:
                yield item
            if final is not None:
                yield final
                return

    def reset(self) -> None:
        """Ready the stream for the next leg of an extended solve."""
        with self._lock:
            self._final = None


def iterate_hook(stream: EventStream, model: ImplicitModel, job: SolveJob, state: bool, output: bool):
    """The engine hook that turns iterate t of `job` into a stream event."""

    def hook(t: int, residual: float, rel_residual: float, y: torch.Tensor) -> None:
        event: dict[str, Any] = {
            "type": "iterate",
            "t": t,
            "residual": finite_or_none(residual),
            "rel_residual": finite_or_none(rel_residual),
        }
        if state:
            event["y"] = y[0].float().tolist()
        if output and math.isfinite(residual):
            event["output"] = model.decode(y, job.ctx)
        stream.push(event)

    return hook
