"""From a validated /v1/solve request to an engine job: the model's input, defaults and caps."""

from __future__ import annotations

import math

from eqserve.engine.job import SolveJob, new_id
from eqserve.models.base import ImplicitModel, InputError, ModelMeta
from eqserve.service.arrays import decode_state
from eqserve.service.config import Settings
from eqserve.service.errors import ApiError, validate
from eqserve.service.schemas import SolveRequest


def capped(
    max_iters: int | None, default_iters: int, timeout_s: float | None, settings: Settings
) -> tuple[int, float]:
    """A request's iteration budget and timeout: the model's default budget (within the server's cap)
    and the server's timeout cap where unset; 422 naming `budget.*` for a value over its cap."""
    iters = max_iters or min(default_iters, settings.max_iters_cap)
    if iters > settings.max_iters_cap:
        message = f"max_iters {iters} exceeds the server's cap {settings.max_iters_cap}"
        raise ApiError(422, "over_cap", message, "budget.max_iters")
    timeout = timeout_s or settings.timeout_cap_s
    if timeout > settings.timeout_cap_s:
        message = f"timeout_s {timeout} exceeds the server's cap {settings.timeout_cap_s}"
        raise ApiError(422, "over_cap", message, "budget.timeout_s")
    return iters, timeout


def build_job(model: ImplicitModel, meta: ModelMeta, req: SolveRequest, settings: Settings) -> SolveJob:
    """Encode the request's input and fill its budget and solver options; 422 naming the field."""
    inp = validate(model.Input, req.input, prefix="input")
    try:
        ctx = model.encode(inp)
    except InputError as exc:
        raise ApiError(422, "invalid_input", exc.message, exc.field) from None
    except Exception as exc:  # an input encode cannot take (a ragged list, a wrong size): the request's fault
        raise ApiError(422, "invalid_input", f"the model cannot encode this input: {exc}", "input") from None
    shape = tuple(model.state_shape(ctx))
    size = math.prod(shape)
    if size > settings.max_state_cap:
        raise ApiError(
            422, "over_cap", f"state of {size} entries exceeds the cap {settings.max_state_cap}", "input"
        )
    y0 = model.init(ctx)
    if req.warm_start is not None:
        y0 = decode_state(req.warm_start, shape, y0, "warm_start")
    budget, solver = req.budget, req.solver
    max_iters, timeout = capped(budget.max_iters, meta.default_max_iters, budget.timeout_s, settings)
    defaults = meta.default_solver
    method = solver.method or defaults.get("method", "picard")
    return SolveJob(
        id=new_id(),
        ctx=ctx,
        y0=y0,
        max_iters=max_iters,
        tol=meta.default_tol if budget.tol is None else budget.tol,
        rel_mode=(budget.stop_mode or meta.default_stop_mode) == "rel",
        timeout_s=timeout,
        damping=solver.damping or defaults.get("damping", 1.0),
        method=method,
        m=(solver.m or defaults.get("m", 5)) if method != "picard" else 0,
        trace=req.return_.trace,
        every=req.return_.every,
        return_state=req.return_.state,
        state_encoding=req.return_.encoding,
    )
