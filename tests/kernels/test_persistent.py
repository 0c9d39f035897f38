"""The persistent solve against reference.dense_solve."""

from __future__ import annotations

import pytest
import torch

from eqserve.kernels import persistent, reference
from tests.kernels.problems import assert_same_solve, solve_case


def test_persistent_matches_reference(case: tuple[str, torch.dtype]) -> None:
    device, dtype = case
    p, bud = solve_case(device, dtype)  # 20 rows: two programs, the second partly padding
    args = (p.y0, p.w, p.inj, p.beta, bud.tol, bud.rel_mode, bud.max_iters)
    assert_same_solve(persistent.solve(*args), reference.dense_solve(*args), dtype)


def test_persistent_takes_only_small_states() -> None:
    f32, bf16 = torch.float32, torch.bfloat16
    assert persistent.fits(64, f32, f32) and not persistent.fits(65, f32, f32)
    assert persistent.fits(128, bf16, bf16) and not persistent.fits(129, bf16, bf16)
    assert not persistent.fits(65, bf16, f32)  # bf16 weights, fp32 state: an fp32 dot
    y = torch.zeros(1, 65)
    with pytest.raises(ValueError, match="n ≤ 64"):
        persistent.solve(y, torch.zeros(65, 65), y, torch.ones(1, 1), *(torch.zeros(1),) * 2, torch.ones(1))
