"""A solve's events on their way from the worker thread to one streaming client.

The worker's side is one O(1) call per iterate: it appends (t, residual, rel_residual, y) to a
bounded ring (the oldest buffered iterate falls out when it is full) and wakes the event loop
only when the stream's consumer is asleep waiting for it. Everything else happens on the event
loop, for the events actually sent: decoding, `tolist`, JSON. The consumer takes the events a batch
at a time (a batch goes out in one write: service/ws_protocol.py), at most one batch per `BATCH_S`
and at most `RATE` iterates per second after a burst of `capacity`, because every event sent costs
the worker GIL time; iterates it skips count as dropped, like those that fell out of the ring. The
final event is never dropped.

The stream is its job's watch (`eqserve.engine.job.Watch`): it tells the engine which iterate it
wants next, every `every`·`stride`-th, so the worker is spared the iterates that would only be
dropped and runs that many steps without the host. While a solve runs faster than `RATE` the stream
raises its `stride` so that the worker hands over about `STRIDE_MARGIN × RATE` iterates per second,
and while the client reads nothing (the ring is full and no batch went out for `STALL_S`) it mutes
itself until the client reads again. Skipped iterates count as dropped too.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import torch

from eqserve.engine.job import NEVER
from eqserve.models.base import Ctx, ImplicitModel
from eqserve.service.arrays import Encoding, encode_state

if TYPE_CHECKING:
    from eqserve.engine.job import SolveJob

RATE = 5500.0
"""Iterate events per second one stream sends at most, once its burst allowance is spent."""

BATCH_S = 0.005
"""Shortest time between two batches of one stream: bounds the loop's wake-ups per stream."""

STRIDE_MARGIN = 1.25
"""A throttled job still hands over this many times `RATE` iterates per second."""

STALL_S = 0.05
"""A full ring with no batch sent for this long means the client stopped reading: the job is muted."""

MUTED = NEVER
"""The stride of a muted stream: only its last iterate reaches it."""

Iterate = tuple[int, float, float, torch.Tensor | None]
"""What the worker hands over per iterate: (t, residual, rel_residual, y as a (1, *state_shape) view
or None)."""

Encoder = Callable[[Iterate], str]


def finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN or infinity: such residuals travel as null."""
    return x if x is not None and math.isfinite(x) else None


def _number(x: float) -> str:
    """A float as JSON writes it; NaN and infinity as null."""
    return repr(x) if math.isfinite(x) else "null"


def iterate_encoder(
    model: ImplicitModel, ctx: Ctx, state: bool, output: bool, encoding: Encoding = "list"
) -> Encoder:
    """The JSON text of an iterate event, with `y` (in `encoding`) and the decoded `output` when asked for.

    Written by hand rather than by json.dumps: it runs for every event sent, holding the GIL.
    """

    def encode(item: Iterate) -> str:
        t, residual, rel_residual, y = item
        text = f'{{"type": "iterate", "t": {t}, "residual": {_number(residual)}, '
        text += f'"rel_residual": {_number(rel_residual)}'
        if y is not None:
            with torch.inference_mode():
                if state:
                    text += f', "y": {json.dumps(encode_state(y, encoding))}'
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
        self._stride = 1
        self._every = self._period = 1
        """The attached job's `every`, and every·stride: the iterates the stream wants."""
        self.on_period: Callable[[int], None] | None = None
        """Told each new period: an engine in another process decides which iterates are due from it."""
        self._last_t = 0
        self._progress = time.monotonic()
        self.skipped = 0
        """Iterates the worker did not hand over because the stream throttled or muted its job."""
        self.pushed = 0
        """Iterates the worker handed over, over all legs."""
        self.sent = 0
        """Iterate events the consumer yielded, over all legs."""
        self.wakeups = 0
        """Times the worker woke the event loop."""

    def attach(self, job: SolveJob) -> None:
        """Make this stream `job`'s watch (each leg of an extended solve is a new job)."""
        job.watch = self
        self._every, self._period = job.every, job.every * self._stride

    @property
    def wants_y(self) -> bool:
        """Whether the events carry the state or its decoding."""
        return self._keep_y

    @property
    def muted(self) -> bool:
        """Whether the stream wants no iterate but the last (its client reads nothing)."""
        return self._period >= NEVER

    def next_due(self, t: int) -> int:
        """The next multiple of every·stride after t (NEVER while muted)."""
        period = self._period
        return NEVER if period >= NEVER else (t // period + 1) * period

    @property
    def period(self) -> int:
        """Every how many iterations the stream wants an iterate (NEVER while muted)."""
        return self._period

    def _throttle(self, stride: int) -> None:
        period = NEVER if stride >= NEVER else self._every * stride
        if period != self._period:
            self._period = period
            if self.on_period is not None:
                self.on_period(period)

    def push(self, t: int, residual: float, rel_residual: float, y: torch.Tensor | None) -> None:
        """The engine's iterate hook (worker thread): buffer, and wake the consumer if it sleeps.

        y is kept only when the events carry it or its decoding: a kept view holds on to the whole
        batch state tensor of its tick.
        """
        every = self._every
        self.skipped += max(0, (t - 1) // every - self._last_t // every)  # multiples of `every` between
        self._last_t = t
        if len(self._items) == self._items.maxlen and time.monotonic() - self._progress > STALL_S:
            self._throttle(MUTED)
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
        """Iterates not sent: skipped by the worker, or handed over and no longer buffered."""
        return self.pushed + self.skipped - self.sent - len(self._items)

    def _pace(self, rate: float) -> None:
        """Set the job's stride for a solve running at `rate` iterations/s (and unmute it)."""
        self._stride = max(1, int(rate / (self._every * STRIDE_MARGIN * self._rate)))
        self._throttle(self._stride)

    async def _ready(self) -> None:
        """Return once an iterate is buffered or the final event is set."""
        if not self._items:
            self._throttle(self._stride)  # a muted job stays muted only while iterates wait unsent
        while not self._items and self._final is None:
            self._wake.clear()
            self._waiting = True
            if not self._items and self._final is None:  # pushed before the flag was up: no wake-up
                await self._wake.wait()
            self._waiting = False

    async def batches(self) -> AsyncIterator[list[str]]:
        """JSON texts of the iterates this leg sends, in order, a batch at a time; the final event
        ends the last batch."""
        burst = float(self._items.maxlen or 1)
        seen_t, last = self._last_t, time.monotonic()
        tokens, seen_at = burst, last
        while True:
            await self._ready()
            final = self._final  # read first: once it is set, every iterate of the leg is buffered
            now = time.monotonic()
            n = len(self._items)
            take = n
            if final is None:
                tokens = min(burst, tokens + (now - last) * self._rate)
                last = now
                take = min(n, int(tokens))
                tokens -= take
            if take:
                for _ in range(n - take):  # the newest are sent, the older ones count as dropped
                    self._items.popleft()
            batch = [self._encode(self._items.popleft()) for _ in range(take)]
            self.sent += take
            if now - seen_at >= 10 * self._batch_s:  # the solve's speed, over ~50 ms
                self._pace((self._last_t - seen_t) / (now - seen_at))
                seen_t, seen_at = self._last_t, now
            if final is not None:
                if final["type"] == "result":
                    final = final | {"dropped": self.dropped}
                yield [*batch, json.dumps(final)]
                return
            if batch:
                yield batch
            self._progress = time.monotonic()  # the batch went out: the client reads
            await asyncio.sleep(self._batch_s)

    def reset(self) -> None:
        """Ready the stream for the next leg of an extended solve."""
        self._final = None
