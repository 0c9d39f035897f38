"""The scheduler of one model's engine: pure Python, no tensors.

It holds the waiting queue and the rows in their batch slots, and decides — never computes —
everything between runs: which waiting jobs join (the batching policy), whether they take over
retired rows' slots or the batch is rebuilt, which rows leave on a deadline or a cancellation, and
how many steps the next run may take before a row needs the host.

A retired row leaves its slot for a while: a newcomer takes it over in place, where compacting and
appending would touch every batch tensor. Empty slots are still computed, so they are compacted away
once the steps they have cost reach what a compaction costs (both measured: the rent-or-buy rule,
never more than twice the better choice), and at the latest after `COMPACT_AFTER_STEPS` steps.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from eqserve.engine.errors import EngineClosed, QueueFull
from eqserve.engine.job import SolveJob
from eqserve.models.padding import Shape
from eqserve.service.throughput import Throughput

COMPACT_AFTER_STEPS = 16
"""Most batch steps a retired row's slot waits for a newcomer before the batch is compacted."""

RUN_S = 1e-3
"""About how long a run of steps lasts: a newcomer waits for a row at most this or one step."""


class Policy(Protocol):
    """When waiting jobs join a batch, and whether stopped rows wait for the rest of theirs."""

    holds: bool
    """Whether a stopped row's answer waits until its whole batch has stopped."""

    def admits(self, occupied: int, max_rows: int) -> int:
        """How many waiting jobs may join a batch with `occupied` rows."""
        ...


class Continuous:
    """Iteration-level continuous batching: a job joins at the next run and leaves when it stops."""

    holds = False

    def admits(self, occupied: int, max_rows: int) -> int:
        """Every free slot."""
        return max_rows - occupied


class Static:
    """The DEQ-library baseline to measure against: a batch is admitted only when the last one is
    done, every row is computed until the slowest stops, and the batch is answered together."""

    holds = True

    def admits(self, occupied: int, max_rows: int) -> int:
        """A whole batch, once the last one has gone."""
        return 0 if occupied else max_rows


POLICIES: dict[str, type[Continuous] | type[Static]] = {"continuous": Continuous, "static": Static}


@dataclass
class Row:
    """A job in a batch slot: when it joined, what it needs of the host, its trace so far."""

    job: SolveJob
    admitted: float
    shape: Shape = field(init=False)
    deadline: float = field(init=False)
    residual: float | None = None
    rel_residual: float | None = None
    iterations: int = 0
    """Set when the row is answered (the batch counts while it runs)."""
    held: bool = False
    trace: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shape = self.job.shape
        self.deadline = self.job.deadline
        if self.job.resume is not None:
            self.trace = list(self.job.resume.trace)

    @property
    def new_solve(self) -> bool:
        """Whether the row starts a solve rather than extending one that brings its own solver
        history: only new solves take over a retired row's slot."""
        return self.job.resume is None


class Scheduler:
    """The queue and the slots of one model's engine; `submit` is safe from any thread."""

    def __init__(self, name: str, max_rows: int, max_queue: int, policy: Policy) -> None:
        self.name, self.max_rows, self.max_queue, self.policy = name, max_rows, max_queue, policy
        self._waiting: deque[SolveJob] = deque()
        self._cond = threading.Condition()
        self.stopping = False
        self._closed = False
        self.throughput = Throughput()
        self.rows: list[Row | None] = []
        """Slot → its row; None where a retired row left its slot."""
        self.dead: list[int] = []
        """Retired slots, oldest first; `died[i]` is the step count at which `dead[i]` emptied."""
        self.died: list[int] = []
        self.steps = 0
        """Batch steps run so far."""
        self.next_deadline = math.inf
        """The earliest deadline of the rows in the batch (kept by `index`)."""
        self._cancellations = 0

    # -- the queue ------------------------------------------------------------------------

    def submit(self, job: SolveJob) -> None:
        """Queue a job; QueueFull at once when the queue is at its bound, EngineClosed once closed."""
        with self._cond:
            if self._closed:
                raise EngineClosed(self.name)
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(self.name, self.throughput.retry_after(len(self._waiting)))
            self._waiting.append(job)
            self._cond.notify()

    def close(self) -> None:
        """Take no new jobs; those accepted go on."""
        with self._cond:
            self._closed = True

    def stop(self) -> None:
        """Wake the worker to stop."""
        with self._cond:
            self.stopping = True
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Jobs accepted but not yet in the batch."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Jobs in the batch (retired rows' slots do not count)."""
        return len(self.rows) - len(self.dead)

    def wait_and_take(self) -> list[SolveJob] | None:
        """Block until there is work; the jobs the policy admits now, or None once stopping."""
        if self.rows and not self._waiting and not self.stopping:  # the usual turn: nothing to take
            return []
        with self._cond:
            while not self.stopping and not self.running and not self._waiting:
                self._cond.wait()
            if self.stopping:
                return None
            free = self.policy.admits(self.running, self.max_rows)
            return [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]

    def drain(self) -> list[SolveJob]:
        """Every waiting job, taken off the queue (the worker is stopping)."""
        with self._cond:
            jobs = list(self._waiting)
            self._waiting.clear()
        return jobs

    def newcomer(self) -> bool:
        """Whether a waiting job could join now: a run in progress should end at its next step."""
        return bool(self._waiting) and self.policy.admits(self.running, self.max_rows) > 0

    # -- the slots --------------------------------------------------------------------------

    def active(self) -> list[int]:
        """The slots whose rows run (neither retired nor holding their answer)."""
        return [i for i, r in enumerate(self.rows) if r is not None and not r.held]

    def compaction_due(self, row_s: float, rebuild_s: float) -> bool:
        """Whether the retired slots have cost (`row_s` a row a step) what a rebuild costs, or waited
        `COMPACT_AFTER_STEPS`."""
        if not self.died:
            return False
        waited = self.steps - self.died[0]
        return waited >= COMPACT_AFTER_STEPS or row_s * sum(self.steps - d for d in self.died) >= rebuild_s

    def take_slots(self, n: int) -> list[int]:
        """Up to `n` retired slots, oldest first, for newcomers that take them over."""
        k = min(n, len(self.dead))
        slots, self.dead, self.died = self.dead[:k], self.dead[k:], self.died[k:]
        return slots

    def retire(self, slot: int) -> None:
        """The row in `slot` has been answered; its slot waits for a newcomer or a compaction."""
        self.rows[slot] = None
        self.dead.append(slot)
        self.died.append(self.steps)

    def reset(self, rows: list[Row]) -> None:
        """The batch was rebuilt with `rows` in this order and no retired slots."""
        self.rows, self.dead, self.died = list(rows), [], []
        self.index()

    def index(self) -> None:
        """Note what the rows in the batch now are (their earliest deadline)."""
        self.next_deadline = min((r.deadline for r in self.rows if r is not None), default=math.inf)

    def expired(self, now: float) -> list[int]:
        """Active slots whose client cancelled or whose deadline passed."""
        moved = SolveJob.cancellations != self._cancellations
        if not moved and now < self.next_deadline:
            return []
        self._cancellations = SolveJob.cancellations
        return [i for i in self.active() if (r := self.rows[i]) and (r.job.cancelled or now >= r.deadline)]

    def run_length(self, now: float, step_s: float, iters: list[int], active: list[int]) -> int:
        """Steps the next run may take: about `RUN_S` of them, and never past a row's budget (its solver
        history is kept as it stands when it stops there), its watch's next due iterate, or the
        earliest deadline."""
        k = max(1, int(RUN_S / step_s)) if step_s > 0 else 1
        rows = self.rows
        for i in active:
            job, t = rows[i].job, iters[i]  # type: ignore[union-attr]
            k = min(k, job.max_iters - t)
            if job.watch is not None:
                k = min(k, job.watch.next_due(t) - t)
        if self.next_deadline < math.inf and step_s > 0:
            k = min(k, math.ceil((self.next_deadline - now) / step_s))
        return max(1, k)
