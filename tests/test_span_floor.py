"""bench/span_floor.py: the span floor is exact where GMRES's answer is known, and below what our
Anderson needs on a linear contraction."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from eqserve.solvers import SolverState

_spec = importlib.util.spec_from_file_location(
    "span_floor", Path(__file__).resolve().parents[1] / "bench" / "span_floor.py"
)
assert _spec is not None and _spec.loader is not None
span = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(span)


def test_three_eigenvalues_are_solved_at_the_fourth_evaluation() -> None:
    """G(y) = D y + c with D diagonal of 3 distinct values: the residuals r_0..r_3 span the exact
        answer (D's minimal polynomial has degree 3), so the floor is 4 for every row, and not 3 (in fp64,
    so that G's rounding does not blur it)."""
    g = torch.Generator().manual_seed(0)
    d = torch.tensor([0.5, 0.7, 0.9], dtype=torch.float64).repeat_interleave(10)
    c = torch.randn(6, 30, generator=g, dtype=torch.float64)
    floor = span.span_floor(lambda y: y * d + c, torch.zeros(6, 30, dtype=torch.float64), 1e-9, 50)
    assert floor is not None and floor.tolist() == [4] * 6


def test_floor_is_below_what_our_anderson_needs_on_a_linear_contraction() -> None:
    """Per row, our served Anderson (SolverState.update, m = 10) measures ‖G(y) − y‖ ≤ tol no
    sooner than the floor; Picard steps take longer still."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    a = torch.linspace(0.5, 0.95, 8).unsqueeze(1)
    b = (1 - a) * torch.randn(8, 40, generator=g)

    def step(y: torch.Tensor) -> torch.Tensor:
        return (a * (y.double() @ q.T) + b).to(y.dtype)

    y0, tol = torch.zeros(8, 40), 1e-4
    floor = span.span_floor(step, y0, tol, 400)
    assert floor is not None

    state = SolverState.new([1.0] * 8, [10] * 8, y0)
    hit = torch.zeros(8, dtype=torch.long)
    y = y0
    for k in range(1, 401):
        gy = step(y)
        hit = torch.where((hit == 0) & ((gy - y).norm(dim=1) <= tol), k, hit)
        if (hit > 0).all():
            break
        y = state.update(y, gy)
    assert (hit > 0).all()
    assert (floor <= hit).all(), (floor.tolist(), hit.tolist())
    assert floor.sum() < hit.sum()  # the floor is not trivially our own count
