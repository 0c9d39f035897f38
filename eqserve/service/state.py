"""The server's running state: settings, loaded models and their engines."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import torch

from eqserve.kernels.dispatch import select_backend
from eqserve.models.base import ImplicitModel, ModelMeta
from eqserve.models.registry import load_model
from eqserve.service.config import Settings
from eqserve.service.engine import Engine, QueueFull, SolveJob
from eqserve.service.errors import ApiError
from eqserve.service.jobs import build_job
from eqserve.service.metrics import Metrics
from eqserve.service.schemas import SolveRequest


@dataclass
class Served:
    """One served model with its metadata and batching worker."""

    model: ImplicitModel
    meta: ModelMeta
    engine: Engine


@dataclass
class ServerState:
    """What the routes need; built at start-up, torn down at shutdown."""

    settings: Settings
    served: dict[str, Served] = field(default_factory=dict)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.settings.max_iters_cap)

    def start(self, models: dict[str, ImplicitModel] | None = None) -> None:
        """Load each configured model (or take the given ones) and start its worker."""
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        models = models or {name: load_model(name, self.settings.device) for name in self.settings.models}
        for name, model in models.items():
            meta = model.meta()
            engine = Engine(
                model,
                max_batch_rows=self.settings.max_batch_rows,
                max_queue=self.settings.max_queue,
                batching=self.settings.batching,  # type: ignore[arg-type]
                backend=select_backend(self.settings.kernels, model.device(), meta.fused_kernel),
                torch_threads=self.settings.torch_threads,
            )
            self.metrics.observe(engine)
            engine.start()
            self.served[name] = Served(model, meta, engine)

    def stop(self) -> None:
        """Stop every worker."""
        for s in self.served.values():
            s.engine.stop()

    def get(self, name: str) -> Served:
        """The served model `name`, or 404."""
        if name not in self.served:
            raise ApiError(
                404, "model_not_found", f"no model {name!r}; served: {', '.join(self.served)}", "model"
            )
        return self.served[name]

    def build(self, served: Served, req: SolveRequest) -> SolveJob:
        """The engine job of a validated request; a refusal is counted by its reason."""
        try:
            return build_job(served.model, served.meta, req, self.settings)
        except ApiError as exc:
            self.metrics.rejected.labels(served.meta.name, exc.type).inc()
            raise

    def submit(self, served: Served, job: SolveJob) -> asyncio.Future:
        """Hand a job to its engine; 429 with Retry-After (and counted) when the queue is full."""
        try:
            return asyncio.wrap_future(served.engine.submit(job))
        except QueueFull as exc:
            self.metrics.rejected.labels(served.meta.name, "queue_full").inc()
            headers = {"Retry-After": str(int(exc.retry_after))}
            raise ApiError(429, "overloaded", str(exc), headers=headers) from None

    @property
    def ready(self) -> bool:
        """Every model is loaded and its worker is alive."""
        return bool(self.served) and all(s.engine.alive for s in self.served.values())
