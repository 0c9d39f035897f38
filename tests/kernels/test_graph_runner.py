"""The CUDA-graph runner against reference.dense_solve (on the CPU its K launches run without a graph)."""

from __future__ import annotations

import pytest
import torch

from eqserve.kernels import reference
from eqserve.kernels.dense_step import StepConfig
from eqserve.kernels.graph_runner import IN_FLIGHT, GraphRunner, _Batch
from tests.kernels.problems import assert_same_solve, budgets, dense, solve_case


@pytest.mark.parametrize(
    "config",
    [StepConfig(16, 16, 16), StepConfig(16, 32, 16, split_k=4)],
    ids=lambda c: c.name,
)
def test_runner_matches_reference(case: tuple[str, torch.dtype], config: StepConfig) -> None:
    device, dtype = case
    p, bud = solve_case(device, dtype, b=20)
    runner = GraphRunner(p.w, steps_per_replay=4, config=config)
    # 20 rows pad to 32 (12 zero-budget rows); rows stop inside replays; then fewer rows (a
    # smaller padded batch), then the first batch size again over buffers left by the first solve.
    for rows in (slice(0, 20), slice(3, 8), slice(0, 20)):
        args = (p.y0[rows], p.inj[rows], p.beta[rows], bud.tol[rows], bud.rel_mode[rows], bud.max_iters[rows])
        assert_same_solve(runner(*args), reference.dense_solve(args[0], p.w, *args[1:]), dtype)


def test_runner_needs_an_even_replay() -> None:
    with pytest.raises(ValueError, match="even"):
        GraphRunner(torch.zeros(4, 4), steps_per_replay=3)


def test_runner_stops_queueing_once_every_row_has_stopped(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that converge by iteration 9 under budgets of 200: the host queues the replays up to the
    one that stops the last row (3 of K = 4) and at most IN_FLIGHT − 1 more, not the budget's 50."""
    p = dense(4, 24, device, torch.float32, seed=3)
    bud = budgets(p, [5, 9, 7, 6], [200] * 4)
    replays: list[int] = []
    queue = _Batch.replay
    monkeypatch.setattr(_Batch, "replay", lambda self, slot: (replays.append(slot), queue(self, slot)))
    runner = GraphRunner(p.w, steps_per_replay=4, config=StepConfig(16, 16, 16))
    out = runner(p.y0, p.inj, p.beta, bud.tol, bud.rel_mode, bud.max_iters)
    assert out.iters.tolist() == [5, 9, 7, 6]
    assert 3 <= len(replays) <= 3 + IN_FLIGHT - 1
