"""Messages on their way out of a thread that does not own the ZeroMQ socket (sockets are not
thread-safe): appended under a lock from any thread, sent by the one I/O thread, which a pipe wakes
only when it sleeps, so a burst of messages costs one wake-up and goes out in one frame."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time


class Outbox:
    """Messages bound for peers, appended from any thread, sent by the I/O thread."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes | None, tuple]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._signalled = False
        self._woken_at = 0.0
        self.late = math.inf
        """The shortest `gap` of the messages waiting that did not wake the I/O thread."""

    @property
    def fd(self) -> int:
        """Readable when messages wait."""
        return self._wake_r

    def put(self, dest: bytes | None, message: tuple, gap: float = 0.0) -> None:
        """Queue `message` for peer `dest` (None: the default one) and wake the I/O thread, unless it
        was woken less than `gap` s ago (math.inf: never): a wake-up costs the sending thread a GIL
        hand-off, which a worker pays between its runs. A message that did not wake it is `late`: the
        I/O thread comes back for it within `gap` (or its heartbeat, for those that never wake)."""
        with self._lock:
            self.items.append((dest, message))
            if self._signalled:
                return
            now = time.monotonic()
            if now - self._woken_at < gap:
                self.late = min(self.late, gap)
                return
            self._signalled, self._woken_at = True, now
        os.write(self._wake_w, b"x")

    def take(self) -> list[tuple[bytes | None, tuple]]:
        """Everything queued, oldest first."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        with self._lock:
            items, self.items = self.items, []
            self._signalled, self.late = False, math.inf
        return items

    def close(self) -> None:
        """Release the pipe."""
        os.close(self._wake_r)
        os.close(self._wake_w)
