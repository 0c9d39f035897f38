"""The outside of an engine: its worker thread, fed by `submit` from any thread through a scheduler."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

from eqserve.engine.scheduler import Scheduler


class Worker:
    """What the server sees of an engine, the fixed-point one or a looped LM's token engine: its thread,
    `submit`, and how busy it is. A subclass sets `name` and `scheduler` and runs its turns in `_loop`,
    marking each turn's start in `_busy_since`."""

    name: str
    scheduler: Scheduler

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker; requests still waiting or running end as cancelled."""
        self.scheduler.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def close(self) -> None:
        """Take no new requests (`submit` raises EngineClosed); those accepted go on to their answers."""
        self.scheduler.close()

    def submit(self, job: Any) -> Future:
        """Queue a job; QueueFull at once when the waiting queue is at its bound, EngineClosed once the
        engine is closed."""
        self.scheduler.submit(job)
        return job.future

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy_s(self) -> float:
        """Seconds the worker has spent in its current turn (0 while it waits): a model whose step
        hangs shows here, while the thread itself is still alive."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def steps(self) -> int:
        """Batch steps run so far."""
        return self.scheduler.steps

    @property
    def waiting(self) -> int:
        """Requests accepted but not yet in the batch."""
        return self.scheduler.waiting

    @property
    def running(self) -> int:
        """Requests in the batch."""
        return self.scheduler.running

    @property
    def idle(self) -> bool:
        """Whether no request is waiting or running."""
        return not self.waiting and not self.running
