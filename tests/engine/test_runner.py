"""The step runners: the host's per-step decision is the device's, and a run of k steps ends each row
exactly where one step at a time ends it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from eqserve.engine.batch import Batch
from eqserve.engine.core import Engine
from eqserve.engine.job import EveryIterate, SolveJob, SolveResult
from eqserve.engine.runner import DeviceRunner, HostRunner
from eqserve.kernels.reference import Stop, decide, decide_row
from eqserve.models.reciprocal import ReciprocalInput
from tests.fake_models import BLOWUP_X, NAN_X, Faulty


def test_the_host_decision_is_the_device_decision() -> None:
    values = [0.0, 1e-9, 0.5, 1.0, 2.0, 5e5, 2e6, math.inf, -math.inf, math.nan]
    sums = [0.0, math.inf, math.nan]
    cases = list(itertools.product(values, [0.1, math.nan], sums, [0.0, 3.0], [1, 5], [True, False]))
    abs_res, rel_res, y_sum, first, iters, rel_mode = (list(c) for c in zip(*cases, strict=True))
    n = len(cases)
    y = torch.tensor(y_sum, dtype=torch.float32).unsqueeze(1)
    codes = decide(
        torch.tensor(abs_res, dtype=torch.float32),
        torch.tensor(rel_res, dtype=torch.float32),
        y,
        torch.tensor(first, dtype=torch.float64),
        torch.tensor(iters),
        torch.full((n,), 5),
        torch.full((n,), 0.5, dtype=torch.float64),
        torch.tensor(rel_mode),
    ).tolist()
    f32 = [float(v) for v in torch.tensor([abs_res, rel_res], dtype=torch.float32).flatten()]
    host = [decide_row(f32[j], f32[n + j], *c[2:5], 5, 0.5, c[5]) for j, c in enumerate(cases)]
    assert host == codes


def jobs(model: Faulty) -> list[SolveJob]:
    specs = [([0.5, 0.25], 1e-9, 500, 0), ([NAN_X], 1e-9, 500, 0), ([BLOWUP_X, 0.5], 1e-9, 500, 0),
             ([0.8], 1e-3, 500, 3), ([0.3, 0.6, 0.9], 0.0, 7, 0), ([0.1], 1e-6, 500, 4)]  # fmt: skip
    out = []
    for x, tol, max_iters, m in specs:
        ctx = model.encode(ReciprocalInput(x=x, eta=1.0))
        out.append(SolveJob(id=str(x), ctx=ctx, y0=model.init(ctx), max_iters=max_iters, tol=tol, m=m))
    return out


@pytest.mark.parametrize("k", [1, 3, 40])
def test_the_host_and_device_runners_stop_every_row_at_the_same_step_with_the_same_state(k: int) -> None:
    model = Faulty()
    outs, batches = [], []
    for runner in (HostRunner("torch"), DeviceRunner("torch")):
        batch = Batch(model)
        batch.rebuild([], [], jobs(model))
        active = list(range(len(batch)))
        got = []
        with torch.inference_mode():
            while active:  # run after run, as the engine does, dropping the rows that stopped
                out = runner.run(batch, k, active, lambda: False)
                got += [(i, code, batch.iters[i], out.final[i]) for i, code, _ in sorted(out.stops)]
                active = [i for i in active if i not in out.final]
        outs.append(sorted(got, key=lambda g: g[0]))
        batches.append(batch)
    host, device = outs
    assert [g[:3] for g in host] == [g[:3] for g in device]
    assert {g[1] for g in host} == {Stop.CONVERGED, Stop.DIVERGED, Stop.MAX_ITERS}
    for h, d in zip(host, device, strict=True):
        torch.testing.assert_close(h[3], d[3], rtol=0, atol=0, equal_nan=True)


def solve_all(model: Faulty, watched: bool) -> list[SolveResult]:
    """Every job in one engine; `watched` jobs carry a watch of every iterate, so each run is one step."""
    engine = Engine(model)
    js = jobs(model)
    for j in js:
        j.trace, j.return_state, j.every = True, True, 2
        if watched:
            j.watch = EveryIterate(lambda *_: None)
    futures = [engine.submit(j) for j in js]
    engine.start()
    try:
        return [f.result(10) for f in futures]
    finally:
        engine.stop()


def test_runs_of_many_steps_answer_exactly_as_one_step_at_a_time() -> None:
    model = Faulty()
    many, one = solve_all(model, watched=False), solve_all(model, watched=True)
    for a, b in zip(many, one, strict=True):
        # repr: a diverged row's NaN residuals compare equal as text
        assert repr((a.status, a.iterations, a.state, a.trace, a.residual)) == repr(
            (b.status, b.iterations, b.state, b.trace, b.residual)
        )
