"""Messages on their way out of a thread that does not own the ZeroMQ socket (sockets are not
thread-safe): appended under a lock from any thread, sent by the one I/O thread, which a pipe wakes
only when it sleeps, so a burst of messages costs one wake-up and goes out in one frame."""

from __future__ import annotations

import contextlib
import os
import threading


class Outbox:
    """Messages bound for peers, appended from any thread, sent by the I/O thread."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes | None, tuple]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._signalled = False

    @property
    def fd(self) -> int:
        """Readable when messages wait."""
        return self._wake_r

    def put(self, dest: bytes | None, message: tuple, wake: bool = True) -> None:
        """Queue `message` for peer `dest` (None: the default one); wake the I/O thread once. Without
        `wake` the message waits for the next one that wakes it, or the I/O thread's own next round: a
        wake-up costs the sending thread a GIL hand-off, which a worker pays between its runs."""
        with self._lock:
            self.items.append((dest, message))
            if self._signalled or not wake:
                return
            self._signalled = True
        os.write(self._wake_w, b"x")

    def take(self) -> list[tuple[bytes | None, tuple]]:
        """Everything queued, oldest first."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        with self._lock:
            items, self.items = self.items, []
            self._signalled = False
        return items

    def close(self) -> None:
        """Release the pipe."""
        os.close(self._wake_r)
        os.close(self._wake_w)
