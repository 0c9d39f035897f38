"""The loop of an engine process: one served model's engine, fed by front processes over ZeroMQ.

The engine runs on its own worker thread as it would in the front; this process's main thread does
the I/O. It binds a ROUTER socket (each front connects a DEALER and says hello), turns front messages
into engine calls (submit, cancel, a watch's new schedule, close, stop), and sends back what the engine
produces — answers, iterates a watch wants, observer events — batched: the worker appends to an outbox
and wakes the I/O thread through a pipe only when it sleeps, and everything appended meanwhile goes out
in one frame per front. The engine's counters (steps, waiting, running, busy) ride along on every
frame and on a heartbeat, so the front reads them without asking.

Started with `spawn` (torch and threads do not survive a fork); `factory` builds the engine here,
loading its model, so nothing unpicklable crosses.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import zmq

from eqserve.engine import wire
from eqserve.engine.outbox import Outbox

log = logging.getLogger(__name__)

PUSH_GAP_S = 0.005
"""Iterates pushed within this long of the last wake-up of the I/O thread wait for the next: a stream
at every iterate of a fast model then costs the worker a few wake-ups of the I/O thread (each a
contention for the GIL) per stream batch, not one per step; a stream sends its events in batches
this far apart anyway (`service/streams.py` BATCH_S)."""

ANSWER_GAP_S = 0.002
"""Answers given within this long of the last wake-up of the I/O thread wait for the next: under load
the answers of a run go out together, and the worker pays fewer GIL hand-offs for them."""

HEARTBEAT_S = 0.1
"""Longest gap between two frames to a front: its gauges stay this fresh, and the process notices an
orphaning (its parent gone) this fast."""


class ForwardObserver:
    """The engine's observer: each event goes to the front that owns the job (`ran` to the primary),
    with the next message that wakes the I/O thread or its heartbeat (metrics may lag a heartbeat; the
    worker is spared a wake-up of the I/O thread per run)."""

    def __init__(self, outbox: Outbox, owner: dict[str, bytes]) -> None:
        self._outbox, self._owner = outbox, owner

    def _send(self, kind: str, job: Any, *args: Any, wake: bool = False) -> None:
        self._outbox.put(
            self._owner.get(job.id), (wire.OBSERVE, kind, job.id, args), 0.0 if wake else math.inf
        )

    def admitted(self, job: Any, wait_s: float) -> None:
        """Forwarded at once: should the process die, the front tells the solves that had started
        from those that had not."""
        self._send("admitted", job, wait_s, wake=True)

    def first_iterate(self, job: Any, since_submit_s: float) -> None:
        """Forwarded."""
        self._send("first_iterate", job, since_submit_s)

    def ran(self, seconds: float, steps: int, rows: int, row_steps: int) -> None:
        """Forwarded to the primary front: one front counts the engine's work."""
        self._outbox.put(None, (wire.OBSERVE, "ran", None, (seconds, steps, rows, row_steps)), math.inf)

    def finished(self, job: Any, result: Any) -> None:
        """Forwarded."""
        self._send("finished", job, result)

    def token(self, job: Any, iterations: int, by_rule: bool) -> None:
        """Forwarded."""
        self._send("token", job, iterations, by_rule)


class EngineHost:
    """Runs one engine and answers the fronts connected to it."""

    def __init__(self, address: str, factory: Callable[[], Any]) -> None:
        self.engine = factory()
        self.outbox = Outbox()
        self.owner: dict[str, bytes] = {}
        """Job id → the front that submitted it."""
        self.jobs: dict[str, Any] = {}
        self.fronts: list[bytes] = []
        """Connected fronts, the primary (first to say hello) first."""
        self.engine.observer = ForwardObserver(self.outbox, self.owner)
        self._ctx = zmq.Context()
        self.sock = self._ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.bind(address)
        self._parent = os.getppid()

    def serve(self) -> None:
        """Start the engine and do its I/O until a front says stop or the parent process is gone."""
        self.engine.start()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.outbox.fd, zmq.POLLIN)
        last_beat = 0.0
        stopping = False
        while not stopping:
            poller.poll(min(HEARTBEAT_S, self.outbox.late) * 1e3)
            while True:
                try:
                    front, frame = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                for message in wire.loads(frame):
                    stopping |= self._handle(front, message)
            now = time.monotonic()
            beat = now - last_beat >= HEARTBEAT_S
            self._flush(beat)
            if beat:
                last_beat = now
                if os.getppid() != self._parent:
                    log.warning("engine process of %s: its parent is gone, exiting", self.engine.name)
                    self.engine.stop()
                    return
        self.engine.stop()  # answers every job still waiting or running (cancelled)
        self._flush(True, (wire.STOPPED,))
        self.sock.close()

    def _handle(self, front: bytes, message: tuple) -> bool:
        """Act on one front message; True when it says stop."""
        kind = message[0]
        if kind == wire.SUBMIT:
            self._submit(front, *message[2:])
        elif kind == wire.CANCEL:
            job = self.jobs.get(message[1])
            if job is not None:
                job.cancelled = True
        elif kind == wire.SCHEDULE:
            job = self.jobs.get(message[1])
            if job is not None and job.watch is not None:
                job.watch.period = message[2]
        elif kind == wire.HELLO:
            if front not in self.fronts:
                self.fronts.append(front)
        elif kind == wire.CLOSE:
            self.engine.close()
        elif kind == wire.STOP:
            return True
        return False

    def _submit(self, front: bytes, job: Any, watched: bool, due: Any, wants_y: bool) -> None:
        job.future = Future()
        if watched:
            job.watch = wire.MirrorWatch(
                lambda m: self.outbox.put(front, m, PUSH_GAP_S), job.id, due, wants_y
            )
        self.owner[job.id] = front
        self.jobs[job.id] = job
        job.future.add_done_callback(lambda f: self._answer(job.id, f))
        try:
            self.engine.submit(job)
        except Exception as exc:  # a full queue, a closed engine: the front raises it to its caller
            job.future.set_exception(exc)

    def _answer(self, job_id: str, fut: Future) -> None:
        """A job's answer (on whichever thread set it), to its front."""
        self.jobs.pop(job_id, None)
        front = self.owner.pop(job_id, None)
        exc = fut.exception()
        message = (wire.DONE, job_id, fut.result()) if exc is None else (wire.FAILED, job_id, exc)
        self.outbox.put(front, message, ANSWER_GAP_S)

    def _stats(self) -> tuple:
        e = self.engine
        return (wire.STATS, os.getpid(), e.steps, e.waiting, e.running, e.busy_s, e.alive,
                getattr(e, "last_run_rows", 0))  # fmt: skip

    def _flush(self, beat: bool, *extra: tuple) -> None:
        """Send what the outbox holds, one frame per front, the engine's counters last; with `beat`, a
        frame to every front even when nothing else is for it."""
        per_front: dict[bytes, list[tuple]] = {f: [] for f in self.fronts} if beat else {}
        primary = self.fronts[0] if self.fronts else None
        for dest, message in self.outbox.take():
            dest = dest if dest is not None else primary
            if dest is not None:
                per_front.setdefault(dest, []).append(message)
        if not per_front:
            return
        stats = self._stats()
        for front, messages in per_front.items():
            self.sock.send_multipart([front, wire.dumps([*messages, stats, *extra])])


def main(address: str, factory: Callable[[], Any], log_level: int = logging.WARNING) -> None:
    """The engine process's entry point (a `spawn` target)."""
    logging.basicConfig(level=log_level, format="%(levelname)s engine %(process)d: %(message)s")
    EngineHost(address, factory).serve()
