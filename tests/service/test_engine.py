"""The engine: per-row stopping, continuous batching, queue bound, faults that stay in their row."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from eqserve.engine.core import Engine
from eqserve.engine.errors import ModelStepError, QueueFull
from eqserve.engine.job import EveryIterate, SolveJob, SolveResult, extend_job
from eqserve.engine.scheduler import COMPACT_AFTER_STEPS
from eqserve.models.base import ImplicitModel
from eqserve.models.reciprocal import Reciprocal, ReciprocalInput
from tests.fake_models import BLOWUP_X, NAN_X, RAISE_X, Faulty, RowAligned


def job(model: ImplicitModel, x: list[float], eta: float = 1.0, **kw: object) -> SolveJob:
    ctx = model.encode(ReciprocalInput(x=x, eta=eta))
    opts: dict = {"max_iters": 500, "tol": 1e-9, "trace": True, "return_state": True} | kw
    return SolveJob(id=str(x), ctx=ctx, y0=model.init(ctx), **opts)


def alone(model: ImplicitModel, j: SolveJob) -> SolveResult:
    engine = Engine(model)
    engine.start()
    try:
        return engine.submit(j).result(10)
    finally:
        engine.stop()


def together(model: ImplicitModel, jobs: list[SolveJob], **kw: object) -> list[SolveResult]:
    """Submit all jobs before the worker starts, so they share the first tick."""
    engine = Engine(model, **kw)  # type: ignore[arg-type]
    futures = [engine.submit(j) for j in jobs]
    engine.start()
    try:
        return [f.result(10) for f in futures]
    finally:
        engine.stop()


def wait_until(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.002)


@pytest.mark.parametrize("m", [0, 4])
def test_batched_rows_stop_on_their_own_tolerance_with_the_iterates_they_get_alone(m: int) -> None:
    model = Reciprocal()
    specs = [([0.3, 0.6], 1e-2), ([0.3, 0.6], 1e-9), ([0.7], 1e-5)]
    batched = together(model, [job(model, x, tol=tol, m=m) for x, tol in specs])
    single = [alone(model, job(model, x, tol=tol, m=m)) for x, tol in specs]
    assert len({r.iterations for r in batched}) == 3
    for b, s in zip(batched, single, strict=True):
        assert b.status == s.status == "converged"
        assert b.iterations == s.iterations
        assert b.state == s.state
        assert b.trace == s.trace


def test_request_arriving_mid_solve_finishes_before_the_running_one() -> None:
    model = Reciprocal()
    engine = Engine(model)
    engine.start()
    try:
        slow = engine.submit(job(model, [1e-4], tol=0.0, max_iters=10**7, trace=False))
        wait_until(lambda: engine.steps > 10)
        quick = engine.submit(job(model, [0.5], tol=1e-6)).result(10)
        assert not slow.done()
        assert quick.status == "converged"
        assert engine.steps > quick.iterations
    finally:
        engine.stop()
    assert slow.result(10).status == "cancelled"


def test_static_batching_holds_a_new_request_until_the_batch_ends() -> None:
    model = Reciprocal()
    engine = Engine(model, batching="static")
    engine.start()
    try:
        first = engine.submit(job(model, [0.01], tol=0.0, max_iters=400))
        wait_until(lambda: engine.steps > 0)
        second = engine.submit(job(model, [0.5], tol=1e-3)).result(10)
        assert first.done()
        assert second.queue_ms > 0
        assert first.result().iterations == 400
    finally:
        engine.stop()


def test_queue_full_is_refused_at_once() -> None:
    model = Reciprocal()
    engine = Engine(model, max_batch_rows=1, max_queue=2)
    for _ in range(2):
        engine.submit(job(model, [0.5]))
    with pytest.raises(QueueFull) as info:
        engine.submit(job(model, [0.5]))
    assert info.value.retry_after >= 1
    engine.start()
    engine.stop()


def test_nan_and_blowup_rows_diverge_while_batch_mates_converge() -> None:
    model = Faulty()
    xs = [[0.5, 0.25], [NAN_X], [BLOWUP_X, 0.5], [0.8]]
    results = together(model, [job(model, x) for x in xs])
    assert [r.status for r in results] == ["converged", "diverged", "diverged", "converged"]
    assert results[1].output is None
    for x, r in zip(xs, results, strict=True):
        if r.status == "converged":
            assert r.state == alone(Reciprocal(), job(Reciprocal(), x)).state


def test_step_exception_fails_that_tick_and_the_worker_goes_on() -> None:
    model = Faulty()
    engine = Engine(model)
    engine.start()
    try:
        bad = engine.submit(job(model, [RAISE_X]))
        with pytest.raises(ModelStepError, match="faulty"):
            bad.result(10)
        assert engine.submit(job(model, [0.5])).result(10).status == "converged"
    finally:
        engine.stop()


def test_deadline_stops_a_row_with_its_current_iterate() -> None:
    model = Reciprocal()
    r = alone(model, job(model, [1e-4], tol=0.0, max_iters=10**8, timeout_s=0.2, trace=False))
    assert r.status == "deadline"
    assert r.iterations > 0
    expected = (1 - (1 - 1e-4) ** r.iterations) / 1e-4
    assert r.output is not None
    assert r.output["y"][0] == pytest.approx(expected, rel=1e-9)


def test_cancelled_row_leaves_at_the_next_tick() -> None:
    model = Reciprocal()
    engine = Engine(model)
    engine.start()
    try:
        j = job(model, [1e-4], tol=0.0, max_iters=10**8, trace=False)
        fut = engine.submit(j)
        wait_until(lambda: engine.steps > 5)
        j.cancelled = True
        r = fut.result(10)
        assert r.status == "cancelled"
        wait_until(lambda: engine.running == 0)
    finally:
        engine.stop()


def test_rows_of_different_sizes_share_a_batch() -> None:
    model = Reciprocal()
    xs = [[0.5], [0.25, 0.5, 1.0, 1.5, 0.1], [0.9, 0.9]]
    results = together(model, [job(model, x) for x in xs])
    for x, r in zip(xs, results, strict=True):
        assert r.output is not None
        torch.testing.assert_close(
            torch.tensor(r.output["y"], dtype=torch.float64),
            1 / torch.tensor(x, dtype=torch.float64),
            rtol=1e-7,
            atol=1e-7,
        )


def test_many_concurrent_submitters_all_get_answers() -> None:
    model = Reciprocal()
    engine = Engine(model, max_batch_rows=8, max_queue=1000)
    engine.start()
    results: list[SolveResult] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(10):
            r = engine.submit(job(model, [0.1 + 0.01 * ((k * 10 + i) % 80)], trace=False)).result(30)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.stop()
    assert len(results) == 60
    assert all(r.status == "converged" for r in results)


@pytest.mark.parametrize("m", [0, 3])
def test_extended_solve_goes_on_exactly_where_it_stopped(m: int) -> None:
    model = Reciprocal()
    engine = Engine(model)
    engine.start()
    try:
        whole = engine.submit(job(model, [0.05, 0.02], tol=0.0, max_iters=8, m=m)).result(10)
        first_job = job(model, [0.05, 0.02], tol=0.0, max_iters=5, m=m)
        first = engine.submit(first_job).result(10)
        assert first.status == "max_iters" and first.resume is not None
        second = engine.submit(extend_job(first_job, first, 3)).result(10)
    finally:
        engine.stop()
    # tol 0: the budget ends both, unless the iterate lands on an exact floating-point fixed point first
    assert second.iterations == whole.iterations > first.iterations == 5
    assert second.status == whole.status
    assert second.state == whole.state
    assert second.trace == whole.trace


def test_a_converged_solve_cannot_be_extended() -> None:
    model = Reciprocal()
    j = job(model, [0.5])
    r = alone(model, j)
    assert r.status == "converged" and r.resume is None
    with pytest.raises(ValueError, match="converged"):
        extend_job(j, r, 5)


def test_iterate_hook_sees_every_kth_iterate_and_the_last() -> None:
    model = Reciprocal()
    seen: list[tuple[int, float]] = []
    j = job(model, [0.5], tol=0.0, max_iters=10, every=4)
    j.watch = EveryIterate(lambda t, res, rel, y: seen.append((t, float(y[0, 0]))), every=4)
    alone(model, j)
    assert [t for t, _ in seen] == [4, 8, 10]
    assert seen[-1][1] == pytest.approx((1 - 0.5**10) / 0.5)


def test_an_extension_cancelled_before_admission_answers_where_it_stopped() -> None:
    model = Reciprocal()
    first_job = job(model, [0.1], tol=0.0, max_iters=5)
    first = alone(model, first_job)
    more = extend_job(first_job, first, 10)
    more.cancelled = True
    r = alone(model, more)
    assert r.status == "cancelled" and r.iterations == 5
    assert r.state == first.state


def test_static_batch_computes_every_row_until_its_slowest_stops_and_answers_them_together() -> None:
    """--batching static is the DEQ-library baseline: same answers; a request waits for its whole batch."""
    model = Reciprocal()
    specs = [([0.3, 0.6], 1e-2), ([0.3, 0.6], 1e-9), ([0.7], 1e-5)]
    jobs = [job(model, x, tol=tol) for x, tol in specs]
    engine = Engine(model, batching="static")
    futures = [engine.submit(j) for j in jobs]
    answered_at: list[int] = []
    for f in futures:
        f.add_done_callback(lambda _: answered_at.append(engine.steps))
    rows_per_tick: list[int] = []  # the rows each batch step computed

    def ran(seconds: float, steps: int, rows: int, row_steps: int) -> None:
        rows_per_tick.extend([rows] * steps)

    engine.observer.ran = ran  # type: ignore[method-assign]
    engine.start()
    try:
        results = [f.result(10) for f in futures]
        later = engine.submit(job(model, [0.5], tol=1e-6)).result(10)
    finally:
        engine.stop()
    slowest = max(r.iterations for r in results)
    assert rows_per_tick[:slowest] == [3] * slowest  # finished rows stay in the batch
    single = [alone(model, job(model, x, tol=tol)) for x, tol in specs]
    for b, s in zip(results, single, strict=True):
        assert (b.status, b.iterations, b.state) == (s.status, s.iterations, s.state)
    assert answered_at == [slowest] * 3
    assert len({r.iterations for r in results}) == 3
    assert later.status == "converged" and later.queue_ms >= 0


def test_row_aligned_contexts_survive_joins_and_leaves() -> None:
    """deq-mlp's batch context is selected and appended as rows come and go (ImplicitModel.rebatch)."""
    from eqserve.models.registry import load_model

    model = load_model("deq-mlp")

    def mlp_job(k: int, tol: float) -> SolveJob:
        ctx = model.encode(model.Input(x=[0.15 * (k + 1), 0.5, 0.9 - 0.1 * k, 0.3]))
        return SolveJob(id=str(k), ctx=ctx, y0=model.init(ctx), max_iters=500, tol=tol, return_state=True)

    specs = [(k, tol) for k in range(5) for tol in (1e-3, 1e-6)]
    engine = Engine(model)
    engine.start()
    try:
        futures = []
        for k, tol in specs:  # staggered: each join meets rows that have left or are still running
            futures.append(engine.submit(mlp_job(k, tol)))
            wait_until(lambda: engine.steps > 2 * len(futures))
        staggered = [f.result(10) for f in futures]
    finally:
        engine.stop()
    for (k, tol), got in zip(specs, staggered, strict=True):
        want = alone(model, mlp_job(k, tol))
        # A matmul's rounding depends on the batch it runs in (BLAS blocking), so a row that meets its
        # tolerance just so may stop one iteration apart; another row's context would be far off.
        assert got.status == want.status == "converged"
        assert abs(got.iterations - want.iterations) <= 1
        torch.testing.assert_close(torch.tensor(got.state), torch.tensor(want.state), rtol=0, atol=1e-3)


@pytest.mark.parametrize("m", [0, 4])
@pytest.mark.parametrize("rebuild_s", [math.inf, 0.0])
def test_a_retired_slot_is_taken_over_or_compacted_by_what_it_costs(m: int, rebuild_s: float) -> None:
    """A newcomer takes the slot a retired row left (the batch does not grow) while the empty slot
    has cost less than a compaction; the engine compacts once it has (at once when compacting is
    free; after COMPACT_AFTER_STEPS ticks at the latest). Every answer is the one it gets alone."""
    model = RowAligned()
    engine = Engine(model)
    engine.rebuild_s = rebuild_s  # pin the measured cost of a compaction (the policy's input)
    widths: list[int] = []  # widths[i]: rows tick i computed, seen at the long row's iterate i + 1
    order: list[str | None] = []  # the batch's rows by request, seen at the long row's iterate 7

    def slow(x: list[float], n: int, m: int) -> SolveJob:  # η = 0.01: Picard never converges here
        return job(model, x, eta=0.01, max_iters=n, tol=0.0, m=m, trace=False)

    specs = [([0.5, 1.5], 3, m), ([0.3, 0.8], 40, 0), ([0.4, 1.3], 12, m)]
    short, long, late = (slow(*spec) for spec in specs)

    def watch(t: int, *_: object) -> None:
        widths.append(engine.last_run_rows)
        if t == 5:  # the short row retired at tick 3
            engine.submit(late)
        if t == 7:
            order.extend(None if r is None else r.job.id for r in engine.scheduler.rows)

    long.watch = EveryIterate(watch)
    futures = [engine.submit(short), engine.submit(long)]
    engine.start()
    try:
        results = [f.result(10) for f in futures] + [late.future.result(10)]
    finally:
        engine.stop()
    last = 5 + results[2].iterations  # the newcomer computes in ticks 6 … last
    if rebuild_s:  # never worth it: the slots wait their longest, the newcomer takes the old one
        assert order == [late.id, long.id]
        end = last + COMPACT_AFTER_STEPS
        assert widths[1 : end + 1] == [2] * end
        assert widths[end + 1 :] == [1] * (40 - end - 1)
    else:  # free: the empty slot is compacted before the next tick, the newcomer appended; the
        # compaction measured its own cost, so the newcomer's slot waits by what that was
        assert order == [long.id, late.id]
        assert widths[1 : last + 1] == [2] * 3 + [1] * 2 + [2] * (last - 5)
        assert widths[last + COMPACT_AFTER_STEPS + 1 :] == [1] * (40 - last - COMPACT_AFTER_STEPS - 1)
    for got, want in zip(results, [alone(model, slow(*spec)) for spec in specs], strict=True):
        assert got.status == want.status
        assert got.iterations == want.iterations and got.state == want.state


@pytest.mark.parametrize("model", [Reciprocal(), RowAligned()], ids=["padded", "row-aligned"])
def test_rows_joining_and_leaving_at_random_get_their_solo_answers(model: Reciprocal) -> None:
    """Requests of different solvers and budgets (and widths, where the model pads) arrive at random
    ticks: slots are taken over, appended, compacted and re-padded underneath, and each answer is
    exactly its solo one (reciprocal is elementwise, so no rounding depends on the batch)."""
    import random

    rng = random.Random(7)
    widths = (3, 3) if isinstance(model, RowAligned) else (1, 5)
    specs = [
        (
            [rng.uniform(0.2, 1.8) for _ in range(rng.randint(*widths))],
            {
                "m": rng.choice([0, 0, 3, 5]),
                "tol": 10 ** rng.uniform(-12, -2),
                "max_iters": rng.randint(1, 60),
            },
        )
        for _ in range(48)
    ]
    engine = Engine(model, max_batch_rows=8, max_queue=100)
    engine.start()
    try:
        futures = []
        for x, kw in specs:
            futures.append(engine.submit(job(model, x, **kw)))
            time.sleep(rng.choice([0.0, 0.0, 0.0005, 0.002]))
        results = [f.result(10) for f in futures]
    finally:
        engine.stop()
    for (x, kw), got in zip(specs, results, strict=True):
        want = alone(model, job(model, x, **kw))
        assert (got.status, got.iterations, got.state) == (want.status, want.iterations, want.state), (x, kw)
        # the residual norm of a zero-padded row may round in its last bit (the reduction's blocking)
        assert got.trace is not None and want.trace is not None
        assert [p["t"] for p in got.trace] == [p["t"] for p in want.trace]
        for a, b in zip(got.trace, want.trace, strict=True):
            assert a["residual"] == pytest.approx(b["residual"], rel=1e-12, abs=1e-300)
