"""The server's running state: settings, loaded models and their engines."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from eqserve.engine.client import EngineClient
from eqserve.engine.core import Engine
from eqserve.engine.errors import EngineClosed, EngineDied, QueueFull
from eqserve.engine.job import SolveJob
from eqserve.engine.supervisor import ProcessEngine
from eqserve.engine.tokens import TokenEngine
from eqserve.models.base import ModelMeta
from eqserve.models.looped import LoopedLM
from eqserve.models.registry import Model, ModelLoadError, ModelSource, from_directory, repository, resolve
from eqserve.service.config import Settings
from eqserve.service.engines import make_engine
from eqserve.service.errors import ApiError
from eqserve.service.jobs import build_job
from eqserve.service.metrics import Metrics
from eqserve.service.schemas import SolveRequest

log = logging.getLogger(__name__)

UNLOAD_POLL_S = 0.02
"""How often an unload looks whether the model's last solves have been answered."""

RESTART_RETRY_S = 1
"""Retry-After of a solve refused while its model's engine process restarts."""

FOLLOW_READY_S = 60.0
"""How long a further front's start waits for the engine process it follows to answer: until then it
would answer its requests 503."""


@dataclass
class Served:
    """One served model with its metadata, batching worker and origin."""

    model: Model
    meta: ModelMeta
    engine: Engine | TokenEngine | ProcessEngine | EngineClient
    source: ModelSource | None = None

    @property
    def looped(self) -> bool:
        """A looped LM, served by /v1/completions (the others by /v1/solve and v2)."""
        return isinstance(self.model, LoopedLM)


@dataclass
class ServerState:
    """What the routes need; built at start-up, torn down at shutdown."""

    settings: Settings
    served: dict[str, Served] = field(default_factory=dict)
    loaded: list[tuple[ModelSource, Model]] | None = None
    """Models loaded by `load_all` whose workers `start` has not started yet."""
    follow: dict[str, str] | None = None
    """Engine process addresses by model, in a front that shares another front's engine processes."""
    unloading: set[str] = field(default_factory=set)
    """Models whose engines finish their last solves before they go: new solves get 503."""
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.settings.max_iters_cap)

    def load_all(self) -> None:
        """Load every configured model (its code and weights) without starting workers, so that a model
        that cannot load stops `eqserve serve` with its reason before the server listens."""
        if self.loaded is None:
            self.loaded = [(source, source.load(self.settings.device)) for source in self.sources()]

    def start(self, models: dict[str, Model] | None = None) -> None:
        """Start a worker for every loaded model (loading them first if need be), or for the given ones."""
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        if models:
            for name, model in models.items():
                self.served[name] = self._serve(model)
            return
        self.load_all()
        for source, model in self.loaded or []:
            self.served[source.name] = self._serve(model, source)
        self.loaded = []
        for served in self.served.values():  # engine processes start side by side; wait for them all
            if isinstance(served.engine, ProcessEngine):
                served.engine.wait_started()
            elif isinstance(served.engine, EngineClient) and not served.engine.wait_ready(FOLLOW_READY_S):
                # a further front (--api-workers) answers 503 until the engine process it follows answers
                log.warning("engine process of %r: no answer in %.0f s", served.model.name, FOLLOW_READY_S)

    def sources(self) -> list[ModelSource]:
        """The models the settings name: each SPEC, then every model directory of the repository."""
        found = [resolve(spec) for spec in self.settings.models]
        if self.settings.model_repository:
            found += [from_directory(p) for p in self._repository().values()]
        names = [s.name for s in found]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ModelLoadError(f"two models would be served as {', '.join(twice)}: give each its own name")
        return found

    def _repository(self) -> dict[str, Path]:
        return repository(Path(self.settings.model_repository))

    def _serve(self, model: Model, source: ModelSource | None = None) -> Served:
        """Start a worker for `model`."""
        meta = model.meta()
        engine = make_engine(model, source, self.settings, (self.follow or {}).get(model.name))
        self.metrics.observe(engine, isinstance(model, LoopedLM))
        engine.start()
        return Served(model, meta, engine, source)

    # -- the model-control API (Triton's repository extension) --------------------------------

    def index(self) -> list[dict[str, Any]]:
        """Every model directory of the repository: its name, version and whether it is served."""
        out = []
        for name, path in self._repository().items():
            served = self.served.get(name)
            live = served is not None and name not in self.unloading
            entry: dict[str, Any] = {"name": name}
            try:
                # The version serving, not a newer one on disk that is not loaded (or failed to load).
                source = served.source if live and served.source is not None else from_directory(path)
            except ModelLoadError as exc:
                out.append(entry | {"state": "UNAVAILABLE", "reason": self._reason(exc)})
                continue
            version = source.root.name if source.root is not None and source.root != path.resolve() else ""
            if version:
                entry["version"] = version
            if live:
                out.append(entry | {"state": "READY", "reason": ""})
            else:
                out.append(entry | {"state": "UNAVAILABLE", "reason": "unloaded"})
        return out

    def load(self, name: str) -> None:
        """Load (or reload) the repository's model `name` beside the one served, then swap; a failed
        load leaves the served one as it was. Blocking: call it off the event loop."""
        dirs = self._repository()
        if name not in dirs:
            raise ApiError(404, "model_not_found", f"the model repository has no model {name!r}", "name")
        try:
            source = from_directory(dirs[name])
            served = self._serve(source.load(self.settings.device), source)
            if isinstance(served.engine, ProcessEngine):
                served.engine.wait_started()
        except Exception as exc:
            log.warning("loading model %s failed: %s", name, exc)
            reason = self._reason(exc)
            raise ApiError(400, "load_failed", f"model {name!r} failed to load: {reason}", "name") from None
        old = self.served.get(name)
        self.served[name] = served
        self.unloading.discard(name)
        if old is not None:
            self._retire(old)

    def _reason(self, exc: Exception) -> str:
        """Why a repository model cannot load, its paths relative to the repository: error texts are
        clipped, so long absolute paths would hide the reason, and clients need not see the layout."""
        root = Path(self.settings.model_repository).resolve()
        return str(exc).replace(f"{root}{os.sep}", "")

    def unload(self, name: str) -> None:
        """Stop serving `name`: new solves get 503, those accepted finish, then the worker is freed.
        Blocking: call it off the event loop."""
        served = self.get(name, "any")
        self.unloading.add(name)
        self._retire(served)
        if self.served.get(name) is served:
            del self.served[name]
            self.unloading.discard(name)

    def _retire(self, served: Served) -> None:
        """Close an engine, wait for its last answers, stop its worker and its metrics."""
        engine = served.engine
        engine.close()
        deadline = time.monotonic() + self.settings.timeout_cap_s
        while not engine.idle and time.monotonic() < deadline:
            time.sleep(UNLOAD_POLL_S)
        engine.stop()
        self.metrics.forget(engine)

    def stop(self) -> None:
        """Stop every worker."""
        for s in self.served.values():
            s.engine.stop()

    def get(self, name: str, kind: Literal["implicit", "looped", "any"] = "implicit") -> Served:
        """The served model `name`; 503 while it is being unloaded, 404 when there is none, 422 when it
        is not of the `kind` the route serves (a looped LM completes text, the others solve)."""
        if name in self.unloading:
            message = f"model {name!r} is being unloaded"
            raise ApiError(503, "unloading", message, "model", {"Retry-After": "1"})
        if name not in self.served:
            raise ApiError(
                404, "model_not_found", f"no model {name!r}; served: {', '.join(self.served)}", "model"
            )
        served = self.served[name]
        if kind != "any" and served.looped != (kind == "looped"):
            if served.looped:
                message = f"model {name!r} is a looped language model: use POST /v1/completions"
            else:
                message = f"model {name!r} is not a language model: solve it with POST /v1/solve"
            raise ApiError(422, "wrong_endpoint", message, "model")
        return served

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
        except EngineClosed as exc:
            raise ApiError(503, "unloading", str(exc), "model", {"Retry-After": "1"}) from None
        except EngineDied as exc:
            self.metrics.rejected.labels(served.meta.name, "engine_restarting").inc()
            raise engine_down(exc) from None

    def worker_ok(self, served: Served) -> bool:
        """Its worker runs and is not stuck: no tick of it has lasted past `stuck_tick_s` (a hung step
        leaves the thread alive, so liveness alone would not show it)."""
        return served.engine.alive and served.engine.busy_s <= self.settings.stuck_tick_s

    def not_ready(self) -> list[str]:
        """The models whose worker has stopped or is stuck."""
        return [name for name, s in self.served.items() if not self.worker_ok(s)]

    @property
    def ready(self) -> bool:
        """Every model is loaded and its worker runs, none stuck."""
        return bool(self.served) and not self.not_ready()


def engine_down(exc: EngineDied) -> ApiError:
    """The 503 of a solve whose model's engine process is restarting (or died before it started)."""
    return ApiError(503, "engine_restarting", str(exc), "model", {"Retry-After": str(RESTART_RETRY_S)})
