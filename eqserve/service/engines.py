"""How a served model's engine is built: in this process, or in an engine process of its own.

`--engine-process on` (the default of `eqserve serve`) runs each model loaded from its source in a
process that loads the model again itself (the front keeps its own copy for `encode`, `decode` and
the schemas): a `spawn`ed process cannot inherit the loaded module, and a `ModelSource` pickles where a
module with its weights would be copied through a pipe. Model objects handed to the server as objects
(`create_app(settings, models)`, `ServerState.start(models=...)`) stay in-process: the caller may hold
on to them and look at their state, and a test's model need not pickle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eqserve.engine.client import EngineClient
from eqserve.engine.core import Engine
from eqserve.engine.supervisor import ProcessEngine
from eqserve.engine.tokens import TokenEngine
from eqserve.kernels.compiled import compiled_step
from eqserve.kernels.dispatch import select_backend
from eqserve.models.looped import LoopedLM
from eqserve.models.registry import Model, ModelSource
from eqserve.service.config import Settings


def build_engine(model: Model, settings: Settings) -> Engine | TokenEngine:
    """The batching engine of `model` as the settings configure it (not started): a looped LM's token
    engine, or a fixed-point model's engine."""
    if isinstance(model, LoopedLM):
        return TokenEngine(
            model,
            max_batch_rows=settings.max_batch_rows,
            max_queue=settings.max_queue,
            batching=settings.batching,
            torch_threads=settings.torch_threads,
        )
    meta_kernel = model.meta().fused_kernel
    chosen = set(settings.compile_step)
    compile_it = bool({model.name, "*"} & chosen) or ("auto" in chosen and type(model).compile_step)
    return Engine(
        model,
        max_batch_rows=settings.max_batch_rows,
        max_queue=settings.max_queue,
        batching=settings.batching,  # type: ignore[arg-type]
        backend=select_backend(settings.kernels, model.device(), meta_kernel),
        torch_threads=settings.torch_threads,
        batch_invariant=bool({model.name, "*"} & set(settings.batch_invariant)),
        step=compiled_step(model, settings.max_batch_rows) if compile_it else None,
    )


@dataclass
class SourceEngine:
    """Builds a model's engine from its source, in the engine process (a picklable factory)."""

    source: ModelSource
    settings: Settings

    def __call__(self) -> Engine | TokenEngine:
        """Load the model and build its engine."""
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        return build_engine(self.source.load(self.settings.device), self.settings)


def make_engine(
    model: Model, source: ModelSource | None, settings: Settings, follow: str | None = None
) -> Engine | TokenEngine | ProcessEngine | EngineClient:
    """`model`'s engine: the engine process at `follow` that another front supervises; else in an
    engine process of its own when the settings say so and it has a source; else here."""
    if follow is not None:
        return EngineClient(model.name, follow, settings.max_queue, follow=True)
    if settings.engine_process == "on" and source is not None:
        return ProcessEngine(
            model.name,
            SourceEngine(source, settings),
            max_queue=settings.max_queue,
            max_rss_mib=settings.max_model_rss,
            drain_s=settings.timeout_cap_s,
        )
    return build_engine(model, settings)
