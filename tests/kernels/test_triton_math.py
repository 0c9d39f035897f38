"""The shared device functions against torch: tanh from exp, and the stop decision's every branch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eqserve.kernels import reference, triton_math
from eqserve.kernels.reference import Stop


@triton.jit
def _tanh_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, triton_math.tanh(x), mask=offs < n)


@triton.jit
def _decide_kernel(
    abs_ptr,
    rel_ptr,
    finite_ptr,
    first_ptr,
    iters_ptr,
    max_ptr,
    tol_ptr,
    mode_ptr,
    out_ptr,
    n,
    BLOCK: tl.constexpr,
):
    offs = tl.arange(0, BLOCK)
    m = offs < n
    code = triton_math.decide(
        tl.load(abs_ptr + offs, mask=m),
        tl.load(rel_ptr + offs, mask=m),
        tl.load(finite_ptr + offs, mask=m) != 0,
        tl.load(first_ptr + offs, mask=m),
        tl.load(iters_ptr + offs, mask=m),
        tl.load(max_ptr + offs, mask=m),
        tl.load(tol_ptr + offs, mask=m),
        tl.load(mode_ptr + offs, mask=m) != 0,
    )
    tl.store(out_ptr + offs, code.to(tl.int64), mask=m)


def test_tanh_from_exp(device: str) -> None:
    x = torch.tensor([0.0, -0.0, 1e-4, -3e-3, 0.5, -1.0, 3.0, -9.0, 20.0, 1e4, float("inf"), -float("inf")])
    x = torch.cat([x, torch.linspace(-6, 6, 40), torch.tensor([float("nan")])]).to(device)
    out = torch.empty_like(x)
    _tanh_kernel[(1,)](x, out, x.numel(), BLOCK=64)
    torch.testing.assert_close(
        out, torch.tanh(x), rtol=0, atol=1e-6, equal_nan=True
    )  # GPU exp is approximate


def test_decide_every_branch(device: str) -> None:
    nan, inf = float("nan"), float("inf")
    #         (abs,   rel,  y finite, first, iters, max, tol,  rel mode) → expected
    rows = [
        ((0.5, 0.1, True, 0.9, 3, 10, 1e-3, False), Stop.RUNNING),
        ((1e-4, 0.5, True, 0.9, 3, 10, 1e-3, False), Stop.CONVERGED),
        ((0.5, 1e-4, True, 0.9, 3, 10, 1e-3, True), Stop.CONVERGED),
        ((0.25, 0.5, True, 0.9, 3, 10, 0.25, False), Stop.CONVERGED),  # res == tol
        ((1e-3, 0.5, True, 0.9, 3, 10, 1e-3, False), Stop.RUNNING),  # fp32 1e-3 > fp64 1e-3
        ((1e-4, 0.5, True, 0.9, 3, 10, 1e-3, True), Stop.RUNNING),  # rel mode reads rel
        ((0.5, 0.1, True, 0.9, 10, 10, 1e-3, False), Stop.MAX_ITERS),
        ((1e-4, 0.1, True, 0.9, 10, 10, 1e-3, False), Stop.CONVERGED),  # converged beats max_iters
        ((nan, nan, True, 0.9, 1, 10, 1e-3, False), Stop.DIVERGED),
        ((inf, 0.5, True, 0.9, 3, 10, 1e-3, False), Stop.DIVERGED),
        ((1e-4, 0.5, False, 0.9, 3, 10, 1e-3, False), Stop.DIVERGED),  # non-finite y beats converged
        ((2e6, 0.9, True, 0.5, 3, 10, 1e-3, False), Stop.DIVERGED),  # growth past 1e6 × max(first, 1)
        ((2e6, 0.9, True, 3.0, 3, 10, 1e-3, False), Stop.RUNNING),  # ... but not past 1e6 × 3
        ((0.5, 0.9, True, nan, 3, 100, 1e-3, False), Stop.DIVERGED),  # a NaN first residual never passes
    ]
    cols = list(zip(*(r for r, _ in rows), strict=True))
    dtypes = (torch.float32, torch.float32, torch.bool, torch.float64, torch.long, torch.long, torch.float64)
    args = [torch.tensor(c, dtype=d, device=device) for c, d in zip(cols, (*dtypes, torch.bool), strict=True)]
    out = torch.empty(len(rows), dtype=torch.long, device=device)
    _decide_kernel[(1,)](*args, out, len(rows), BLOCK=16)
    abs_res, rel_res, finite, first, iters, max_iters, tol, rel_mode = args
    y_next = torch.where(finite, 0.0, nan).unsqueeze(1)
    want = reference.decide(abs_res, rel_res, y_next, first, iters, max_iters, tol, rel_mode)
    assert want.tolist() == [code for _, code in rows]
    assert out.tolist() == want.tolist()
