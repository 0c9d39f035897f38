"""The worker of one served model: schedule → run → update, on its own thread.

Each turn the scheduler admits waiting jobs (into retired slots or by a rebuild of the batch) and
says how many steps the next run may take; the runner steps the batch that often, deciding every
row's stop rule every step; then the rows that stopped, stream, trace, were cancelled or passed their
deadline are visited and answered. A request joins and leaves the batch between runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

import torch

from eqserve.engine import runner
from eqserve.engine.batch import Batch
from eqserve.engine.errors import ModelStepError
from eqserve.engine.job import RESUMABLE, Resume, SolveJob, SolveResult
from eqserve.engine.observer import EngineObserver, NullObserver
from eqserve.engine.scheduler import POLICIES, Row, Scheduler
from eqserve.engine.worker import Worker
from eqserve.kernels.dispatch import Backend
from eqserve.kernels.reference import Stop
from eqserve.models.base import Ctx, ImplicitModel
from eqserve.models.padding import unpack
from eqserve.service.arrays import encode_state

log = logging.getLogger(__name__)

Batching = Literal["continuous", "static"]


class Engine(Worker):
    """The batching worker of one model, fed by `submit` from any thread; `step` stands in for the
    model's step where given (a compiled one)."""

    def __init__(
        self,
        model: ImplicitModel,
        *,
        max_batch_rows: int = 64,
        max_queue: int = 256,
        batching: Batching = "continuous",
        backend: Backend = "torch",
        torch_threads: int = 0,
        batch_invariant: bool = False,
        step: Callable[[torch.Tensor, Ctx], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = model.name
        self.backend = backend
        self.torch_threads = torch_threads
        self.batching = batching
        self.policy = POLICIES[batching]()
        self.scheduler = Scheduler(model.name, max_batch_rows, max_queue, self.policy)
        self.batch = Batch(model, batch_invariant, step)
        self.observer: EngineObserver = NullObserver()
        self._runner: runner.StepRunner = runner.HostRunner(backend)
        self._fresh: list[int] = []
        """Slots whose first iterate the next run computes."""
        self._visit: list[int] = []
        """Slots visited after every run whatever happened: rows that stream or trace."""
        self._held: list[tuple[Row, SolveResult]] = []
        self.step_s = 0.0
        """Seconds a batch step costs (moving average over runs; 0 until measured)."""
        self.row_s = 0.0
        """Seconds one row costs a step (moving average over runs)."""
        self.rebuild_s = 1e-4
        """Seconds a compaction of the batch costs (moving average over compactions)."""
        self.last_run_rows = 0

    # -- the worker ----------------------------------------------------------------------

    def _loop(self) -> None:
        if self.torch_threads:  # intra-op threads are set per calling thread
            torch.set_num_threads(self.torch_threads)
        with torch.inference_mode():
            while (jobs := self.scheduler.wait_and_take()) is not None:
                self._busy_since = time.monotonic()
                self._admit(jobs)
                if self.scheduler.rows:
                    self._run()
                self._busy_since = None
        self._fail_all(Stop.CANCELLED)

    def _admit(self, jobs: list[SolveJob]) -> None:
        """Admit `jobs`: into retired slots where they fit, else by one rebuild of the batch that also
        compacts the retired slots once they have cost as much as that."""
        now = time.monotonic()
        fresh: list[Row] = []
        for job in jobs:
            row = Row(job, admitted=now)
            self.observer.admitted(job, now - job.submitted)
            row.iterations = 0 if job.resume is None else job.resume.iterations
            if job.cancelled:
                self._finish(row, Stop.CANCELLED, job.start)
            elif now >= job.deadline:
                self._finish(row, Stop.DEADLINE, job.start)
            elif (error := self._collate_error(job)) is not None:
                self._finish(row, Stop.ERROR, job.start, error)
            else:
                fresh.append(row)
        try:
            self._place(fresh)
        except Exception as exc:  # the model's fault in re-collating the batch: fail it, keep serving
            log.exception("model %s failed admitting requests", self.name)
            self._release_held()
            error = ModelStepError(self.name, exc)
            placed = [r for r in self.scheduler.rows if r is not None and not r.held]
            seen = {id(r) for r in placed}
            for row in placed + [r for r in fresh if id(r) not in seen]:
                self._finish(row, Stop.ERROR, row.job.start, error)
            self._clear()

    def _collate_error(self, job: SolveJob) -> ModelStepError | None:
        """The model's error collating `job`'s context alone, if it raises one: that request fails
        alone instead of failing the batch it would join."""
        try:
            self.model.collate([job.ctx])
        except Exception as exc:
            log.exception("model %s failed to collate a request", self.name)
            return ModelStepError(self.name, exc)
        return None

    def _place(self, fresh: list[Row]) -> None:
        """Put the admitted rows into the batch."""
        sched = self.scheduler
        stale = sched.compaction_due(self.row_s, self.rebuild_s)
        if fresh and not stale and self.batch.placeable([r.job for r in fresh]):
            slots = self.batch.place(sched.take_slots(len(fresh)), [r.job for r in fresh])
            for slot, row in zip(slots, fresh, strict=True):
                if slot < len(sched.rows):
                    sched.rows[slot] = row
                else:
                    sched.rows.append(row)
            sched.index()
            self._fresh += slots
            self._index()
        elif fresh or stale:
            self._rebuild(fresh)

    def _rebuild(self, fresh: list[Row]) -> None:
        """Keep the batch's live rows (in order), append `fresh` (new solves first), re-collate; timed."""
        start = time.perf_counter()
        sched = self.scheduler
        fresh = sorted(fresh, key=lambda r: not r.new_solve)
        keep = [i for i, r in enumerate(sched.rows) if r is not None]
        kept = [r for r in sched.rows if r is not None]
        self.batch.rebuild(keep, [r.job for r in kept], [r.job for r in fresh])
        sched.reset(kept + fresh)
        self._fresh = [len(kept) + j for j, r in enumerate(fresh) if r.new_solve]
        self._index()
        if len(self.batch):
            self._runner = runner.choose(self.model, self.batch, self.backend)
        if keep:  # a compaction: the cost a rebuild is weighed against
            self.rebuild_s = 0.8 * self.rebuild_s + 0.2 * (time.perf_counter() - start)

    def _clear(self) -> None:
        """No rows left in the batch."""
        self.batch.clear()
        self.scheduler.reset([])
        self._fresh, self._visit = [], []
        self.last_run_rows = 0

    def _index(self) -> None:
        self._visit = [
            i for i, r in enumerate(self.scheduler.rows) if r is not None and (r.job.trace or r.job.watch)
        ]

    def _run(self) -> None:
        sched, batch = self.scheduler, self.batch
        start = time.perf_counter()
        now = time.monotonic()
        active = sched.active()
        k = sched.run_length(now, self.step_s, batch.iters, active)
        try:
            out = self._runner.run(batch, k, active, sched.newcomer)
        except Exception as exc:  # the model's fault: fail this run's requests, keep serving
            log.exception("model %s failed in its step", self.name)
            self._fail_all(Stop.ERROR, ModelStepError(self.name, exc))
            return
        sched.steps += out.steps
        now = time.monotonic()
        for i in self._fresh:
            if (row := sched.rows[i]) is not None:
                self.observer.first_iterate(row.job, now - row.job.submitted)
        self._fresh = []
        rows = len(batch)
        row_steps = self._update(out, active, now)
        self.last_run_rows = rows
        if self.policy.holds:
            if len(self._held) == len(sched.rows):
                self._release_held()
                self._clear()
        elif not sched.running:
            self._clear()
        seconds = time.perf_counter() - start
        per_step = seconds / out.steps
        self.step_s = per_step if not self.step_s else 0.9 * self.step_s + 0.1 * per_step
        self.row_s = 0.9 * self.row_s + 0.1 * per_step / rows
        self.observer.ran(seconds, out.steps, rows, row_steps)

    def _update(self, out: runner.RunOut, active: list[int], now: float) -> int:
        """Visit the rows that stopped, stream, trace, were cancelled or passed their deadline; the
        row-iterations the run computed for requests."""
        sched, batch = self.scheduler, self.batch
        stopped = {i: (code, at) for i, code, at in out.stops}
        row_steps = out.steps * len(active) - sum(out.steps - at for _, at in stopped.values())
        expired = sched.expired(now)
        visit = self._visit  # rows that stream or trace: all active between admissions
        if stopped or expired:
            visit = sorted({*stopped, *expired, *visit})
        for i in visit:
            row = sched.rows[i]
            if row is None or row.held:
                continue
            job = row.job
            code, at = stopped.get(i, (Stop.RUNNING, out.steps))
            n = batch.iters[i]
            start_t = n - at
            row.iterations = n
            row.residual, row.rel_residual = out.abs[at - 1][i], out.rel[at - 1][i]
            if job.trace:
                every = job.every
                for t in range(start_t + every - start_t % every, n + 1, every):
                    j = t - start_t - 1
                    row.trace.append({"t": t, "residual": out.abs[j][i], "rel_residual": out.rel[j][i]})
                if code and n % every:
                    row.trace.append({"t": n, "residual": row.residual, "rel_residual": row.rel_residual})
            if not code and i in expired:
                code = Stop.CANCELLED if job.cancelled else Stop.DEADLINE
            watch = job.watch
            if watch is not None and (code or n >= watch.next_due(start_t)):
                y_i = self._row_state(out, i, row) if watch.wants_y else None
                watch.push(n, row.residual, row.rel_residual, y_i)
            if code:
                self._retire(i, row, code, self._row_state(out, i, row))
        return row_steps

    def _row_state(self, out: runner.RunOut, i: int, row: Row) -> torch.Tensor:
        """Slot i's state (1, *shape) at the end of the run, or where it stopped."""
        batch = self.batch
        flat = out.final[i] if i in out.final else batch.y[i : i + 1]  # type: ignore[index]
        return unpack(flat, batch.shape, row.shape)

    def _retire(self, i: int, row: Row, stop: Stop, y_row: torch.Tensor) -> None:
        """Answer the row in slot i; a solve that stopped on its budget keeps what it needs to go on."""
        resume = self.batch.resume(i, y_row, row.iterations, row.trace) if stop in RESUMABLE else None
        self._finish(row, stop, y_row, resume=resume, hold=self.policy.holds)
        if not self.policy.holds:
            self.scheduler.retire(i)

    def _finish(
        self,
        row: Row,
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

    def _deliver(self, row: Row, result: SolveResult) -> None:
        """Time the answer, tell the observer, and hand it to the waiting request."""
        now = time.monotonic()
        result.solve_ms = (now - row.admitted) * 1e3
        self.scheduler.throughput.record(now)
        self.observer.finished(row.job, result)
        row.job.future.set_result(result)

    def _release_held(self) -> None:
        """Static batching: answer every row of the batch that just ended."""
        held, self._held = self._held, []
        for row, result in held:
            self._deliver(row, result)

    def _fail_all(self, stop: Stop, error: BaseException | None = None) -> None:
        self._release_held()
        sched, batch = self.scheduler, self.batch
        live = [(i, r) for i, r in enumerate(sched.rows) if r is not None and not r.held]
        for i, row in live:
            row.iterations = batch.iters[i]
            self._finish(row, stop, batch.row(batch.y, i, row.shape), error)  # type: ignore[arg-type]
        for job in sched.drain() if sched.stopping else []:
            row = Row(job, admitted=time.monotonic())
            row.iterations = 0 if job.resume is None else job.resume.iterations
            self._finish(row, stop, job.start, error)
        self._clear()


def _failed(job: SolveJob, row: Row, stop: Stop) -> SolveResult:
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
