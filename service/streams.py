"""A solve's events on their way from the worker thread to one streaming client.

The worker's side is one O(1) call per iterate: it appends (t, residual, rel_residual, y) to a
bounded ring (the oldest buffered iterate falls out when it is full) and wakes the event loop
only when the stream's consumer is asleep waiting for it. Everything else happens on the event
loop, for the events actually sent: decoding, `tolist`, JSON. The consumer sends at most one
batch per `BATCH_S` and at most `RATE` iterates per second after a burst of `capacity`, because
every event sent costs the worker GIL time; iterates it skips count as dropped, like those that
fell out of the ring. The final event is never dropped.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch

from models.base import Ctx, ImplicitModel

RATE = 5500.0
"""Iterate events per second one stream sends at most, once its burst allowance is spent."""

BATCH_S = 0.005
"""Shortest time between two batches of one stream: bounds the loop's wake-ups per stream."""

Iterate = tuple[int, float, float, torch.Tensor | None]
"""What the worker hands over per iterate: (t, residual, rel_residual, y as a (1, n) view or None)."""

Encoder = Callable[[Iterate], str]


def finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN or infinity: such residuals travel as null."""
    return x if x is not None and math.isfinite(x) else None


def _number(x: float) -> str:
    """A float as JSON writes it; NaN and infinity as null."""
    return repr(x) if math.isfinite(x) else "null"


def iterate_encoder(model: ImplicitModel, ctx: Ctx, state: bool, output: bool) -> Encoder:
    """The JSON text of an iterate event, with `y` and the decoded `output` when asked for.

    Written by hand rather than by json.dumps: it runs for every event sent, holding the GIL.
    """

    def encode(item: Iterate) -> str:
        t, residual, rel_residual, y = item
        text = f'{{"type": "iterate", "t": {t}, "residual": {_number(residual)}, '
        text += f'"rel_residual": {_number(rel_residual)}'
        if y is not None:
            with torch.inference_mode():
                if state:
                    text += f', "y": {json.dumps(y[0].float().tolist())}'
                if output and math.isfinite(residual):
                    text += f', "output": {json.dumps(model.decode(y, ctx))}'
        return text + "}"

    return encode


class EventStream:
    """Bounded ring of iterates filled by the worker, drained by one paced consumer on the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        capacity: int,
        encode: Encoder,
        keep_y: bool = False,
        rate: float = RATE,
        batch_s: float = BATCH_S,
    ) -> None:
        self._loop = loop
        self._items: deque[Iterate] = deque(maxlen=max(1, capacity))
        self._encode, self._keep_y = encode, keep_y
        self._rate, self._batch_s = rate, batch_s
        self._wake = asyncio.Event()
        self._waiting = False
        self._final: dict[str, Any] | None = None
        self.pushed = 0
        """Iterates the worker handed over, over all legs."""
        self.sent = 0
        """Iterate events the consumer yielded, over all legs."""
        self.wakeups = 0
        """Times the worker woke the event loop."""

    def push(self, t: int, residual: float, rel_residual: float, y: torch.Tensor) -> None:
        """The engine's iterate hook (worker thread): buffer, and wake the consumer if it sleeps.

        y is kept only when the events carry it or its decoding: a kept view holds on to the whole
        batch state tensor of its tick.
        """
        self._items.append((t, residual, rel_residual, y if self._keep_y else None))
        self.pushed += 1
        if self._waiting:
            self._waiting = False
            self.wakeups += 1
            self._loop.call_soon_threadsafe(self._wake.set)

    def finish(self, event: dict[str, Any]) -> None:
        """Set the final event (loop thread); a result event gets the stream's `dropped` when sent."""
        self._final = event
        self._wake.set()

    @property
    def dropped(self) -> int:
        """Iterates handed over but not sent and no longer buffered."""
        return self.pushed - self.sent - len(self._items)

    async def _ready(self) -> None:
        """Return once an iterate is buffered or the final event is set."""
        while not self._items and self._final is None:
            self._wake.clear()
            self._waiting = True
            if not self._items and self._final is None:  # pushed before the flag was up: no wake-up
                await self._wake.wait()
            self._waiting = False

    async def events(self) -> AsyncIterator[str]:
        """JSON text of the iterates this leg sends, in order, then of the final event."""
        burst = float(self._items.maxlen or 1)
        tokens, last = burst, self._loop.time()
        while True:
            await self._ready()
            final = self._final  # read first: once it is set, every iterate of the leg is buffered
            n = len(self._items)
            take = n
            if final is None:
                now = self._loop.time()
                tokens = min(burst, tokens + (now - last) * self._rate)
                last = now
                take = min(n, int(tokens))
                tokens -= take
            if take:
                for _ in range(n - take):  # the newest are sent, the older ones count as dropped
                    self._items.popleft()
            batch = [self._items.popleft() for _ in range(take)]
            for item in batch:
                self.sent += 1
                yield self._encode(item)
            if final is not None:
                if final["type"] == "result":
                    final = final | {"dropped": self.dropped}
                yield json.dumps(final)
                return
            await asyncio.sleep(self._batch_s)

    def reset(self) -> None:
        """Ready the stream for the next leg of an extended solve."""
        self._final = None
