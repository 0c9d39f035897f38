"""Broyden's memory policy (restart once the memory is full) and its convergence on a rotation-like
contraction, where a sliding window of good Broyden's updates stalls."""

from __future__ import annotations

import torch

from eqserve.solvers import SolverState
from eqserve.solvers.broyden import held


def test_a_row_holds_its_updates_since_its_last_restart_and_never_its_point() -> None:
    ring, slots = 4, 6  # memory 3, in a batch of 6 slots
    counts = []
    for step in range(10):
        point, prev = step % ring, (step - 1) % ring if step else 0
        kept = held(torch.tensor([step]), torch.tensor([ring]), torch.tensor([prev]), slots)[0]
        assert not kept[point]
        assert not kept[ring:].any()
        if kept.any():
            assert kept[prev]
        counts.append(int(kept.sum()))
    assert counts == [0, 1, 2, 3, 1, 2, 3, 1, 2, 3]


def _steps_to(
    tol: float, method: str, m: int, a: torch.Tensor, q: torch.Tensor, c: torch.Tensor
) -> list[int]:
    """Per row, the G-evaluations until ‖G(y) − y‖ ≤ tol for G(y) = a ⊙ (y Qᵀ) + c from y = 0."""
    y = torch.zeros_like(c)
    state = SolverState.new([1.0] * len(c), [m] * len(c), y, [method] * len(c))
    first = [0] * len(c)
    for k in range(1, 3001):
        gy = a * (y @ q.T) + c
        for i, r in enumerate((gy - y).norm(dim=1).tolist()):
            if not first[i] and r <= tol:
                first[i] = k
        if all(first):
            break
        y = state.update(y, gy)
    return first


def test_broyden_converges_on_rotations_where_a_sliding_window_of_updates_stalls() -> None:
    """Orthogonal Q: eigenvalues of a ⊙ Q spread on a circle. With memory 10, far faster than Picard
    where Q is 8 × 8, and no slower on 48 × 48 (restarted, like GMRES(10) on the same spectrum)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.tensor([[0.9], [0.95], [0.97]], dtype=torch.float64)
    for n, speedup in ((8, 3.0), (48, 1.0)):
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        c = torch.randn(3, n, generator=gen, dtype=torch.float64)
        picard = _steps_to(1e-10, "picard", 0, a, q, c)
        broyden = _steps_to(1e-10, "broyden", 10, a, q, c)
        assert all(picard) and all(broyden), (n, broyden, picard)
        assert all(b * speedup <= p for b, p in zip(broyden, picard, strict=True)), (n, broyden, picard)
