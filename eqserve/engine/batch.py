"""The tensors of one model's batch: the rows' states, their solver state and the batch context.

States of any shape share the batch flat, (B, prod(S)), S the per-axis bound of the rows' shapes
(`eqserve.models.padding`); while shapes differ, `mask` marks each row's own entries and G(y) is
zeroed outside them, so padding never counts in a residual. The per-row budget and counters stay in
Python lists: the host reads them every step on a CPU, and a device runner uploads them once a run.

In batch-invariant mode a row's bits do not depend on its mates: a model that declares
`batch_invariant` steps the batch inside `invariant.mode(True)`; any other model steps each row alone,
at its own shape with its own context (a batch of one is invariant by construction); the residual
norms ignore the padding and the batch (`invariant.residuals`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eqserve.engine.job import Resume, SolveJob
from eqserve.kernels import invariant
from eqserve.kernels.reference import residuals
from eqserve.models.base import Ctx, ImplicitModel
from eqserve.models.padding import Shape, bound, fits, pack, pad_mask, refit, unpack
from eqserve.solvers import SolverState


class Batch:
    """One model's batch; slot i of every tensor and list is the scheduler's slot i."""

    def __init__(
        self,
        model: ImplicitModel,
        invariant: bool = False,
        step: Callable[[torch.Tensor, Ctx], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.step = step or model.step
        self.device = model.device()
        self.invariant = invariant
        self.rowwise = invariant and not type(model).batch_invariant
        """Whether G steps each row alone (batch-invariant mode for a model that does not declare it)."""
        self.clear()

    def clear(self) -> None:
        """No rows."""
        self.y: torch.Tensor | None = None
        self.solver: SolverState | None = None
        self.ctx: Ctx = {}
        self.shape: Shape = ()
        self.shapes: list[Shape] = []
        self.mask: torch.Tensor | None = None
        self.iters: list[int] = []
        """G-evaluations each row has had, over all legs of an extended solve."""
        self.first_res: list[float] = []
        self.max_iters: list[int] = []
        self.tol: list[float] = []
        self.rel_mode: list[bool] = []
        self.own: list[Ctx] = []
        """Each row's own collated context, kept while G steps rows alone."""
        self.undamped = False
        """Whether every row is a Picard row with β = 1, so the new state is G(y) itself."""

    def __len__(self) -> int:
        return len(self.iters)

    def g(self, y: torch.Tensor, masked: bool = True) -> torch.Tensor:
        """G(y) of the whole batch, flat, zero outside each row's own entries (`masked`; else the
        caller applies `mask`)."""
        if self.rowwise:
            rows = [self.row(y, i, s) for i, s in enumerate(self.shapes)]
            return pack([self.model.step(r, c) for r, c in zip(rows, self.own, strict=True)], self.shape)
        if self.invariant:
            with invariant.mode(True):
                gy = self._g(y)
        else:
            gy = self._g(y)
        return gy if self.mask is None or not masked else torch.where(self.mask, gy, 0.0)

    def _g(self, y: torch.Tensor) -> torch.Tensor:
        if len(self.shape) == 1:  # the flat batch is already (B, n): no view and reshape a step
            return self.step(y, self.ctx)
        return self.step(y.view(y.shape[0], *self.shape), self.ctx).reshape(y.shape)

    def residuals(self, y: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row abs and rel residuals (`reference.residuals`; padding- and batch-proof when invariant)."""
        return invariant.residuals(y, gy, self.shape) if self.invariant else residuals(y, gy)

    def row(self, y: torch.Tensor, i: int, shape: Shape) -> torch.Tensor:
        """Row i of a flat batch state `y` as its own (1, *shape) state (a view where it can be)."""
        return unpack(y[i : i + 1], self.shape, shape)

    def resume(self, i: int, y_row: torch.Tensor, iterations: int, trace: list[dict[str, float]]) -> Resume:
        """What row i needs to go on later from `y_row`, its state (1, *shape)."""
        assert self.solver is not None
        shape = tuple(y_row.shape[1:])
        idx = torch.tensor([i], device=self.device)
        solver = self.solver.select(idx).fit(self.shape, shape)
        return Resume(y_row.clone(), solver, iterations, self.first_res[i], trace)

    def placeable(self, jobs: list[SolveJob]) -> bool:
        """Whether `jobs` can take over retired slots (and append past them) without a rebuild: new
        solves that fit the batch's shape and history, and a row-aligned model context."""
        solver = self.solver
        if solver is None or not self.model.row_aligned or any(j.resume is not None for j in jobs):
            return False
        slots = 0 if solver.hist is None else solver.hist.shape[1]  # a history of m needs m + 1 slots
        fit = all(fits(j.shape, self.shape) and (j.m + 1 <= slots if j.m else True) for j in jobs)
        return fit and self.model.placeable(self.ctx, [j.ctx for j in jobs])

    def place(self, slots: list[int], jobs: list[SolveJob]) -> list[int]:
        """Put new solves into retired `slots` (as many as there are) and append the rest; their slots."""
        assert self.y is not None and self.solver is not None
        k = len(slots)
        dev = self.device
        new_y = pack([j.start for j in jobs], self.shape)
        if k:  # the state by a copy, not in place: streamed iterates may hold views of it
            idx = torch.tensor(slots, device=dev)
            self.y = self.y.index_copy(0, idx, new_y[:k])
            beta = torch.tensor([[j.damping] for j in jobs[:k]], dtype=new_y.dtype, device=dev)
            m = torch.tensor([j.m for j in jobs[:k]], device=dev)
            self.solver.restart(idx, beta, m, _methods(jobs[:k]))
            self.model.place(self.ctx, idx, [j.ctx for j in jobs[:k]])
            for slot, job in zip(slots, jobs, strict=False):
                self._set_counts(slot, job)
                self.shapes[slot] = job.shape
                if self.rowwise:
                    self.own[slot] = self.model.collate([job.ctx])
        rest = jobs[k:]
        if rest:
            self.y = torch.cat([self.y, new_y[k:]])
            added = SolverState.new([j.damping for j in rest], [j.m for j in rest], new_y[k:], _methods(rest))
            self.solver = self.solver.concat(added)
            self.ctx = self.model.rebatch(self.ctx, None, [], [j.ctx for j in rest])
            self._append_counts(rest)
            self.shapes += [j.shape for j in rest]
            self.own += self._own(rest)
        self._remask()
        return [*slots, *range(len(self) - len(rest), len(self))]

    def rebuild(self, keep: list[int], kept: list[SolveJob], jobs: list[SolveJob]) -> None:
        """Keep slots `keep` (ascending; `kept` their jobs), append `jobs` (new solves first), re-collate."""
        if not keep and not jobs:
            self.clear()
            return
        everyone = len(keep) == len(self)
        old_shape, shape = self.shape, bound([j.shape for j in kept + jobs])
        dev = self.device
        idx = None if everyone or not keep else torch.tensor(keep, device=dev)
        solver = None
        if keep:
            assert self.y is not None and self.solver is not None
            y = self.y if idx is None else self.y.index_select(0, idx)
            y = refit(y, old_shape, shape)
            solver = (self.solver if idx is None else self.solver.select(idx)).fit(old_shape, shape)
            lists = [self.iters, self.first_res, self.max_iters, self.tol, self.rel_mode]
            self.iters, self.first_res, self.max_iters, self.tol, self.rel_mode = (
                [v[i] for i in keep] for v in lists
            )
        else:
            y = None
            self.iters, self.first_res, self.max_iters, self.tol, self.rel_mode = [], [], [], [], []
        if jobs:
            new_y = pack([j.start for j in jobs], shape)
            y = new_y if y is None else torch.cat([y, new_y])
            plain = [j for j in jobs if j.resume is None]
            if plain:
                beta, m = [j.damping for j in plain], [j.m for j in plain]
                added = SolverState.new(beta, m, new_y[: len(plain)], _methods(plain))
                solver = solver.concat(added) if solver else added
            for j in jobs[len(plain) :]:
                assert j.resume is not None
                resumed = j.resume.solver.fit(j.shape, shape)  # a resumed history is laid out for its row
                solver = solver.concat(resumed) if solver else resumed
            self._append_counts(jobs)
        self.y, self.solver, self.shape = y, solver, shape
        kept_ctxs, new_ctxs = [j.ctx for j in kept], [j.ctx for j in jobs]
        self.ctx = self.model.rebatch(self.ctx if keep else {}, idx, kept_ctxs, new_ctxs)
        self.shapes = [j.shape for j in kept + jobs]
        self.own = [self.own[i] for i in keep] + self._own(jobs) if self.rowwise else []
        self._remask()

    def _set_counts(self, slot: int, job: SolveJob) -> None:
        self.iters[slot], self.first_res[slot] = (0, 0.0) if job.resume is None else (
            job.resume.iterations, job.resume.first_res
        )
        self.max_iters[slot], self.tol[slot], self.rel_mode[slot] = job.max_iters, job.tol, job.rel_mode

    def _append_counts(self, jobs: list[SolveJob]) -> None:
        for job in jobs:
            self.iters.append(0)
            self.first_res.append(0.0)
            self.max_iters.append(0)
            self.tol.append(0.0)
            self.rel_mode.append(False)
            self._set_counts(len(self.iters) - 1, job)

    def _own(self, jobs: list[SolveJob]) -> list[Ctx]:
        return [self.model.collate([j.ctx]) for j in jobs] if self.rowwise else []

    def _remask(self) -> None:
        solver = self.solver
        self.undamped = solver is not None and solver.hist is None and bool(solver.beta.eq(1.0).all())
        mixed = any(s != self.shape for s in self.shapes)
        self.mask = pad_mask(self.shapes, self.shape, self.device) if mixed else None


def _methods(jobs: list[SolveJob]) -> list[str]:
    """Each job's update rule (set once the job exists)."""
    return [j.method or "picard" for j in jobs]
