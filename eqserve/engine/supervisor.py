"""One model's engine in a process of its own, kept running: the Engine interface a front serves from.

The process is started with `spawn` and builds its engine from `factory` (a picklable callable that
loads the model there). A monitor thread waits on the process's sentinel, so an exit — killed, crashed
in a step, out of memory — is seen at once: the jobs in flight are answered (engine/client.py `lost`),
the model reports not alive (not ready) until a new process answers, and the process is restarted
after a backoff that doubles while restarts keep failing. With `max_rss_mib` the monitor also reads
the process's resident memory each second; past the bound the engine is drained (no new jobs, those in
flight answered) and the process replaced. Other models' processes are untouched by any of this.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from eqserve.engine import process
from eqserve.engine.client import EngineClient
from eqserve.engine.errors import EngineDied
from eqserve.engine.observer import EngineObserver, NullObserver

log = logging.getLogger(__name__)

RSS_CHECK_S = 1.0
"""How often the monitor reads the process's resident memory."""

BACKOFF_S = (0.5, 30.0)
"""First and longest wait before a restart; the wait doubles while processes die young."""

YOUNG_S = 30.0
"""A process that dies within this long of its start doubles the next backoff."""

DRAIN_POLL_S = 0.05


class EngineStartError(RuntimeError):
    """The engine process exited, or did not answer, before it served."""


class ProcessEngine:
    """The Engine interface over a supervised engine process."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], Any],
        *,
        max_queue: int,
        max_rss_mib: int = 0,
        drain_s: float = 300.0,
        ready_s: float = 600.0,
    ) -> None:
        self.name, self.factory, self.max_queue = name, factory, max_queue
        self.max_rss_mib, self.drain_s, self.ready_s = max_rss_mib, drain_s, ready_s
        self._observer: EngineObserver = NullObserver()
        self._dir = Path(tempfile.mkdtemp(prefix="eqserve-engine-"))
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._client: EngineClient | None = None
        self._serving = False
        """Whether the current process answers and takes jobs (False while it restarts or drains)."""
        self._stopping = False
        self._monitor: threading.Thread | None = None
        self.restarts = 0

    @property
    def observer(self) -> EngineObserver:
        """Receives the engine's events (replayed in this process)."""
        return self._observer

    @observer.setter
    def observer(self, value: EngineObserver) -> None:
        self._observer = value
        if self._client is not None:
            self._client.observer = value

    # -- the Engine interface ------------------------------------------------------------

    def start(self) -> None:
        """Start the process without waiting for it (several models load side by side): it serves
        once `wait_started` has returned."""
        self._spawn()

    def wait_started(self) -> None:
        """Wait until the started process answers (EngineStartError if it exits or takes too long);
        then watch it."""
        self._await_ready()
        self._monitor = threading.Thread(target=self._watch, name=f"supervisor-{self.name}", daemon=True)
        self._monitor.start()

    def stop(self) -> None:
        """Stop the engine (its waiting and running jobs end cancelled) and its process."""
        self._stopping = True
        self._end_process()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=RSS_CHECK_S * 2)
        shutil.rmtree(self._dir, ignore_errors=True)

    def close(self) -> None:
        """Take no new jobs; those accepted go on to their answers."""
        if self._client is not None:
            self._client.close()

    def submit(self, job: Any) -> Future:
        """Hand `job` to the engine process; EngineDied while it restarts."""
        client = self._client
        if not self._serving or client is None:
            raise EngineDied(self.name, started=False)
        return client.submit(job)

    @property
    def alive(self) -> bool:
        """Whether the process serves and its worker runs."""
        client = self._client
        return self._serving and client is not None and client.alive

    @property
    def busy_s(self) -> float:
        """Seconds the worker has spent in its current turn."""
        return self._client.busy_s if self._client is not None else 0.0

    @property
    def steps(self) -> int:
        """Batch steps the current process has run."""
        return self._client.steps if self._client is not None else 0

    @property
    def waiting(self) -> int:
        """Requests accepted but not yet in the batch."""
        return self._client.waiting if self._client is not None else 0

    @property
    def running(self) -> int:
        """Requests in the batch."""
        return self._client.running if self._client is not None else 0

    @property
    def idle(self) -> bool:
        """Whether no job is in flight."""
        return self._client is None or self._client.idle

    @property
    def last_run_rows(self) -> int:
        """Rows the last run computed."""
        return self._client.last_run_rows if self._client is not None else 0

    @property
    def address(self) -> str:
        """Where the engine process listens: the same for every process in turn, so that fronts that
        follow it (`--api-workers`) reconnect by themselves."""
        return f"ipc://{self._dir}/engine.sock"

    @property
    def pid(self) -> int | None:
        """The current engine process's id."""
        return self._proc.pid if self._proc is not None else None

    # -- the process ----------------------------------------------------------------------

    def _spawn(self) -> None:
        address = self.address
        ctx = multiprocessing.get_context("spawn")
        level = logging.getLogger("eqserve").getEffectiveLevel()
        self._proc = ctx.Process(
            target=process.main, args=(address, self.factory, level), name=f"eqserve-engine-{self.name}",
            daemon=True,
        )  # fmt: skip
        self._proc.start()
        self._started_at = time.monotonic()
        client = EngineClient(self.name, address, self.max_queue)
        client.observer = self._observer
        client.start()
        self._client = client

    def _await_ready(self) -> None:
        proc, client = self._proc, self._client
        assert proc is not None and client is not None
        deadline = time.monotonic() + self.ready_s
        while not client.wait_ready(0.05):
            if not proc.is_alive():
                client.lost()
                raise EngineStartError(f"the engine process of {self.name!r} exited with {proc.exitcode}")
            if time.monotonic() > deadline:
                proc.kill()
                client.lost()
                raise EngineStartError(
                    f"the engine process of {self.name!r} did not answer in {self.ready_s} s"
                )
        self._serving = True

    def _end_process(self) -> None:
        """Stop the engine process (gracefully, then by force)."""
        self._serving = False
        proc, client = self._proc, self._client
        if client is not None:
            client.stop()
        if proc is not None:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        if client is not None:
            client.lost()  # jobs still unanswered (a process that would not stop)

    def _watch(self) -> None:
        """Wait for the process to exit or outgrow its bound; restart it (until stopped)."""
        backoff = BACKOFF_S[0]
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            exited = wait([proc.sentinel], timeout=RSS_CHECK_S)
            if self._stopping:
                return
            if exited:
                log.error("engine process of %s exited with %s; restarting", self.name, proc.exitcode)
                self._serving = False
                if self._client is not None:
                    self._client.lost()
                young = time.monotonic() - self._started_at < YOUNG_S
                backoff = min(backoff * 2, BACKOFF_S[1]) if young and self.restarts else BACKOFF_S[0]
                time.sleep(backoff)
            elif self.max_rss_mib and rss_mib(proc.pid) > self.max_rss_mib:
                log.warning("engine process of %s grew past %d MiB; draining and restarting", self.name,
                            self.max_rss_mib)  # fmt: skip
                self._drain()
                self._end_process()
            else:
                continue
            if self._stopping:
                return
            self._restart()

    def _restart(self) -> None:
        """A new process in place of the one gone; retried by the monitor if it fails to start."""
        self.restarts += 1
        try:
            self._spawn()
            self._await_ready()
        except EngineStartError as exc:
            log.error("%s", exc)

    def _drain(self) -> None:
        """No new jobs; wait (up to `drain_s`) for those in flight to be answered."""
        self._serving = False
        client = self._client
        if client is None:
            return
        client.close()
        deadline = time.monotonic() + self.drain_s
        while not client.idle and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_S)


def rss_mib(pid: int | None) -> float:
    """Resident memory of process `pid`, MiB (0 once it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
