"""The scheduler alone: queue, policies, slots, compaction, expiry and run lengths, with no tensors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from eqserve.engine.errors import EngineClosed, QueueFull
from eqserve.engine.job import NEVER, EveryIterate, SolveJob
from eqserve.engine.scheduler import COMPACT_AFTER_STEPS, RUN_S, Continuous, Row, Scheduler, Static


def job(name: str, max_iters: int = 100, timeout_s: float | None = None, watch: object = None) -> SolveJob:
    """A job whose state is never looked at: the scheduler reads only budgets, deadlines and shapes."""
    y0 = SimpleNamespace(shape=(1, 3))  # stands in for a (1, 3) tensor
    return SolveJob(id=name, ctx={}, y0=y0, max_iters=max_iters, tol=0.0, timeout_s=timeout_s, watch=watch)  # type: ignore[arg-type]


def scheduler(policy: Continuous | Static | None = None, rows: int = 4, queue: int = 8) -> Scheduler:
    return Scheduler("m", rows, queue, policy or Continuous())


def admit(s: Scheduler, jobs: list[SolveJob]) -> None:
    s.reset([*(r for r in s.rows if r is not None), *(Row(j, admitted=0.0) for j in jobs)])


def test_the_queue_is_bounded_and_closes() -> None:
    s = scheduler(queue=2)
    s.submit(job("a"))
    s.submit(job("b"))
    with pytest.raises(QueueFull) as info:
        s.submit(job("c"))
    assert info.value.retry_after >= 1
    s.close()
    with pytest.raises(EngineClosed):
        s.submit(job("d"))


def test_continuous_admits_into_free_slots_static_only_into_an_empty_batch() -> None:
    for policy, second_take in ((Continuous(), 3), (Static(), 0)):
        s = scheduler(policy, rows=4)
        for name in "abcdefg":
            s.submit(job(name))
        first = s.wait_and_take()
        assert first is not None and [j.id for j in first] == list("abcd")
        admit(s, first[:1])  # one row is in the batch
        taken = s.wait_and_take()
        assert taken is not None and len(taken) == second_take
        assert s.newcomer() is (policy.admits(s.running, 4) > 0 and s.waiting > 0)


def test_retired_slots_are_taken_over_oldest_first() -> None:
    s = scheduler()
    admit(s, [job("a"), job("b"), job("c")])
    s.steps = 5
    s.retire(2)
    s.steps = 7
    s.retire(0)
    assert s.running == 1 and s.dead == [2, 0]
    assert s.take_slots(1) == [2] and s.dead == [0] and s.died == [7]


def test_compaction_is_due_by_what_empty_slots_cost_or_after_a_bound() -> None:
    s = scheduler()
    admit(s, [job("a"), job("b")])
    s.retire(0)
    s.steps += 3  # one empty slot has cost 3 row-steps
    assert not s.compaction_due(row_s=1.0, rebuild_s=3.5)
    assert s.compaction_due(row_s=1.0, rebuild_s=3.0)
    assert not s.compaction_due(row_s=0.0, rebuild_s=1.0)
    s.steps += COMPACT_AFTER_STEPS
    assert s.compaction_due(row_s=0.0, rebuild_s=math.inf)


def test_a_run_stops_at_a_budget_a_due_iterate_a_deadline_and_about_run_s() -> None:
    s = scheduler()
    step_s = RUN_S / 50
    assert s.run_length(0.0, 0.0, [], []) == 1  # nothing measured yet: one step
    admit(s, [job("a", max_iters=1000)])
    assert s.run_length(0.0, step_s, [0], [0]) == 50
    assert s.run_length(0.0, step_s, [990], [0]) == 10  # the budget
    admit(s, [job("b", watch=EveryIterate(lambda *_: None, every=8))])
    assert s.run_length(0.0, step_s, [0, 13], [0, 1]) == 3  # b's next due iterate is 16
    assert s.run_length(0.0, step_s, [0, 13], [0]) == 50  # b not running: not a bound
    c = job("c", timeout_s=6.5 * step_s)
    admit(s, [c])
    assert s.run_length(c.submitted, step_s, [0, 16, 0], [0, 2]) == 7  # c's deadline


def test_cancelled_and_late_rows_expire_and_a_muted_watch_bounds_nothing() -> None:
    s = scheduler()
    late, gone, fine = job("late", timeout_s=1.0), job("gone"), job("fine")
    admit(s, [late, gone, fine])
    assert s.expired(late.submitted + 0.5) == []
    gone.cancelled = True
    assert s.expired(late.submitted + 0.5) == [1]
    assert s.expired(late.submitted + 2.0) == [0, 1]
    muted = SimpleNamespace(next_due=lambda t: NEVER, wants_y=False)
    s2 = scheduler()
    admit(s2, [job("m", max_iters=10**9, watch=muted)])
    assert s2.run_length(0.0, RUN_S / 50, [0], [0]) == 50
