"""What crosses between a front process and an engine process, and how it is pickled.

Messages are tuples, pickled a batch at a time (one ZeroMQ frame per batch: the iterates of one run
travel together). Tensors travel as their elements' bytes with dtype and shape: torch's own pickle
goes through `torch.save` per tensor, and a view (an iterate is a row of its batch's state) would
carry its whole storage.
"""

from __future__ import annotations

import copy
import io
import pickle
from typing import Any

import torch

from eqserve.engine.job import NEVER

# front -> engine
SUBMIT, CANCEL, SCHEDULE, CLOSE, STOP, HELLO = "submit", "cancel", "schedule", "close", "stop", "hello"
# engine -> front
DONE, FAILED, PUSH, OBSERVE, STATS, STOPPED = "done", "failed", "push", "observe", "stats", "stopped"


def _tensor(data: bytes, dtype: torch.dtype, shape: tuple[int, ...], device: str) -> torch.Tensor:
    t = (
        torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
        if data
        else torch.empty(shape, dtype=dtype)
    )
    return t if device == "cpu" else t.to(device)


def _reduce_tensor(t: torch.Tensor) -> Any:
    if t.layout is not torch.strided or t.dtype in (torch.bfloat16, torch.float8_e4m3fn):
        return NotImplemented
    host = t.detach().cpu()
    return _tensor, (host.numpy().tobytes(), t.dtype, tuple(t.shape), str(t.device))


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor:
            return _reduce_tensor(obj)
        return NotImplemented


def dumps(messages: list[tuple]) -> bytes:
    """One frame holding `messages` (objects they share are written once)."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(messages)
    return buf.getvalue()


def loads(frame: bytes) -> list[tuple]:
    """The messages of a frame."""
    return pickle.loads(frame)


def portable(job: Any) -> Any:
    """A shallow copy of `job` that pickles: without its future (the front keeps it) and its watch (the
    engine process puts its own in place, `MirrorWatch`)."""
    out = copy.copy(job)
    out.future = None
    if getattr(out, "watch", None) is not None:
        out.watch = None
    return out


def schedule(watch: Any) -> tuple[int, tuple[int, ...]] | None:
    """Which iterates a solve's watch wants, as the engine process can tell without asking it: every
    `period`-th (NEVER: only the last) or the listed ones; None for a watch that takes everything
    pushed and decides nothing (a token watch)."""
    if not hasattr(watch, "next_due"):
        return None
    if hasattr(watch, "period"):
        return watch.period, ()
    if hasattr(watch, "wanted"):
        return NEVER, tuple(watch.wanted)
    return getattr(watch, "every", 1), ()


class MirrorWatch:
    """The engine-process side of a front's watch: decides which iterates are due from the schedule the
    front last sent, and forwards every push to the front."""

    def __init__(
        self, send: Any, job_id: str, due: tuple[int, tuple[int, ...]] | None, wants_y: bool
    ) -> None:
        self._send, self._id, self.wants_y = send, job_id, wants_y
        self.period, self.wanted = due if due is not None else (1, ())

    def next_due(self, t: int) -> int:
        """The next listed t, else the next multiple of the period (NEVER while muted)."""
        if self.wanted:
            return next((w for w in self.wanted if w > t), NEVER)
        period = self.period
        return NEVER if period >= NEVER else (t // period + 1) * period

    def push(self, *args: Any) -> None:
        """Forward the iterate (or token) to the front."""
        self._send((PUSH, self._id, args))
