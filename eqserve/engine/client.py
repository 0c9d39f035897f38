"""The Engine interface in a front process, over the channel to an engine process (engine/process.py).

Generic over the engine: anything with the Engine interface whose jobs pickle once their future and
watch are taken off (`wire.portable`). The front keeps each job: its future is answered here when the
engine process answers, its watch gets the pushes the engine process's `MirrorWatch` forwards, and
observer events are replayed on the front's observer with the front's job. A watch whose schedule
changes while it runs (a stream throttling or muting itself) sets its `on_period` hook, which sends the
new period. Cancellation is a flag the routes set on the job: the I/O thread looks for newly
cancelled jobs while any are in flight and tells the engine process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from typing import Any

import zmq

from eqserve.engine import wire
from eqserve.engine.errors import EngineClosed, EngineDied, ModelStepError, QueueFull
from eqserve.engine.observer import EngineObserver, NullObserver
from eqserve.engine.outbox import Outbox
from eqserve.service.throughput import Throughput

log = logging.getLogger(__name__)

CANCEL_SCAN_S = 0.01
"""How often the I/O thread looks for cancelled jobs while jobs are in flight."""

IDLE_POLL_S = 0.1
"""The I/O thread's longest sleep."""


class EngineClient:
    """One engine process as this front sees it: submit jobs, read its counters."""

    def __init__(self, name: str, address: str, max_queue: int, follow: bool = False) -> None:
        self.name, self.address, self.max_queue = name, address, max_queue
        self.follow = follow
        """Whether this front follows an engine process another front supervises: it notices the
        process gone by its pid, answers its jobs, and says hello again until the next one answers."""
        self.observer: EngineObserver = NullObserver()
        self.throughput = Throughput()
        self._jobs: dict[str, Any] = {}
        self._unadmitted: set[str] = set()
        self._cancel_sent: set[str] = set()
        self._outbox = Outbox()
        self._closed = False
        self._lost = False
        self._stats: tuple = (wire.STATS, 0, 0, 0, 0, 0.0, False, 0)
        self._stats_at = 0.0
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._quit = False
        self._thread: threading.Thread | None = None

    # -- the Engine interface ------------------------------------------------------------

    def start(self) -> None:
        """Connect and say hello; `ready` is set when the engine process first answers."""
        self._outbox.put(None, (wire.HELLO,))
        self._thread = threading.Thread(target=self._io, name=f"engine-client-{self.name}", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Whether the engine process answered within `timeout` s."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the engine process to stop (its waiting and running jobs are answered cancelled) and wait
        for its answers; then close the channel."""
        if not self._lost:
            self._outbox.put(None, (wire.STOP,))
            self._stopped.wait(timeout)
        self._quit = True
        if self._thread is not None:
            self._thread.join(timeout=IDLE_POLL_S * 5)

    def close(self) -> None:
        """Take no new jobs; those accepted go on to their answers."""
        self._closed = True
        self._outbox.put(None, (wire.CLOSE,))

    def submit(self, job: Any) -> Future:
        """Send `job` to the engine process; QueueFull at once when as many jobs wait unadmitted as its
        queue holds, EngineClosed once closed, EngineDied once the process is gone."""
        if self._lost or (self.follow and not self._ready.is_set()):
            raise EngineDied(self.name, started=False)
        if self._closed:
            raise EngineClosed(self.name)
        if len(self._unadmitted) >= self.max_queue:
            raise QueueFull(self.name, self.throughput.retry_after(len(self._unadmitted)))
        watch = getattr(job, "watch", None)
        if watch is not None and hasattr(watch, "on_period"):
            watch.on_period = lambda period, job_id=job.id: self._outbox.put(
                None, (wire.SCHEDULE, job_id, period)
            )
        self._jobs[job.id] = job
        self._unadmitted.add(job.id)
        due = wire.schedule(watch) if watch is not None else None
        message = (
            wire.SUBMIT,
            job.id,
            wire.portable(job),
            watch is not None,
            due,
            getattr(watch, "wants_y", False),
        )
        self._outbox.put(None, message)
        return job.future

    @property
    def alive(self) -> bool:
        """Whether the engine process's worker runs, as it last said."""
        return self._ready.is_set() and not self._lost and bool(self._stats[6])

    @property
    def busy_s(self) -> float:
        """Seconds the worker has spent in its current turn, as it last said, plus the time since."""
        busy = self._stats[5]
        return busy + time.monotonic() - self._stats_at if busy else 0.0

    @property
    def steps(self) -> int:
        """Batch steps run so far."""
        return self._stats[2]

    @property
    def waiting(self) -> int:
        """Requests accepted but not yet in the batch."""
        return self._stats[3]

    @property
    def running(self) -> int:
        """Requests in the batch."""
        return self._stats[4]

    @property
    def idle(self) -> bool:
        """Whether none of this front's jobs is in flight."""
        return not self._jobs

    @property
    def last_run_rows(self) -> int:
        """Rows the last run computed."""
        return self._stats[7]

    @property
    def pid(self) -> int:
        """The engine process's id (0 before it answered)."""
        return self._stats[1]

    def lost(self) -> None:
        """The engine process is gone: answer every job in flight — EngineDied for those that had not
        started (a client may retry them at once), a model error for those that had — and stop the
        I/O thread."""
        self._lost = True
        self._quit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=IDLE_POLL_S * 5)
        self._fail_in_flight()

    def _fail_in_flight(self) -> None:
        jobs, self._jobs = self._jobs, {}
        for job_id, job in jobs.items():
            started = job_id not in self._unadmitted
            error = EngineDied(self.name, started)
            if not job.future.done():
                job.future.set_exception(ModelStepError(self.name, error) if started else error)
                self.observer.lost(job, started)
        self._unadmitted.clear()

    # -- the I/O thread -------------------------------------------------------------------

    def _io(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._outbox.fd, zmq.POLLIN)
        last_scan = last_hello = 0.0
        try:
            while not self._quit:
                busy = bool(self._jobs)
                poller.poll((CANCEL_SCAN_S if busy else IDLE_POLL_S) * 1e3)
                out = self._outbox.take()
                if out:
                    sock.send(wire.dumps([m for _, m in out]))
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    for message in wire.loads(frame):
                        self._handle(message)
                now = time.monotonic()
                if busy and now - last_scan >= CANCEL_SCAN_S:
                    last_scan = now
                    self._scan_cancelled()
                if self.follow and now - last_hello >= IDLE_POLL_S:
                    last_hello = now
                    self._follow()
        finally:
            sock.close()
            self._outbox.close()

    def _follow(self) -> None:
        """While the engine process answers, check it lives; once it is gone, answer its jobs and say
        hello until its successor answers (at the same address)."""
        pid = self.pid
        if self._ready.is_set():
            try:
                os.kill(pid, 0)
                return
            except ProcessLookupError:
                self._ready.clear()
                self._fail_in_flight()
        self._outbox.put(None, (wire.HELLO,))

    def _scan_cancelled(self) -> None:
        cancelled = [i for i, job in list(self._jobs.items()) if job.cancelled and i not in self._cancel_sent]
        self._cancel_sent.update(cancelled)
        for job_id in cancelled:
            self._outbox.put(None, (wire.CANCEL, job_id))

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == wire.PUSH:
            job = self._jobs.get(message[1])
            if job is not None and job.watch is not None:
                job.watch.push(*message[2])
        elif kind == wire.OBSERVE:
            _, event, job_id, args = message
            if event == "ran":
                self.observer.ran(*args)
                return
            job = self._jobs.get(job_id)
            if job is None:
                return
            if event == "admitted":
                self._unadmitted.discard(job_id)
            getattr(self.observer, event)(job, *args)
        elif kind == wire.STATS:
            self._stats, self._stats_at = message, time.monotonic()
            self._ready.set()
        elif kind in (wire.DONE, wire.FAILED):
            job = self._jobs.pop(message[1], None)
            if job is None:
                return
            self._unadmitted.discard(job.id)
            self._cancel_sent.discard(job.id)
            if job.future.done():  # cancelled by its waiter
                return
            if kind == wire.DONE:
                self.throughput.record(time.monotonic())
                job.future.set_result(message[2])
            else:
                job.future.set_exception(message[2])
        elif kind == wire.STOPPED:
            self._stopped.set()
