"""From an engine result to the JSON answer of /v1/solve."""

from __future__ import annotations

from typing import Any

from eqserve.engine.job import SolveResult
from eqserve.service.schemas import SolveResponse, Timing
from eqserve.service.streams import finite_or_none


def to_response(model: str, r: SolveResult) -> SolveResponse:
    """The JSON answer of a finished solve (non-finite residuals become null)."""
    trace = (
        [
            {
                **p,
                "residual": finite_or_none(p["residual"]),
                "rel_residual": finite_or_none(p["rel_residual"]),
            }
            for p in r.trace
        ]
        if r.trace is not None
        else None
    )
    extra: dict[str, Any] = {}
    if trace is not None:
        extra["trace"] = trace
    if r.state is not None:
        extra["state"] = r.state
    return SolveResponse(
        id=r.id,
        model=model,
        output=r.output,
        status=r.status,  # type: ignore[arg-type]
        iterations=r.iterations,
        residual=finite_or_none(r.residual),
        rel_residual=finite_or_none(r.rel_residual),
        timing=Timing(
            queue_ms=r.queue_ms,
            solve_ms=r.solve_ms,
            per_iter_us=r.solve_ms * 1e3 / r.iterations if r.iterations else 0.0,
        ),
        **extra,
    )
