"""One worker per model: iteration-level continuous batching of fixed-point solves.

Each tick the worker admits waiting requests into free rows, runs one G-step and solver update
for every active row, takes every row's stop decision on the device, reads back one small
tensor, and retires the rows that stopped. A request joins and leaves the batch at any tick.

A retired row leaves its slot in the batch tensors for a while: a request that arrives then takes
the slot over with one `index_copy` per tensor, where compacting the batch and appending would cost
a select and a concatenation per tensor. Empty slots are still computed, so they are compacted
away once the steps they have cost since they emptied reach what a compaction costs (both measured:
the rent-or-buy rule, never more than twice the better choice), and at the latest after
`COMPACT_AFTER_TICKS` ticks.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch

from eqserve.kernels.dispatch import Backend, dense_picard_step
from eqserve.kernels.reference import Stop, decide, residuals
from eqserve.models.base import Ctx, ImplicitModel
from eqserve.models.padding import Shape, bound, fits, pack, pad_mask, refit, unpack
from eqserve.service.arrays import Encoding, encode_state
from eqserve.service.solvers import SolverState
from eqserve.service.throughput import Throughput

log = logging.getLogger(__name__)

Batching = Literal["continuous", "static"]

COMPACT_AFTER_TICKS = 16
"""Most ticks a retired row's slot waits for a newcomer before the batch is compacted."""


class QueueFull(Exception):
    """The waiting queue is at its bound; the client should retry after `retry_after` s."""

    def __init__(self, model: str, retry_after: float) -> None:
        super().__init__(f"model {model!r} has too many waiting requests")
        self.retry_after = retry_after


class EngineClosed(Exception):
    """The model is being unloaded or replaced: its engine takes no new solves."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is being unloaded")


class ModelStepError(Exception):
    """The model raised inside its step; every request of that tick fails with this."""

    def __init__(self, model: str, cause: BaseException) -> None:
        super().__init__(f"model {model!r} failed in its step: {type(cause).__name__}: {cause}")
        self.model = model


class EngineObserver(Protocol):
    """Receives the engine's events (metrics); called on the worker thread, so it must be quick."""

    def admitted(self, job: SolveJob, wait_s: float) -> None: ...
    def first_iterate(self, job: SolveJob, since_submit_s: float) -> None: ...
    def tick(self, seconds: float, rows: int) -> None: ...
    def finished(self, job: SolveJob, result: SolveResult) -> None: ...


class NullObserver:
    """Ignores every event."""

    def admitted(self, job: SolveJob, wait_s: float) -> None:
        """Nothing."""

    def first_iterate(self, job: SolveJob, since_submit_s: float) -> None:
        """Nothing."""

    def tick(self, seconds: float, rows: int) -> None:
        """Nothing."""

    def finished(self, job: SolveJob, result: SolveResult) -> None:
        """Nothing."""


IterateHook = Callable[[int, float, float, torch.Tensor | None], None]
"""Called on the worker as hook(t, residual, rel_residual, y) every `every` iterations; y is a
(1, *state_shape) view of the state, or None when the job's `iterate_y` says the hook does not look at it."""


@dataclass
class Resume:
    """Where a solve stopped on its budget, so that it can go on: state, solver history, counts."""

    y: torch.Tensor
    solver: SolverState
    iterations: int
    first_res: float
    trace: list[dict[str, float]]


@dataclass
class SolveJob:
    """One accepted request: its encoded context, start state, budget and solver options."""

    id: str
    ctx: Ctx
    y0: torch.Tensor
    max_iters: int
    tol: float
    rel_mode: bool = False
    timeout_s: float | None = None
    damping: float = 1.0
    m: int = 0
    trace: bool = False
    every: int = 1
    return_state: bool = False
    state_encoding: Encoding = "list"
    on_iterate: IterateHook | None = None
    iterate_y: bool = True
    stride: int = 1
    """`on_iterate` gets every (every·stride)-th iterate and the last one; its stream sets the stride
    while it is handed more iterates than it can send, and a huge one while its client reads nothing."""
    resume: Resume | None = None
    submitted: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    _cancelled: bool = field(default=False, repr=False)

    cancellations: ClassVar[int] = 0
    """Counts every job ever cancelled, so that a worker rescans its rows only when it moved."""

    @property
    def cancelled(self) -> bool:
        """Whether the client cancelled (or left); the worker stops the row at its next tick."""
        return self._cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        self._cancelled = value
        if value:
            SolveJob.cancellations += 1

    @property
    def deadline(self) -> float:
        """Monotonic time past which the solve stops with status `deadline`."""
        return math.inf if self.timeout_s is None else self.submitted + self.timeout_s

    @property
    def start(self) -> torch.Tensor:
        """The state the row starts from: y0, or where an extended solve stopped."""
        return self.y0 if self.resume is None else self.resume.y

    @property
    def shape(self) -> Shape:
        """This request's state shape (one row's, without the leading 1)."""
        return tuple(self.y0.shape[1:])


@dataclass
class SolveResult:
    """What a finished solve reports."""

    id: str
    status: str
    iterations: int
    residual: float | None
    rel_residual: float | None
    output: dict[str, Any] | None
    trace: list[dict[str, float]] | None
    state: Any
    """The final state as `encode_state` gives it (None unless asked for)."""
    queue_ms: float
    solve_ms: float
    resume: Resume | None = None


RESUMABLE = (Stop.MAX_ITERS, Stop.DEADLINE)
"""Statuses after which a solve may be extended."""


@dataclass
class _Row:
    """A job in the batch: its counters, its size and deadline read once, its trace.

    `iterations` is brought up to date only when the row is visited (`offset` + the engine's tick
    count gives it), so that a tick costs nothing per row that neither stops nor streams.
    """

    job: SolveJob
    admitted: float
    iterations: int = 0
    offset: int = 0
    shape: Shape = field(init=False)
    deadline: float = field(init=False)
    watched: bool = field(init=False)
    residual: float | None = None
    rel_residual: float | None = None
    held: bool = False
    trace: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shape = self.job.shape
        self.deadline = self.job.deadline
        self.watched = self.job.trace or self.job.on_iterate is not None

    @property
    def new_solve(self) -> bool:
        """Whether the row starts a solve (its first iterate is next), rather than extending one that
        brings its own solver history: only new solves take over a retired row's slot."""
        return self.job.resume is None


class Engine:
    """The batching worker of one model, fed by `submit` from any thread."""

    def __init__(
        self,
        model: ImplicitModel,
        *,
        max_batch_rows: int = 64,
        max_queue: int = 256,
        batching: Batching = "continuous",
        backend: Backend = "torch",
        torch_threads: int = 0,
    ) -> None:
        self.model = model
        self.backend = backend
        self.torch_threads = torch_threads
        self.name = model.name
        self.max_batch_rows = max_batch_rows
        self.max_queue = max_queue
        self.batching = batching
        self._waiting: deque[SolveJob] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._rows: list[_Row | None] = []
        self._dead: list[int] = []
        self._died: list[int] = []
        self._fresh: list[int] = []
        self._watched: list[int] = []
        self._next_deadline = math.inf
        self._cancellations = 0
        self._held: list[tuple[_Row, SolveResult]] = []
        self._throughput = Throughput()
        self._row_s = 0.0
        """Seconds one row costs a tick (moving average over ticks)."""
        self._rebuild_s = 1e-4
        """Seconds a rebuild of the batch costs (moving average over rebuilds)."""
        self.ticks = 0
        self.last_tick_rows = 0
        self._busy_since: float | None = None
        """monotonic() when the worker began its current admissions and tick; None between them."""
        self.observer: EngineObserver = NullObserver()
        self._t: dict[str, torch.Tensor] = {}
        self._solver: SolverState | None = None
        self._bctx: Ctx = {}
        self._shape: Shape = ()
        """The batch's state shape: the per-axis maximum of its rows' shapes."""
        self._mask: torch.Tensor | None = None
        """(B, prod(shape)) True on each row's own entries, while rows of different shapes share the
        batch; G(y) is zeroed outside them, so padding never counts in a residual."""
        self._device = model.device()

    # -- outside the worker ------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker; requests still waiting or running fail as cancelled."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy_s(self) -> float:
        """Seconds the worker has spent in its current admissions and tick (0 while it waits): a model
        whose step hangs shows here, while the thread itself is still alive."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def waiting(self) -> int:
        """Requests accepted but not yet in the batch."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests in the batch (retired rows' slots do not count)."""
        return len(self._rows) - len(self._dead)

    def close(self) -> None:
        """Take no new solves (`submit` raises EngineClosed); those accepted go on to their answers."""
        with self._cond:
            self._closed = True

    @property
    def idle(self) -> bool:
        """Whether no solve is waiting or running."""
        return not self._waiting and not self.running

    def submit(self, job: SolveJob) -> Future:
        """Queue a job; raises QueueFull at once when the waiting queue is at its bound, EngineClosed once
        the engine is closed."""
        with self._cond:
            if self._closed:
                raise EngineClosed(self.name)
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(self.name, self._throughput.retry_after(len(self._waiting)))
            self._waiting.append(job)
            self._cond.notify()
        return job.future

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        if self.torch_threads:  # intra-op threads are set per calling thread
            torch.set_num_threads(self.torch_threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self.running and not self._waiting:
                        self._cond.wait()
                    if self._stopping:
                        break
                    admitted = self._take_admissions()
                self._busy_since = time.monotonic()
                self._admit(admitted)
                if self._rows:
                    self._tick()
                self._busy_since = None
        self._fail_all(Stop.CANCELLED)

    def _take_admissions(self) -> list[SolveJob]:
        free = self.max_batch_rows - self.running
        if self.batching == "static" and self.running:
            free = 0
        taken: list[SolveJob] = []
        while free > 0 and self._waiting:
            taken.append(self._waiting.popleft())
            free -= 1
        return taken

    def _admit(self, jobs: list[SolveJob]) -> None:
        """Admit `jobs`: into retired rows' slots where they fit, else by one rebuild of the batch that
        also compacts the empty slots once they have cost as much as that (see the module's note)."""
        now = time.monotonic()
        fresh: list[_Row] = []
        for job in jobs:
            base = 0 if job.resume is None else job.resume.iterations
            row = _Row(job, admitted=now, iterations=base, offset=self.ticks - base)
            self.observer.admitted(job, now - job.submitted)
            if job.resume is not None:
                row.trace = list(job.resume.trace)
            if job.cancelled:
                self._finish(row, Stop.CANCELLED, job.start)
            elif now >= job.deadline:
                self._finish(row, Stop.DEADLINE, job.start)
            else:
                fresh.append(row)
        stale = bool(self._died) and (
            self.ticks - self._died[0] >= COMPACT_AFTER_TICKS
            or self._row_s * sum(self.ticks - d for d in self._died) >= self._rebuild_s
        )
        if fresh and not stale and self._placeable(fresh):
            self._place(fresh)
        elif fresh or stale:
            self._rebuild([i for i, r in enumerate(self._rows) if r is not None], fresh)

    def _placeable(self, fresh: list[_Row]) -> bool:
        """Whether `fresh` can take over retired slots (and append past them) without a rebuild:
        new solves that fit the batch's width and history, and a row-aligned model context."""
        solver = self._solver
        if solver is None or not self.model.row_aligned or not all(r.new_solve for r in fresh):
            return False
        slots = 0 if solver.hist is None else solver.hist.shape[1]
        fit = all(fits(r.shape, self._shape) and r.job.m <= slots for r in fresh)
        return fit and self.model.placeable(self._bctx, [r.job.ctx for r in fresh])

    def _place(self, fresh: list[_Row]) -> None:
        """Put `fresh` rows into retired slots (oldest first) and append those left over."""
        k = min(len(fresh), len(self._dead))
        slots, self._dead, self._died = self._dead[:k], self._dead[k:], self._died[k:]
        jobs = [r.job for r in fresh]
        new_t = self._new_rows(jobs, self._shape)
        assert self._solver is not None
        t, solver, bctx = self._t, self._solver, self._bctx
        if k:  # in place, but for y: streamed iterates may hold views of the last tick's state
            dev = self._device
            idx = torch.tensor(slots, device=dev)
            for name, v in t.items():
                if name != "y":
                    v.index_copy_(0, idx, new_t[name][:k])
            t["y"] = t["y"].index_copy(0, idx, new_t["y"][:k])
            beta = torch.tensor([[j.damping] for j in jobs[:k]], dtype=new_t["y"].dtype, device=dev)
            solver.restart(idx, beta, torch.tensor([j.m for j in jobs[:k]], device=dev))
            self.model.place(bctx, idx, [j.ctx for j in jobs[:k]])
        if len(fresh) > k:
            rest = jobs[k:]
            t = {name: torch.cat([v, new_t[name][k:]]) for name, v in t.items()}
            added = SolverState.new([j.damping for j in rest], [j.m for j in rest], new_t["y"][k:])
            solver = solver.concat(added)
            bctx = self.model.rebatch(bctx, None, [], [j.ctx for j in rest])
        self._t, self._solver, self._bctx = t, solver, bctx
        for slot, row in zip(slots, fresh, strict=False):
            self._rows[slot] = row
        self._rows.extend(fresh[k:])
        self._fresh = [*slots, *range(len(self._rows) - len(fresh) + k, len(self._rows))]
        self._index_rows()

    def _index_rows(self) -> None:
        """What a tick reads instead of scanning every row: watched rows, the next deadline, the mask."""
        live = [(i, r) for i, r in enumerate(self._rows) if r is not None]
        self._watched = [i for i, r in live if r.watched]
        self._next_deadline = min((r.deadline for _, r in live), default=math.inf)
        shapes = [self._shape if r is None else r.shape for r in self._rows]
        mixed = any(s != self._shape for s in shapes)
        self._mask = pad_mask(shapes, self._shape, self._device) if mixed else None

    def _new_rows(self, jobs: list[SolveJob], shape: Shape) -> dict[str, torch.Tensor]:
        """Per-row tensors of `jobs` (start state laid out for `shape`, budgets, solver options)."""
        dev = self._device
        done = [(0, 0.0) if j.resume is None else (j.resume.iterations, j.resume.first_res) for j in jobs]
        return {
            "y": pack([j.start for j in jobs], shape),
            "iters": torch.tensor([d[0] for d in done], dtype=torch.long, device=dev),
            "max_iters": torch.tensor([j.max_iters for j in jobs], dtype=torch.long, device=dev),
            "tol": torch.tensor([j.tol for j in jobs], dtype=torch.float64, device=dev),
            "rel_mode": torch.tensor([j.rel_mode for j in jobs], dtype=torch.bool, device=dev),
            "first_res": torch.tensor([d[1] for d in done], dtype=torch.float64, device=dev),
        }

    def _rebuild(self, keep: list[int], fresh: list[_Row]) -> None:
        """Keep rows `keep` of the batch (in order), append `fresh`, and re-collate; timed."""
        start = time.perf_counter()
        self._recollate(keep, fresh)
        if keep:  # a compaction, the cost a rebuild is weighed against
            self._rebuild_s = 0.8 * self._rebuild_s + 0.2 * (time.perf_counter() - start)

    def _recollate(self, keep: list[int], fresh: list[_Row]) -> None:
        fresh = sorted(fresh, key=lambda r: not r.new_solve)
        everyone = len(keep) == len(self._rows)  # `keep` is ascending: nothing left the batch
        rows = [r for i in keep if (r := self._rows[i]) is not None] + fresh  # `keep` holds live rows
        self._rows, self._dead, self._died = list(rows), [], []
        self._fresh = [i for i, r in enumerate(rows) if i >= len(keep) and r.new_solve]
        if not rows:
            self._t, self._solver, self._bctx, self._shape = {}, None, {}, ()
            self._index_rows()
            self.last_tick_rows = 0
            return
        kept_ctxs = [r.job.ctx for r in rows[: len(keep)]]
        old_shape, shape = self._shape, bound([r.shape for r in rows])
        self._shape = shape
        self._index_rows()
        jobs = [r.job for r in fresh]
        dev = self._device
        new_t = self._new_rows(jobs, shape) if jobs else {}
        new_y = new_t.get("y")
        idx = None if everyone or not keep else torch.tensor(keep, device=dev)
        if self._t and keep:
            old = self._t if idx is None else {k: v.index_select(0, idx) for k, v in self._t.items()}
            old["y"] = refit(old["y"], old_shape, shape)
            self._t = {k: torch.cat([old[k], new_t[k]]) for k in old} if jobs else old
        else:
            self._t = new_t
        solver = None
        if self._solver is not None and keep:
            solver = (self._solver if idx is None else self._solver.select(idx)).fit(old_shape, shape)
        plain = [j for j in jobs if j.resume is None]
        if plain:
            assert new_y is not None
            added = SolverState.new([j.damping for j in plain], [j.m for j in plain], new_y[: len(plain)])
            solver = solver.concat(added) if solver else added
        for j in jobs[len(plain) :]:
            assert j.resume is not None
            resumed = j.resume.solver.fit(j.shape, shape)  # a resumed history is laid out for its own row
            solver = solver.concat(resumed) if solver else resumed
        self._solver = solver
        self._bctx = self.model.rebatch(self._bctx if keep else {}, idx, kept_ctxs, [j.ctx for j in jobs])

    def _step(
        self, t: dict[str, torch.Tensor], solver: SolverState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One G-step, solver update and stop decision for the batch: (y_next, abs, rel, code).

        Picard batches of a dense-family model run as one fused kernel when the backend is Triton, and
        Anderson's history update and mixing as two; everything else runs the torch reference.
        """
        dense = self.model.dense_form(self._bctx) if self.backend == "triton" and solver.X is None else None
        if dense is not None:
            out = dense_picard_step(
                t["y"], *dense, solver.beta, t["tol"], t["rel_mode"], t["iters"], t["max_iters"],
                t["first_res"], "triton",
            )  # fmt: skip
            t["iters"], t["first_res"] = out.iters, out.first_res
            return out.y, out.abs_res, out.rel_res, out.code
        y = t["y"]
        if len(self._shape) == 1:  # the flat batch is already (B, n): no view and reshape a tick
            gy = self.model.step(y, self._bctx)
        else:
            gy = self.model.step(y.view(y.shape[0], *self._shape), self._bctx).reshape(y.shape)
        if self._mask is not None:
            gy = torch.where(self._mask, gy, 0.0)
        abs_res, rel_res = residuals(y, gy)
        y_next = solver.update(t["y"], gy, self.backend)
        t["iters"] += 1
        if self._fresh:  # only rows on their first iteration set their first residual
            t["first_res"] = torch.where(t["iters"] == 1, abs_res.double(), t["first_res"])
        code = decide(
            abs_res, rel_res, y_next, t["first_res"], t["iters"], t["max_iters"], t["tol"], t["rel_mode"]
        )
        return y_next, abs_res, rel_res, code

    def _tick(self) -> None:
        start = time.perf_counter()
        t, solver = self._t, self._solver
        assert solver is not None
        try:
            y_next, abs_res, rel_res, code = self._step(t, solver)
        except Exception as exc:  # the model's fault: fail this tick's requests, keep serving
            log.exception("model %s failed in its step", self.name)
            self._fail_all(Stop.ERROR, ModelStepError(self.name, exc))
            return
        codes, absl, rell = torch.stack([code.to(abs_res.dtype), abs_res, rel_res]).tolist()
        t["y"] = y_next
        self.ticks += 1
        now = time.monotonic()
        rows = self._rows
        for i in self._fresh:
            job = rows[i].job  # type: ignore[union-attr]
            self.observer.first_iterate(job, now - job.submitted)
        self._fresh = []
        # Visit only the rows that stopped, stream or trace, passed their deadline or were cancelled
        # (retired rows' slots go on computing until they are taken over, and are passed over here).
        visit = [i for i, c in enumerate(codes) if c] if any(codes) else []
        for i in self._watched:
            if (row := rows[i]) is not None:
                job, n = row.job, self.ticks - row.offset
                if n % job.every == 0 and (job.trace or n % (job.every * job.stride) == 0):
                    visit.append(i)
        if SolveJob.cancellations != self._cancellations:
            self._cancellations = SolveJob.cancellations
            visit += [i for i, r in enumerate(rows) if r is not None and r.job.cancelled]
        if now >= self._next_deadline:
            visit += [i for i, r in enumerate(rows) if r is not None and now >= r.deadline]
        static = self.batching == "static"
        computed = len(codes) - len(self._dead)  # this tick's requests, not the retired slots
        for i in sorted(set(visit)):
            row = rows[i]
            if row is None or row.held:  # a retired slot; or static batching's answered row
                continue
            row.iterations = self.ticks - row.offset
            row.residual, row.rel_residual = absl[i], rell[i]
            job = row.job
            code_i = int(codes[i])
            if job.trace and (code_i or row.iterations % job.every == 0):
                row.trace.append({"t": row.iterations, "residual": absl[i], "rel_residual": rell[i]})
            if not code_i:
                if job.cancelled:
                    code_i = Stop.CANCELLED
                elif now >= row.deadline:
                    code_i = Stop.DEADLINE
            if job.on_iterate is not None and (code_i or row.iterations % (job.every * job.stride) == 0):
                y_i = unpack(y_next[i : i + 1], self._shape, row.shape) if job.iterate_y else None
                job.on_iterate(row.iterations, absl[i], rell[i], y_i)
            if code_i:
                self._retire(row, Stop(code_i), unpack(y_next[i : i + 1], self._shape, row.shape), solver, i)
                if not static:
                    rows[i] = None
                    self._dead.append(i)
                    self._died.append(self.ticks)
        self.last_tick_rows = len(codes)
        if static:
            if len(self._held) == len(rows):
                self._release_held()
                self._rebuild([], [])
        elif len(self._dead) == len(rows):
            self._rebuild([], [])
        seconds = time.perf_counter() - start
        self._row_s = 0.9 * self._row_s + 0.1 * seconds / len(codes)
        self.observer.tick(seconds, computed)

    def _retire(self, row: _Row, stop: Stop, y_row: torch.Tensor, solver: SolverState, i: int) -> None:
        """Finish row i of the batch; a solve that stopped on its budget keeps what it needs to go on."""
        resume = None
        if stop in RESUMABLE:
            resume = Resume(
                y_row.clone(),
                solver.select(torch.tensor([i], device=y_row.device)).fit(self._shape, row.shape),
                row.iterations,
                float(self._t["first_res"][i]),
                row.trace,
            )
        self._finish(row, stop, y_row, resume=resume, hold=self.batching == "static")

    def _finish(
        self,
        row: _Row,
        stop: Stop,
        y: torch.Tensor,
        error: BaseException | None = None,
        resume: Resume | None = None,
        hold: bool = False,
    ) -> None:
        """Answer the row's request (or, with `hold`, keep the answer until its static batch ends)."""
        job = row.job
        if error is not None:
            job.future.set_exception(error)
            self.observer.finished(job, _failed(job, row, stop))
            return
        try:
            output = None if stop is Stop.DIVERGED else self.model.decode(y, job.ctx)
        except Exception as exc:
            log.exception("model %s failed in its decode", self.name)
            job.future.set_exception(ModelStepError(self.name, exc))
            self.observer.finished(job, _failed(job, row, Stop.ERROR))
            return
        result = SolveResult(
            id=job.id,
            status=stop.label,
            iterations=row.iterations,
            residual=row.residual,
            rel_residual=row.rel_residual,
            output=output,
            trace=row.trace if job.trace else None,
            state=encode_state(y, job.state_encoding) if job.return_state else None,
            queue_ms=(row.admitted - job.submitted) * 1e3,
            solve_ms=0.0,  # measured when the answer is delivered
            resume=resume,
        )
        if hold:
            row.held = True  # answered with the rest of its batch, as a DEQ library would
            self._held.append((row, result))
            return
        self._deliver(row, result)

    def _deliver(self, row: _Row, result: SolveResult) -> None:
        """Time the answer, tell the observer, and hand it to the waiting request."""
        now = time.monotonic()
        result.solve_ms = (now - row.admitted) * 1e3
        self._throughput.record(now)
        self.observer.finished(row.job, result)
        row.job.future.set_result(result)

    def _release_held(self) -> None:
        """Static batching: answer every row of the batch that just ended."""
        held, self._held = self._held, []
        for row, result in held:
            self._deliver(row, result)

    def _fail_all(self, stop: Stop, error: BaseException | None = None) -> None:
        self._release_held()
        live = [(i, r) for i, r in enumerate(self._rows) if r is not None and not r.held]
        rows = [r for _, r in live]
        ys = [unpack(self._t["y"][i : i + 1], self._shape, r.shape) for i, r in live]
        for r in rows:
            r.iterations = self.ticks - r.offset
        with self._cond:
            waiting = list(self._waiting) if self._stopping else []
            if self._stopping:
                self._waiting.clear()
        for row, y in zip(rows, ys, strict=True):
            self._finish(row, stop, y, error)
        for job in waiting:
            self._finish(_Row(job, admitted=time.monotonic()), stop, job.start, error)
        self._rebuild([], [])


def extend_job(job: SolveJob, result: SolveResult, more_iters: int) -> SolveJob:
    """A job that goes on from where `result` stopped, for `more_iters` more iterations."""
    if result.resume is None:
        raise ValueError(f"a solve that ended {result.status!r} cannot be extended")
    return dataclasses.replace(
        job,
        max_iters=result.resume.iterations + more_iters,
        resume=result.resume,
        submitted=time.monotonic(),
        _cancelled=False,
        future=Future(),
    )


def _failed(job: SolveJob, row: _Row, stop: Stop) -> SolveResult:
    """The result an observer sees for a request that failed with an error."""
    return SolveResult(
        job.id,
        stop.label,
        row.iterations,
        row.residual,
        row.rel_residual,
        None,
        None,
        None,
        (row.admitted - job.submitted) * 1e3,
        (time.monotonic() - row.admitted) * 1e3,
    )


_ids = itertools.count(1)
_PROCESS = secrets.token_hex(4)
"""This process's part of every request id, so that replicas sharing dashboards and logs never collide."""


def new_id() -> str:
    """A request id unique across processes: a random per-process prefix and a counter."""
    return f"req-{_PROCESS}-{next(_ids):08d}"
