"""The engine's entry to the kernels: which backend serves a model, and one API over both backends.

`triton` runs the fused kernels (CUDA, or the CPU under TRITON_INTERPRET=1 for tests); `torch`
runs the references in kernels/reference.py, which are also the CPU path. Both give the same
statuses and iteration counts, and outputs within dtype tolerance. The Triton modules are imported
on first use, so that this module imports without Triton and TRITON_INTERPRET may be set until then.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Literal

import torch

from eqserve.kernels import reference
from eqserve.kernels.reference import SolveOut, StepOut

Backend = Literal["triton", "torch"]

CHOICES = ("auto", "triton", "torch")
"""What `--kernels` / EQSERVE_KERNELS accept."""

Solver = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], SolveOut
]
"""A whole-batch solve: (y0, inj, beta, tol, rel_mode, max_iters) → SolveOut, per-row budgets."""


@functools.cache
def triton_available() -> bool:
    """Whether Triton imports (it is not installed on macOS, say)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


def select_backend(requested: str, device: torch.device | str, supported: bool = True) -> Backend:
    """The backend for a model on `device`: `auto` picks Triton where CUDA is present, Triton is
    installed and the model has a fused kernel (`supported`), else torch; `triton` insists and
    raises ValueError where it cannot run (no CUDA unless TRITON_INTERPRET=1, no Triton, no kernel)."""
    if requested not in CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested == "torch":
        return "torch"
    cuda = torch.device(device).type == "cuda"
    if requested == "auto":
        return "triton" if cuda and supported and triton_available() else "torch"
    if not supported:
        raise ValueError("kernels=triton: this model has no fused kernel")
    if not triton_available():
        raise ValueError("kernels=triton: Triton is not installed")
    if not (cuda or interpreting()):
        raise ValueError(f"kernels=triton needs a CUDA device (or TRITON_INTERPRET=1), got {device}")
    return "triton"


def dense_picard_step(
    y: torch.Tensor,
    w: torch.Tensor,
    inj: torch.Tensor,
    beta: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
    iters: torch.Tensor,
    max_iters: torch.Tensor,
    first_res: torch.Tensor,
    backend: Backend,
    *,
    tuned: bool = False,
    invariant: bool = False,
) -> StepOut:
    """One step of the dense family for every row: `reference.dense_picard_step`'s semantics.

    y (B, n) fp32 or bf16; w (n, n); inj (B, n); beta (B, 1); tol float64 (B,); rel_mode bool (B,);
    iters, max_iters int64 (B,); first_res float64 (B,), taken from this step's residual where
    iters + 1 == 1. Returns (y, abs_res, rel_res, code, iters, first_res), all new tensors.
    `tuned` picks the autotuned launcher (CUDA only; its first call per shape times every config);
    `invariant` the batch-invariant launch (Triton only: the torch reference is not).
    """
    if backend == "torch":
        if invariant:
            raise ValueError("the batch-invariant dense step needs the Triton backend")
        return reference.dense_picard_step(y, w, inj, beta, tol, rel_mode, iters, max_iters, first_res)
    from eqserve.kernels import dense_step

    return dense_step.step(
        y, w, inj, beta, tol, rel_mode, iters, max_iters, first_res, tuned=tuned, invariant=invariant
    )


def dense_solver(w: torch.Tensor, backend: Backend, *, steps_per_replay: int = 8) -> Solver:
    """A whole-batch solver with weights W: the torch reference; or the persistent kernel where the
    state is small enough (`kernels.persistent.fits`), else the CUDA-graph runner (K = steps_per_replay,
    built at its first use and kept: W must stay where it is)."""
    if backend == "torch":
        return lambda y0, inj, beta, tol, rel_mode, max_iters: reference.dense_solve(
            y0, w, inj, beta, tol, rel_mode, max_iters
        )
    from eqserve.kernels import persistent
    from eqserve.kernels.graph_runner import GraphRunner

    runners: list[GraphRunner] = []

    def solve(
        y0: torch.Tensor,
        inj: torch.Tensor,
        beta: torch.Tensor,
        tol: torch.Tensor,
        rel_mode: torch.Tensor,
        max_iters: torch.Tensor,
    ) -> SolveOut:
        if persistent.fits(w.shape[0], w.dtype, y0.dtype):
            return persistent.solve(y0, w, inj, beta, tol, rel_mode, max_iters)
        if not runners:
            runners.append(GraphRunner(w, steps_per_replay=steps_per_replay))
        return runners[0](y0, inj, beta, tol, rel_mode, max_iters)

    return solve


def solver_epilogue(
    y: torch.Tensor,
    gy: torch.Tensor,
    mask: torch.Tensor | None,
    beta: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
    iters: torch.Tensor,
    max_iters: torch.Tensor,
    first_res: torch.Tensor,
    code: torch.Tensor,
    abs_res: torch.Tensor,
    rel_res: torch.Tensor,
    active: torch.Tensor,
    backend: Backend,
) -> StepOut:
    """`reference.solver_epilogue` after any model's G-step: the damped update, residuals, counters and
    stop codes of the active rows, the others frozen. Returns (y, abs_res, rel_res, code, iters,
    first_res), all new tensors; a multi-step runner that keeps its buffers calls
    `kernels.epilogue.launch`, which updates them in place."""
    if backend == "torch":
        return reference.solver_epilogue(
            y, gy, mask, beta, tol, rel_mode, iters, max_iters, first_res, code, abs_res, rel_res, active
        )
    from eqserve.kernels import epilogue

    return epilogue.step(
        y, gy, mask, beta, tol, rel_mode, iters, max_iters, first_res, code, abs_res, rel_res, active
    )
