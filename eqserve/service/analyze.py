"""POST /v1/analyze: the paper's E_t and L_t of a served model, measured through its engine.

For each input (the model's example unless the client sends some) and `pairs` copies of it with every
float of the input moved by a random perturbation of norm `delta`, the engine runs plain Picard for
max(t) iterations as ordinary rows; the decoded output at each t gives the error E_t against the
client's reference output (when one is sent) and the empirical Lipschitz constant of the t-step map,
L_t = mean ‖out_t(x') − out_t(x)‖ / ‖x' − x‖. Work is capped in row-iterations, so an analysis costs
what a known number of solves costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from eqserve.engine.job import NEVER
from eqserve.service.errors import ApiError
from eqserve.service.schemas import SolveRequest
from eqserve.service.state import Served, ServerState
from eqserve.service.streams import finite_or_none

MAX_T = 4096
"""Largest t an analysis may ask for."""


class AnalysisInput(BaseModel):
    """One input of an analysis and, optionally, the output it should reach (for E_t)."""

    model_config = ConfigDict(extra="forbid")
    input: dict[str, Any]
    reference: dict[str, Any] | None = None


class AnalyzeRequest(BaseModel):
    """POST /v1/analyze."""

    model_config = ConfigDict(extra="forbid")
    model: str
    iters: list[int] = Field(default=[1, 2, 4, 8, 16, 32, 64], min_length=1, max_length=32)
    inputs: list[AnalysisInput] | None = Field(default=None, min_length=1, max_length=64)
    pairs: int = Field(default=2, ge=0, le=16)
    delta: float = Field(default=1e-3, gt=0, le=1, allow_inf_nan=False)
    seed: int = 0
    stream: bool = False


def plan(state: ServerState, served: Served, req: AnalyzeRequest) -> list[tuple[int, Any, np.ndarray]]:
    """The rows to run: (input index, solve request, the input's floats), base first, then its pairs;
    422 naming the field when the work is over the cap or an input cannot be analysed."""
    bad = [t for t in req.iters if not 1 <= t <= MAX_T]
    if bad:
        raise ApiError(422, "invalid_request", f"every t must be in 1…{MAX_T}", "iters")
    if req.inputs is None and served.meta.example_input is None:
        raise ApiError(422, "invalid_request", "the model has no example input: send inputs", "inputs")
    items = req.inputs or [AnalysisInput(input=served.meta.example_input or {})]
    rows = len(items) * (1 + req.pairs)
    work = rows * max(req.iters)
    cap = state.settings.analyze_cap
    if work > cap:
        why = f"{rows} rows × {max(req.iters)} iterations = {work} row-iterations exceed the cap {cap}"
        raise ApiError(422, "over_cap", why, "iters")
    rng = np.random.default_rng(req.seed)
    out = []
    for k, item in enumerate(items):
        base = _floats(item.input)
        if req.pairs and base.size == 0:
            raise ApiError(422, "invalid_request", "the input holds no float to perturb", f"inputs.{k}.input")
        out.append((k, item.input, base))
        for _ in range(req.pairs):
            u = rng.standard_normal(base.size)
            moved = base + req.delta * u / np.linalg.norm(u)
            out.append((k, _with_floats(item.input, moved), moved))
    return out


async def run(
    state: ServerState, served: Served, req: AnalyzeRequest
) -> AsyncIterator[dict[str, Any]]:
    """Progress events while the rows run, then the result event."""
    rows = await run_in_threadpool(plan, state, served, req)
    wanted = sorted(set(req.iters))
    last = wanted[-1]
    captured: list[dict[int, torch.Tensor]] = []
    jobs = []
    for _, inp, _ in rows:
        body = {"model": req.model, "input": inp, "budget": {"max_iters": last, "tol": 0.0},
                "solver": {"method": "picard", "damping": 1.0}}  # fmt: skip
        job = await run_in_threadpool(state.build, served, SolveRequest.model_validate(body))
        seen: dict[int, torch.Tensor] = {}
        job.watch = _Capture(seen, wanted)
        captured.append(seen)
        jobs.append(job)
    futures = [state.submit(served, job) for job in jobs]
    pending = set(futures)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                fut.result()  # a model fault is the analysis's fault too
            yield {"type": "progress", "done": len(futures) - len(pending), "total": len(futures)}
    finally:
        for job in jobs:
            job.cancelled = True
    result = await run_in_threadpool(_measure, served, req, rows, jobs, captured, wanted)
    yield {"type": "result", **result}


class _Capture:
    """The watch of one analysed row: a copy of y at each wanted t, and the newest iterate (under -1) for
    a solve that stops early at its fixed point (the engine never writes a handed-over state, so it is
    kept as the view it is). The wanted ones are copied so that they do not hold whole batch tensors."""

    wants_y = True

    def __init__(self, seen: dict[int, torch.Tensor], wanted: list[int]) -> None:
        self.seen, self.wanted = seen, wanted

    def next_due(self, t: int) -> int:
        """The next wanted t."""
        return next((w for w in self.wanted if w > t), NEVER)

    def push(self, t: int, residual: float, rel: float, y: torch.Tensor | None) -> None:
        """Keep the iterate."""
        assert y is not None
        self.seen[-1] = y
        if t in self.wanted:
            self.seen[t] = y.clone()


def _measure(
    served: Served,
    req: AnalyzeRequest,
    rows: list[tuple[int, Any, np.ndarray]],
    jobs: list[Any],
    captured: list[dict[int, torch.Tensor]],
    wanted: list[int],
) -> dict[str, Any]:
    model = served.model
    outs: list[dict[int, np.ndarray]] = []
    with torch.inference_mode():
        for job, seen in zip(jobs, captured, strict=True):
            row: dict[int, np.ndarray] = {}
            held = seen.get(-1)
            for t in wanted:
                y = seen.get(t)
                y = y if y is not None else held  # past an exact fixed point y_t stays put
                if y is None:
                    raise ApiError(500, "analysis_failed", f"no iterate at t = {t}")
                row[t] = _floats(model.decode(y, job.ctx))
            outs.append(row)
    step = 1 + req.pairs
    lipschitz = []
    for t in wanted:
        ratios = []
        for b in range(0, len(rows), step):
            for p in range(b + 1, b + step):
                dx = float(np.linalg.norm(rows[p][2] - rows[b][2]))
                ratios.append(float(np.linalg.norm(outs[p][t] - outs[b][t])) / dx)
        lipschitz.append(finite_or_none(sum(ratios) / len(ratios)) if ratios else None)
    items = req.inputs or []
    refs = [(b, _floats(items[rows[b][0]].reference)) for b in range(0, len(rows), step)
            if items and items[rows[b][0]].reference is not None]  # fmt: skip
    error = None
    if refs:
        error = [finite_or_none(sum(_relative(outs[b][t], r) for b, r in refs) / len(refs)) for t in wanted]
    return {
        "model": req.model,
        "t": wanted,
        "error": error,
        "error_metric": "mean relative L2 error of the decoded output against the reference",
        "lipschitz": lipschitz,
        "inputs": len(rows) // step,
        "pairs": req.pairs,
        "delta": req.delta,
    }


def _relative(out: np.ndarray, ref: np.ndarray) -> float:
    if out.shape != ref.shape:
        raise ApiError(422, "invalid_request", f"a reference holds {ref.size} floats, the output {out.size}",
                       "inputs.reference")  # fmt: skip
    return float(np.linalg.norm(out - ref)) / (float(np.linalg.norm(ref)) + 1e-12)


def _floats(value: Any) -> np.ndarray:
    """Every float of a JSON value, depth first (ints and booleans are indices and flags: left out)."""
    found: list[float] = []

    def walk(v: Any) -> None:
        if isinstance(v, float):
            found.append(v)
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)

    walk(value)
    return np.asarray(found, dtype=np.float64)


def _with_floats(value: Any, floats: np.ndarray) -> Any:
    """`value` with its floats replaced, in `_floats`' order."""
    it = iter(floats.tolist())

    def walk(v: Any) -> Any:
        if isinstance(v, float):
            return next(it)
        if isinstance(v, dict):
            return {k: walk(item) for k, item in v.items()}
        if isinstance(v, list):
            return [walk(item) for item in v]
        return v

    return walk(value)
