"""Solvers against closed forms, and Anderson's weights and fallback."""

from __future__ import annotations

import pytest
import torch

from eqserve.kernels.reference import residuals
from eqserve.models.reciprocal import Reciprocal, ReciprocalInput
from eqserve.solvers import SolverState, anderson


def _iterate(model: Reciprocal, x: list[float], steps: int, beta: float = 1.0, m: int = 0, eta: float = 1.0):
    ctx = model.collate([model.encode(ReciprocalInput(x=x, eta=eta))])
    y = model.init(ctx)
    state = SolverState.new([beta], [m], y)
    for _ in range(steps):
        y = state.update(y, model.step(y, ctx))
    return y[0]


@pytest.mark.parametrize("t", [1, 2, 5, 17])
def test_picard_matches_closed_form(t: int) -> None:
    x = torch.tensor([0.25, 0.5, 1.0, 1.5], dtype=torch.float64)
    y = _iterate(Reciprocal(), x.tolist(), t, eta=0.9)
    expected = (1 - (1 - 0.9 * x) ** t) / x
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_damped_picard_is_picard_with_smaller_step() -> None:
    x = torch.tensor([0.3, 0.8], dtype=torch.float64)
    y = _iterate(Reciprocal(), x.tolist(), 9, beta=0.5)
    torch.testing.assert_close(y, (1 - (1 - 0.5 * x) ** 9) / x, rtol=1e-12, atol=1e-12)


def test_anderson_solves_linear_problem_in_few_steps() -> None:
    x = [0.05, 0.1, 0.2]
    picard = _iterate(Reciprocal(), x, 12)
    anderson = _iterate(Reciprocal(), x, 12, m=5)
    truth = 1 / torch.tensor(x, dtype=torch.float64)
    assert (anderson - truth).norm() < 1e-8
    assert (picard - truth).norm() > 1.0


def test_rows_with_and_without_history_share_a_batch() -> None:
    model = Reciprocal()
    ctxs = [model.encode(ReciprocalInput(x=[0.1, 0.2])), model.encode(ReciprocalInput(x=[0.1, 0.2]))]
    ctx = model.collate(ctxs)
    y = torch.cat([model.init(c) for c in ctxs])
    state = SolverState.new([1.0, 1.0], [0, 4], y)
    for _ in range(6):
        y = state.update(y, model.step(y, ctx))
    assert torch.equal(y[0], _iterate(model, [0.1, 0.2], 6))
    assert torch.equal(y[1], _iterate(model, [0.1, 0.2], 6, m=4))


def test_residuals_are_abs_and_rel() -> None:
    y = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    gy = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    a, r = residuals(y, gy)
    torch.testing.assert_close(a, torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(r, torch.tensor([1.0, 0.0]), atol=1e-9, rtol=1e-6)


def test_anderson_falls_back_to_picard_on_degenerate_history() -> None:
    # identical residuals make the unregularised system singular; the ridge or the fallback must
    # still give a finite, sensible next iterate
    model = Reciprocal()
    ctx = model.collate([model.encode(ReciprocalInput(x=[0.5]))])
    y = model.init(ctx)
    state = SolverState.new([1.0], [3], y)
    for _ in range(40):
        y = state.update(y, model.step(y, ctx))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[0], torch.tensor([2.0], dtype=torch.float64))


def test_anderson_needs_fewer_g_evaluations_than_picard_on_deq_mlp() -> None:
    from eqserve.models.registry import load_model

    model = load_model("deq-mlp")
    x = torch.tensor([[0.05, 0.3, 0.7, 1.0], [0.5, 0.5, 0.5, 0.5], [0.1, 0.9, 0.2, 0.06]])
    with torch.no_grad():
        ctx = {"inj": model.inj(x)}

    def evals_to(m: int, tol: float = 1e-6) -> list[int]:
        y = torch.zeros(3, model.hidden)
        state = SolverState.new([1.0] * 3, [m] * 3, y)
        done = [0, 0, 0]
        with torch.no_grad():
            for t in range(1, 3000):
                gy = model.step(y, ctx)
                res, _ = residuals(y, gy)
                for i in range(3):
                    if not done[i] and res[i] <= tol:
                        done[i] = t
                if all(done):
                    return done
                y = state.update(y, gy)
        raise AssertionError(f"m={m} did not reach {tol}: {done}")

    picard, anderson = evals_to(0), evals_to(5)
    assert all(a < p for a, p in zip(anderson, picard, strict=True)), (anderson, picard)
    assert sum(anderson) < 0.7 * sum(picard)


FP32_DOTS = {"rtol": 1e-6, "atol": 1e-7}
"""The kept Gram matrix of an fp32 history is refreshed from fp32 dot products."""


def _gram_of(state: SolverState) -> torch.Tensor:
    assert state.hist is not None
    r = state.hist[:, :, state.hist.shape[2] // 2 :].double()
    return r @ r.mT


def test_kept_gram_is_the_residual_gram_through_wraparound_select_concat_and_fit() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(4, 6)
    state = SolverState.new([1.0, 0.5, 1.0, 0.8], [3, 2, 0, 3], y)
    for _ in range(7):  # past every row's ring
        y = state.update(y, torch.randn(4, 6, generator=g))
    assert state.gram is not None
    torch.testing.assert_close(state.gram, _gram_of(state), **FP32_DOTS)
    assert state.count.tolist() == [7] * 4
    sel = state.select(torch.tensor([3, 0]))
    other = SolverState.new([1.0], [4], torch.zeros(1, 8))
    both = sel.fit((6,), (8,)).concat(other)
    # memory 4 and the newest point: 5 slots
    assert both.hist is not None and both.hist.shape == (3, 5, 16) and both.gram is not None
    torch.testing.assert_close(both.gram, _gram_of(both), **FP32_DOTS)
    assert both.X is not None and sel.X is not None
    assert torch.equal(both.X[:2, :4, :6], sel.X) and both.X[:2, :, 6:].abs().sum() == 0
    cut = both.fit((8,), (5,))
    assert cut.gram is not None and cut.X is not None
    torch.testing.assert_close(cut.gram, _gram_of(cut), **FP32_DOTS)
    assert torch.equal(cut.X, both.X[:, :, :5])


def test_picard_rows_concatenated_with_anderson_rows_keep_their_rule() -> None:
    g = torch.Generator().manual_seed(1)
    plain = SolverState.new([0.5], [0], torch.zeros(1, 3))
    assert plain.hist is None and plain.X is None
    state = plain.concat(SolverState.new([1.0], [2], torch.zeros(1, 3)))
    y, gy = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    torch.testing.assert_close(state.update(y, gy)[0], y[0] + 0.5 * (gy[0] - y[0]))
    assert state.hist is not None  # slot 0 holds (y, G(y) − y) of both rows
    torch.testing.assert_close(state.hist[:, 0], torch.cat([y, gy - y], 1))


def _history(diffs: torch.Tensor, f: torch.Tensor, point: int) -> torch.Tensor:
    """A (1, M, 2n) history whose f-halves are the difference columns `diffs` (k, n) around the point's
    residual f (n,) in slot `point` (x-halves zero: the weights read only the Gram of the f-halves)."""
    k, n = diffs.shape
    hist = torch.zeros(1, k + 1, 2 * n, dtype=torch.float64)
    others = [s for s in range(k + 1) if s != point]
    hist[0, others, n:] = diffs
    hist[0, point, n:] = f
    return hist


def test_anderson_weights_are_the_least_squares_fit_of_the_point_residual_by_the_differences() -> None:
    torch.manual_seed(3)
    diffs, f = torch.randn(4, 30, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
    gram = anderson.gram(_history(diffs, f, point=2))
    gamma, ok = anderson.solve(gram, torch.tensor([2]), torch.tensor([5]), ridge=0.0)
    want = torch.linalg.lstsq(diffs.T, f.unsqueeze(1)).solution.squeeze(1)
    assert bool(ok[0]) and gamma[0, 2] == 0.0  # the point's own slot carries no weight
    torch.testing.assert_close(gamma[0, [0, 1, 3, 4]], want, rtol=1e-8, atol=1e-10)


def test_anderson_solve_uses_only_the_written_slots() -> None:
    torch.manual_seed(4)
    diffs, f = torch.randn(2, 12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    hist = torch.cat([_history(diffs, f, point=0), torch.zeros(1, 3, 24, dtype=torch.float64)], 1)
    gamma, ok = anderson.solve(anderson.gram(hist), torch.tensor([0]), torch.tensor([6]), ridge=0.0)
    want = torch.linalg.lstsq(diffs.T, f.unsqueeze(1)).solution.squeeze(1)
    assert bool(ok[0]) and gamma[0, 3:].abs().sum() == 0.0
    torch.testing.assert_close(gamma[0, 1:3], want, rtol=1e-8, atol=1e-10)


def test_anderson_solve_flags_rows_it_cannot_trust_and_only_those() -> None:
    torch.manual_seed(5)
    good = _history(torch.randn(3, 10, dtype=torch.float64), torch.randn(10, dtype=torch.float64), point=0)
    nan = good.clone()
    nan[0, 1, 10:] = float("nan")
    gram = torch.cat([anderson.gram(good), anderson.gram(nan)])
    indefinite = gram[:1].clone()
    indefinite[0, 1, 2] = indefinite[0, 2, 1] = 10 * (indefinite[0, 1, 1] * indefinite[0, 2, 2]).sqrt()
    gram = torch.cat([gram, indefinite])
    _, ok = anderson.solve(gram, torch.zeros(3, dtype=torch.long), torch.full((3,), 4))
    assert ok.tolist() == [True, False, False]
