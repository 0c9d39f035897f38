"""Step runners: up to k steps of a batch, every row's stop rule decided every step.

`run(batch, k, active, interrupt)` steps the whole batch up to k times. A row of `active` that stops
(converged, max_iters, diverged) stops at exactly that step, with the iterate and counts a run of one
step at a time gives; rows that stopped are no longer decided for (their slots may go on computing:
they are retired once the run is over). What comes back is one `RunOut`.

- `HostRunner`, where the device is the host (a CPU): each step's residuals are read back at no
  cost, so the host decides every row each step (`decide_row`) and a run ends as soon as no row is
  left or a newcomer waits (`interrupt`).
- `DeviceRunner`, for accelerators: the decisions stay on the device (`decide`), stopped rows are
  frozen there, and the run reads back once at its end.
- `EpilogueRunner`: the device runner whose step is any model's G-step followed by the fused solver
  epilogue (damping, residuals, decision, frozen rows in one Triton launch);
- `DenseRunner`: the device runner whose whole step is the dense family's fused Triton kernel.

`choose` picks one when a batch is built, never per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from eqserve.engine.batch import Batch
from eqserve.kernels.dispatch import Backend, dense_picard_step, solver_epilogue
from eqserve.kernels.reference import Stop, decide, decide_row
from eqserve.models.base import ImplicitModel

Advanced = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""One device step: the new state (frozen rows unchanged), abs and rel residuals, stop codes."""


@dataclass
class RunOut:
    """What a run did: steps taken, which rows stopped (slot, code, step 1…steps) with their last
    state, and every step's residuals per slot (abs[j][i] after step j + 1)."""

    steps: int
    stops: list[tuple[int, Stop, int]] = field(default_factory=list)
    final: dict[int, torch.Tensor] = field(default_factory=dict)
    """A stopped slot's state (1, n) at its stop (the batch's state may have moved on since)."""
    abs: list[list[float]] = field(default_factory=list)
    rel: list[list[float]] = field(default_factory=list)


class StepRunner(Protocol):
    """Runs a batch up to k steps; the batch's state, solver state and counts move on in place."""

    def run(self, batch: Batch, k: int, active: list[int], interrupt: Callable[[], bool]) -> RunOut: ...


class HostRunner:
    """The CPU runner: step, residuals, solver update, and the host's decision for each active row."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def run(self, batch: Batch, k: int, active: list[int], interrupt: Callable[[], bool]) -> RunOut:
        """Up to k steps; ends early once no active row is left or `interrupt()` says a newcomer waits."""
        y, solver = batch.y, batch.solver
        assert y is not None and solver is not None
        iters, first, max_iters = batch.iters, batch.first_res, batch.max_iters
        tol, rel_mode = batch.tol, batch.rel_mode
        # Without a history the new state is a damped step of two finite states, sound exactly when
        # the residual is; and β = 1 everywhere makes it G(y) itself, with no update to run.
        history, undamped = solver.hist is not None, batch.undamped
        out = RunOut(0)
        s: list[float] = [0.0] * len(batch)
        for step in range(1, k + 1):
            gy = batch.g(y)
            abs_res, rel_res = batch.residuals(y, gy)
            y = gy if undamped else solver.update(y, gy, self.backend)
            a, r = abs_res.tolist(), rel_res.tolist()
            if history:
                s = y.sum(1).tolist()
            out.abs.append(a)
            out.rel.append(r)
            going = []
            for i in active:
                n = iters[i] = iters[i] + 1
                if n == 1:
                    first[i] = a[i]
                code = decide_row(a[i], r[i], s[i], first[i], n, max_iters[i], tol[i], rel_mode[i])
                if code:
                    out.stops.append((i, code, step))
                    out.final[i] = y[i : i + 1]
                else:
                    going.append(i)
            active = going
            out.steps = step
            if not active or interrupt():
                break
        batch.y = y
        return out


class DeviceRunner:
    """The accelerator runner: every step's decisions on the device, stopped rows frozen there, and
    one read back per run (a CPU runs it too, which is how it is tested against the host runner)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def advance(self, batch: Batch, y: torch.Tensor, c: _Counts, going: torch.Tensor) -> Advanced:
        """One step of the rows `going` (the others frozen): (y, abs, rel, code), c's counts advanced."""
        assert batch.solver is not None
        gy = batch.g(y)
        abs_res, rel_res = batch.residuals(y, gy)
        y_next = batch.solver.update(y, gy, self.backend)
        iters = c.iters + 1
        first = torch.where(iters == 1, abs_res.double(), c.first)
        code = decide(abs_res, rel_res, y_next, first, iters, c.max_iters, c.tol, c.rel_mode)
        c.iters, c.first = torch.where(going, iters, c.iters), torch.where(going, first, c.first)
        return torch.where(going.unsqueeze(1), y_next, y), abs_res, rel_res, code

    def run(self, batch: Batch, k: int, active: list[int], interrupt: Callable[[], bool]) -> RunOut:
        """k steps (a device cannot end a run early without reading back)."""
        y = batch.y
        assert y is not None
        c = _Counts.upload(batch)
        going = torch.zeros(len(batch), dtype=torch.bool, device=y.device)
        going[active] = True
        stop_code = torch.zeros(len(batch), dtype=torch.long, device=y.device)
        stop_step = torch.zeros(len(batch), dtype=torch.long, device=y.device)
        logs = []
        for step in range(1, k + 1):
            y, abs_res, rel_res, code = self.advance(batch, y, c, going)
            stopped = going & (code != Stop.RUNNING)
            stop_code = torch.where(stopped, code, stop_code)
            stop_step = torch.where(stopped, step, stop_step)
            going = going & ~stopped
            logs.append(torch.stack([abs_res.double(), rel_res.double()]))
        batch.y = y
        codes, steps, iters = torch.stack([stop_code, stop_step, c.iters]).tolist()
        first = c.first.tolist()
        res = torch.stack(logs).tolist()
        out = RunOut(k, abs=[s[0] for s in res], rel=[s[1] for s in res])
        for i in active:
            batch.iters[i], batch.first_res[i] = iters[i], first[i]
            if codes[i]:
                out.stops.append((i, Stop(codes[i]), steps[i]))
                out.final[i] = y[i : i + 1]
        return out


class EpilogueRunner(DeviceRunner):
    """The device runner for a Picard batch of any model: after the model's step, damping, residuals,
    counts, decision and freezing are one fused solver epilogue."""

    def advance(self, batch: Batch, y: torch.Tensor, c: _Counts, going: torch.Tensor) -> Advanced:
        """The model's step, then the epilogue."""
        assert batch.solver is not None
        zero, gy = torch.zeros(len(batch), device=y.device), batch.g(y, masked=False)
        o = solver_epilogue(
            y, gy, batch.mask, batch.solver.beta, c.tol, c.rel_mode, c.iters, c.max_iters, c.first,
            torch.zeros_like(c.iters), zero, zero, going, self.backend,
        )  # fmt: skip
        c.iters, c.first = o.iters, o.first_res
        return o.y, o.abs_res, o.rel_res, o.code


class DenseRunner(DeviceRunner):
    """The device runner for a Picard batch of a model with a `dense_form`: step, residuals, update and
    decision are one fused kernel."""

    def advance(self, batch: Batch, y: torch.Tensor, c: _Counts, going: torch.Tensor) -> Advanced:
        """One fused step; the rows not going keep their state and counts."""
        dense = batch.model.dense_form(batch.ctx)
        assert dense is not None and batch.solver is not None
        o = dense_picard_step(
            y, *dense, batch.solver.beta, c.tol, c.rel_mode, c.iters, c.max_iters, c.first, self.backend,
            invariant=batch.invariant,
        )  # fmt: skip
        c.iters, c.first = torch.where(going, o.iters, c.iters), torch.where(going, o.first_res, c.first)
        return torch.where(going.unsqueeze(1), o.y, y), o.abs_res, o.rel_res, o.code


@dataclass
class _Counts:
    """A batch's per-row counts and budget as device tensors, for one run."""

    iters: torch.Tensor
    first: torch.Tensor
    max_iters: torch.Tensor
    tol: torch.Tensor
    rel_mode: torch.Tensor

    @staticmethod
    def upload(batch: Batch) -> _Counts:
        dev = batch.device
        return _Counts(
            torch.tensor(batch.iters, dtype=torch.long, device=dev),
            torch.tensor(batch.first_res, dtype=torch.float64, device=dev),
            torch.tensor(batch.max_iters, dtype=torch.long, device=dev),
            torch.tensor(batch.tol, dtype=torch.float64, device=dev),
            torch.tensor(batch.rel_mode, dtype=torch.bool, device=dev),
        )


def choose(model: ImplicitModel, batch: Batch, backend: Backend) -> StepRunner:
    """The runner for this batch. On the Triton backend, Picard batches run fused: the whole step for
    a dense-family model, the solver epilogue after any other model's step (not in batch-invariant
    mode, whose residual norms the epilogue does not take). Otherwise the device runner on an
    accelerator, the host runner on a CPU."""
    picard_only = batch.solver is not None and batch.solver.X is None
    if backend == "triton" and picard_only:
        if model.dense_form(batch.ctx) is not None:
            return DenseRunner(backend)
        if not batch.invariant and not batch.rowwise:
            return EpilogueRunner(backend)
    if batch.device.type != "cpu":
        return DeviceRunner(backend)
    return HostRunner(backend)
