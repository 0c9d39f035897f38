"""How fast a model's engine finishes solves, for the Retry-After of a refused request.

A full queue empties at the rate solves finish, so a client told to come back after `waiting / rate`
seconds finds room. The rate is measured over the last `WINDOW` finishes up to now: a pause since the
last one lowers it, as it should, and one slow solve among many fast ones barely moves it.
"""

from __future__ import annotations

import math
import time
from collections import deque

WINDOW = 64
"""Finishes the rate is measured over."""

RETRY_CAP_S = 60
"""The longest Retry-After advised: past it a client learns more by asking again."""


class Throughput:
    """Finish times of an engine's recent solves (appended by its worker, read by the event loop)."""

    def __init__(self) -> None:
        self._finished: deque[float] = deque(maxlen=WINDOW)

    def record(self, now: float) -> None:
        """A solve finished at `now` (time.monotonic)."""
        self._finished.append(now)

    def retry_after(self, waiting: int) -> int:
        """Whole seconds until `waiting` queued requests have left the queue at the measured rate
        (1 before any solve has finished: nothing is known yet)."""
        finished = list(self._finished)
        if not finished:
            return 1
        rate = len(finished) / max(time.monotonic() - finished[0], 1e-3)
        return min(RETRY_CAP_S, max(1, math.ceil(waiting / rate)))
