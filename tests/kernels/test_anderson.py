"""Anderson's fused record and mixing against the solvers' torch math, and SolverState.update on both
backends."""

from __future__ import annotations

import torch

from eqserve.kernels import anderson, reference
from eqserve.solvers import SolverState
from eqserve.solvers import anderson as ref
from tests.kernels.problems import TOL, dense

B, M, N = 5, 5, 40
"""5 rows, 5 history slots, 40 state entries: three column steps of 16, the last one partial."""


def _history(device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random history (B, M, 2N) and an iterate y with its image G(y), row 3 of them NaN."""
    g = torch.Generator().manual_seed(3)
    shapes = ((B, M, 2 * N), (B, N), (B, N))
    hist, y, gy = (torch.randn(*shape, generator=g).to(device, dtype) for shape in shapes)
    y[3, 7] = torch.nan
    return hist, y, gy


def test_record_matches_reference(case: tuple[str, torch.dtype]) -> None:
    """Rows that turn their previous point into a difference, one whose previous point is its point
    (a first step), and a NaN row that keeps to itself."""
    device, dtype = case
    hist, y, gy = _history(device, dtype)
    hist[2, 3:] = 0.0  # row 2 has written only slots 0-2
    prev = torch.tensor([0, 4, 2, 2, 1], device=device)
    point = torch.tensor([1, 0, 2, 0, 2], device=device)
    gram = ref.gram(hist)
    want = [t.clone() for t in (hist, gram)]
    ref.record(y, gy, *want, prev, point)
    anderson.record(y, gy, hist, gram, prev, point, block_n=16)
    assert torch.equal(hist.isnan(), want[0].isnan())
    torch.testing.assert_close(hist, want[0], equal_nan=True, rtol=0, atol=0)
    tol = TOL[dtype]
    torch.testing.assert_close(gram, want[1], equal_nan=True, **tol)
    torch.testing.assert_close(gram, ref.gram(hist), equal_nan=True, **tol)
    assert gram[3].isnan().any() and not gram[[0, 1, 2, 4]].isnan().any()  # the NaN row keeps to itself


def test_mix_matches_reference(case: tuple[str, torch.dtype]) -> None:
    device, dtype = case
    hist, y, gy = _history(device, dtype)
    g = torch.Generator().manual_seed(4)
    wx, wf = torch.randn(2, B, M, generator=g).to(device)
    wx[1], wf[1] = 0.0, 0.0  # a Picard row
    wf[2] = 0.0  # a Broyden row: weights on the first halves only
    beta = torch.linspace(0.3, 1.0, B, device=device).unsqueeze(1).to(dtype)
    got = anderson.mix(y, gy, hist, wx, wf, beta, block_n=16)
    want = ref.mix(y, gy, hist, wx, wf, beta)
    torch.testing.assert_close(got, want, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(got[1], reference.picard(y, gy, beta)[1], **TOL[dtype])
    assert got[3].isnan().any() and not got[[0, 1, 2, 4]].isnan().any()


def test_update_matches_on_both_backends(case: tuple[str, torch.dtype]) -> None:
    """Eight steps over rows with histories 0 (Picard) to 5, so that the ring wraps: the fused
    record and mixing give the torch update's iterates, history and Gram matrix."""
    device, dtype = case
    p = dense(B, N, device, dtype, seed=5)
    m = [0, 1, 2, 3, 5]
    states = [SolverState.new(p.beta.squeeze(1).tolist(), m, p.y0) for _ in range(2)]
    y = p.y0
    for _ in range(8):
        gy = reference.dense_step(y, p.w, p.inj)
        want = states[0].update(y, gy, "torch")
        got = states[1].update(y, gy, "triton")
        torch.testing.assert_close(got, want, **TOL[dtype])
        y = want
    torch.testing.assert_close(states[1].hist, states[0].hist, **TOL[dtype])
    torch.testing.assert_close(states[1].gram, states[0].gram, **TOL[dtype])
    assert states[1].count.tolist() == states[0].count.tolist() == [8] * B
