"""More than one HTTP front process (`--api-workers N`): the event loop's work spread over processes
that share the port and the engine processes.

The first front (the one `eqserve serve` runs) starts the engine processes and supervises them; it
then starts N − 1 further fronts with `spawn`. Each loads the models itself (for `encode`, `decode`,
the schemas), binds the port with SO_REUSEPORT (the kernel spreads connections over the fronts), and
follows the engine processes at their addresses (`EngineClient(follow=True)`): it notices a process
gone by its pid, answers its jobs, and reconnects to its successor. Metrics use prometheus-client's
multiprocess mode, so each front's /metrics shows the counters and histograms of all of them; an
engine's own events (`ran`: ticks, iterations) reach only the first front, so they are counted once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile

from eqserve.engine.supervisor import ProcessEngine
from eqserve.service.config import Settings

log = logging.getLogger(__name__)

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"

STOP_S = 30.0
"""How long a further front may take to drain once told to stop."""


def share_metrics() -> None:
    """Put this process's and its children's metrics in a shared folder (before prometheus_client is
    imported: it picks its value storage at import)."""
    os.environ.setdefault(METRICS_ENV, tempfile.mkdtemp(prefix="eqserve-metrics-"))


def shared_metrics() -> bool:
    """Whether metrics are shared across front processes."""
    return METRICS_ENV in os.environ


def engine_addresses(state: object) -> dict[str, str]:
    """The engine process address of every served model that has one."""
    served = getattr(state, "served", {})
    return {name: s.engine.address for name, s in served.items() if isinstance(s.engine, ProcessEngine)}


class Fronts:
    """The further front processes of one server."""

    def __init__(self, settings: Settings, follow: dict[str, str]) -> None:
        self.settings, self.follow = settings, follow
        self.procs: list[multiprocessing.process.BaseProcess] = []

    def start(self) -> None:
        """Start the further fronts."""
        ctx = multiprocessing.get_context("spawn")
        for i in range(1, self.settings.api_workers):
            proc = ctx.Process(target=main, args=(self.settings, self.follow), name=f"eqserve-front-{i}")
            proc.start()
            self.procs.append(proc)

    def stop(self) -> None:
        """Drain and stop them (SIGTERM: each answers its solves in flight first)."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.join(STOP_S)
            if proc.is_alive():
                proc.kill()


def main(settings: Settings, follow: dict[str, str]) -> None:
    """A further front's entry point (a `spawn` target)."""
    from eqserve.service.app import create_app
    from eqserve.service.drain import DrainingServer
    from eqserve.service.server import listen, uvicorn_config

    app = create_app(settings, follow=follow)
    app.state.eq.load_all()
    server = DrainingServer(uvicorn_config(app, settings.host, settings.port, settings.log_level))
    server.run(sockets=[listen(settings.host, settings.port, settings.send_buffer, shared=True)])
