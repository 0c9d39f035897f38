"""A model's `step` under torch.compile (inductor: fused C++ on a CPU, Triton kernels on a GPU).

Compiling is paid at load: `compiled_step` compiles and checks the step on the batch sizes the
server will see, with the batch dimension symbolic, so that batches of two rows or more share a
graph (a batch of one is a graph of its own: torch specialises sizes 0 and 1). Calls run in
torch's run-only mode: a batch whose shapes, dtypes or grad mode no warmed graph covers runs the
eager step rather than compiling on a request.
Where compiling fails (no C++ compiler, an operator inductor cannot lower) or the compiled step
disagrees with the eager one, the step stays eager and a warning says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from eqserve.models.base import Ctx, ImplicitModel

log = logging.getLogger(__name__)

AGREEMENT = {"rtol": 1e-3, "atol": 1e-5}
"""How close the compiled step's output must be to the eager one at warm-up (relative atol: × max |G|)."""


class CompiledStep:
    """`model.step` compiled for the batches it was warmed on, eager for any other; call as the step."""

    def __init__(self, model: ImplicitModel) -> None:
        self.model = model
        self.graphs = 0
        """Graphs inductor compiled for this step (one per guard set and graph-break piece)."""
        self.compile_s = 0.0
        """Seconds the warm-up's compiled calls took (compiling included)."""
        self.error: str | None = None
        """Why the step stays eager, or None."""
        self._compile: Callable[[torch.Tensor, Ctx], torch.Tensor] | None = torch.compile(
            model.step, backend=self._inductor
        )
        # Run-only mode (per call, not global): the graphs whose guards pass, else eager; never compiles.
        self._run: Callable[[torch.Tensor, Ctx], torch.Tensor] = torch._dynamo.run(model.step)

    def _inductor(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        """Inductor, counting the graphs it compiles."""
        from torch._inductor.compile_fx import compile_fx

        self.graphs += 1
        return compile_fx(gm, example_inputs)

    @property
    def compiled(self) -> bool:
        """Whether the warm-up compiled graphs that calls can take."""
        return self._compile is not None and self.graphs > 0

    def __call__(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        return self._run(y, ctx) if self.compiled else self.model.step(y, ctx)

    def warm(self, batches: Sequence[tuple[torch.Tensor, Ctx]]) -> None:
        """Compile for each (y, ctx) batch and check the result against the eager step; on any failure
        the step stays eager (with a warning). As the engine steps: under inference mode, on tensors
        made under it (torch guards on the difference)."""
        with torch.inference_mode():
            for y_in, ctx_in in batches:
                if self._compile is None:
                    return
                y, ctx = y_in.clone(), {k: v.clone() for k, v in ctx_in.items()}
                torch._dynamo.maybe_mark_dynamic(y, 0)
                for v in ctx.values():
                    torch._dynamo.maybe_mark_dynamic(v, 0)
                try:
                    start = time.perf_counter()
                    out = self._compile(y, ctx)
                    self.compile_s += time.perf_counter() - start
                    want = self.model.step(y, ctx)
                    atol = AGREEMENT["atol"] * float(want.abs().max())
                    if not torch.allclose(out, want, rtol=AGREEMENT["rtol"], atol=atol):
                        raise ValueError(f"the compiled step differs from the eager one at {y.shape[0]} rows")
                except Exception as exc:  # inductor's failures have no common type
                    self._fallback(exc)

    def _fallback(self, exc: BaseException) -> None:
        # torch wraps the backend's error (BackendCompilerFailed.inner_exception): name the root one
        while (inner := getattr(exc, "inner_exception", None) or exc.__cause__) is not None:
            exc = inner
        first = (str(exc).strip().splitlines() or [""])[0]
        self.error = f"{type(exc).__name__}: {first[:500]}"
        self._compile = None
        log.warning("model %s: its step stays eager, compiling failed: %s", self.model.name, self.error)


def batch_of(model: ImplicitModel, y_row: torch.Tensor, ctx_row: Ctx, rows: int) -> tuple[torch.Tensor, Ctx]:
    """`rows` copies of one row (y (1, *S) and its context), collated as the engine batches them."""
    return y_row.expand(rows, *y_row.shape[1:]).clone(), model.collate([ctx_row] * rows)


def example_row(model: ImplicitModel) -> tuple[torch.Tensor, Ctx]:
    """The model's example input as one row: (y0, ctx)."""
    if model.example_input is None:
        raise ValueError(f"model {model.name} has no example input to warm its step on")
    ctx = model.encode(model.Input.model_validate(model.example_input))
    return model.init(ctx), ctx


WARM_SIZES = (1, 2, 16)
"""Batch sizes warmed besides the largest: torch specialises 1; 2 compiles the symbolic batch graph;
convolutions guard on batch ranges (on CPUs, 2–15 and 16 on), so 16 takes the second."""


def compiled_step(
    model: ImplicitModel, max_rows: int, rows: Sequence[tuple[torch.Tensor, Ctx]] | None = None
) -> CompiledStep:
    """The model's step compiled at load for batches of up to `max_rows` rows, warmed on copies of each
    of `rows` (y (1, *S), ctx; default: the model's example input) at WARM_SIZES and `max_rows`.
    Rows of two or more state shapes make torch compile the shapes that differ as symbolic too;
    a shape no warmed graph covers runs eager."""
    step = CompiledStep(model)
    sizes = sorted({s for s in WARM_SIZES if s < max_rows} | {max_rows})
    step.warm([batch_of(model, y, ctx, s) for y, ctx in rows or [example_row(model)] for s in sizes])
    return step
