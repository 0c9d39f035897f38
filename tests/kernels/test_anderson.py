"""Anderson's fused Gram-row update and mixing against the references and SolverState.update."""

from __future__ import annotations

import torch

from kernels import anderson, dispatch, reference
from kernels.reference import ANDERSON_MAX_WEIGHT, ANDERSON_RIDGE
from service.solvers import SolverState
from tests.kernels.problems import TOL, dense


def _history(device: str, dtype: torch.dtype, b: int = 5, hist: int = 5, n: int = 40) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [
        torch.randn(*shape, generator=g).to(device, dtype) for shape in ((b, hist, n),) * 2 + ((b, n),) * 2
    ]


def test_gram_row_matches_reference(case: tuple[str, torch.dtype]) -> None:
    device, dtype = case
    hx, hf, y, gy = _history(device, dtype)
    slot = torch.tensor([0, 4, 2, 2, 1], device=device)
    gram = reference.gram_matrix(hx, hf)
    want = [t.clone() for t in (hx, hf, gram)]
    reference.anderson_gram_row(y, gy, *want, slot)
    anderson.gram_row(y, gy, hx, hf, gram, slot, block_n=16)  # 40 entries: three column steps
    assert torch.equal(hx, want[0]) and torch.equal(hf, want[1])
    torch.testing.assert_close(gram, want[2], **TOL[dtype])
    torch.testing.assert_close(gram, reference.gram_matrix(hx, hf), **TOL[dtype])


def test_mix_matches_reference(case: tuple[str, torch.dtype]) -> None:
    device, dtype = case
    hx, hf, y, gy = _history(device, dtype)
    alpha = torch.softmax(torch.randn(5, 5, generator=torch.Generator().manual_seed(4)), 1).to(device)
    ok = torch.tensor([True, False, True, True, False], device=device)
    beta = torch.linspace(0.3, 1.0, 5, device=device).unsqueeze(1).to(dtype)
    got = anderson.mix(y, gy, hx, hf, alpha, ok, beta, block_n=16)
    torch.testing.assert_close(got, reference.anderson_mix(y, gy, hx, hf, alpha, ok, beta), **TOL[dtype])


def test_update_matches_solver_state(case: tuple[str, torch.dtype]) -> None:
    """Six Anderson steps over rows with histories 0 (Picard) to 5: the kept Gram matrix, the
    fused kernels and the bordered solve give SolverState.update's iterates."""
    device, dtype = case
    p = dense(5, 40, device, dtype, seed=5)
    m = [0, 1, 2, 3, 5]
    state = SolverState.new(p.beta.squeeze(1).tolist(), m, p.y0)
    assert state.X is not None and state.F is not None
    hx, hf = state.X.clone(), state.F.clone()
    gram = reference.gram_matrix(hx, hf)
    count, mt = state.count.clone(), torch.tensor(m, device=device)
    y = p.y0
    for _ in range(6):
        gy = reference.dense_step(y, p.w, p.inj)
        want = state.update(y, gy)
        got, count = dispatch.anderson_update(
            y,
            gy,
            hx,
            hf,
            gram,
            count,
            mt,
            state.beta,
            "triton",
            ridge=ANDERSON_RIDGE,
            max_weight=ANDERSON_MAX_WEIGHT,
        )
        torch.testing.assert_close(got, want, **TOL[dtype])
        y = want
    assert count.tolist() == state.count.tolist()
