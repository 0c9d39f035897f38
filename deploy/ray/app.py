"""eqserve as a Ray Serve application: each replica is a whole eqserve app (its engines, its queue, its
429s) built by create_app from EQSERVE_* variables; Serve routes between replicas and scales them on
ongoing requests.

    serve run deploy/ray/config.yaml          or    serve run deploy.ray.app:app

Through Serve's proxy /metrics answers from one replica per scrape, so each replica also serves its own
/metrics on a port of its node and writes a Prometheus file-SD entry for it into EQSERVE_METRICS_SD_DIR
(default /tmp/ray/eqserve-metrics, beside Ray's own prom_metrics_service_discovery.json).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import start_http_server
from ray import serve
from ray.util import get_node_ip_address

from eqserve.service.app import create_app
from eqserve.service.config import load

SD_DIR = Path(os.environ.get("EQSERVE_METRICS_SD_DIR", "/tmp/ray/eqserve-metrics"))


def build_app() -> FastAPI:
    """One replica's eqserve app, whose lifespan also runs the replica's own metrics endpoint."""
    app = create_app(load())
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[None]:
        async with inner(a):
            server, thread = start_http_server(0, get_node_ip_address(), app.state.eq.metrics.registry)
            replica = serve.get_replica_context().replica_id.unique_id
            entry = SD_DIR / f"{replica}.json"
            SD_DIR.mkdir(parents=True, exist_ok=True)
            target = f"{get_node_ip_address()}:{server.server_port}"
            entry.write_text(json.dumps([{"targets": [target], "labels": {"replica": replica}}]))
            try:
                yield
            finally:
                entry.unlink(missing_ok=True)
                server.shutdown()
                thread.join(5)

    app.router.lifespan_context = lifespan
    return app


@serve.deployment(
    name="eqserve",
    # well above --max-batch-rows (64): eqserve's own queue does the queueing and answers 429
    max_ongoing_requests=512,
    autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 64},
)
@serve.ingress(build_app)
class Eqserve:
    """A Serve replica holding one eqserve app."""


app = Eqserve.bind()
