"""The persistent dense solve: one launch runs a whole batch's solve for small states.

Each program owns BLOCK_B rows, keeps W and its rows on chip, and iterates the fused step until
every one of its rows has its stop code (own tolerance, stop mode and budget), then leaves. The
per-row decision is the reference's, so iteration counts are the reference's.
In fp32 its dot is the IEEE one on the FMA units: one small dot per iteration, latency-bound, where
the TF32×3 split would only add work and registers (it spills at n = 16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eqserve.kernels.configs import Shipped, ptr
from eqserve.kernels.reference import SolveOut
from eqserve.kernels.triton_math import MAX_ITERS, RUNNING, decide, dot, lerp, residuals, square_sums, tanh

MAX_N = {torch.bfloat16: 128, torch.float32: 64}
"""Largest state served per dot dtype (bf16 where state and weights are bf16, else fp32): W (n×n)
stays on chip, in registers, without spilling."""

BLOCK_B = 16
"""Rows per program (the smallest tile tl.dot takes)."""


@triton.jit
def persistent_kernel(
    y_ptr,
    w_ptr,
    inj_ptr,
    beta_ptr,
    tol_ptr,
    rel_mode_ptr,
    max_iters_ptr,
    iters_ptr,
    code_ptr,
    abs_ptr,
    rel_ptr,
    num_rows,
    n,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BF16_DOT: tl.constexpr,
):
    """Solve rows pid·BLOCK_B:… from y (overwritten with the final state) to their stop codes."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < num_rows
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < n
    tile = rmask[:, None] & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * n + cols[None, :]
    wt = tl.load(w_ptr + cols[None, :] * n + cols[:, None], mask=cmask[:, None] & cmask[None, :], other=0.0)
    y = tl.load(y_ptr + offs, mask=tile, other=0.0).to(tl.float32)
    inj = tl.load(inj_ptr + offs, mask=tile, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[:, None]
    tol = tl.load(tol_ptr + rows, mask=rmask, other=0.0)
    rel_mode = tl.load(rel_mode_ptr + rows, mask=rmask, other=0) != 0
    max_iters = tl.load(max_iters_ptr + rows, mask=rmask, other=0)
    iters = tl.zeros((BLOCK_B,), dtype=tl.int64)
    first = tl.zeros((BLOCK_B,), dtype=tl.float64)
    abs_res = tl.full((BLOCK_B,), float("nan"), dtype=tl.float32)
    rel_res = tl.full((BLOCK_B,), float("nan"), dtype=tl.float32)
    code = tl.where(max_iters > 0, RUNNING, MAX_ITERS)
    while tl.max((code == RUNNING).to(tl.int32), axis=0) > 0:
        running = code == RUNNING
        g = tanh(dot(y, wt, tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32), BF16_DOT, True) + inj)
        y_next = lerp(y, g, beta).to(y_ptr.dtype.element_ty).to(tl.float32)
        sq_d, sq_g, bad = square_sums(g - y, g, y_next, tile)
        a, r = residuals(sq_d, sq_g)
        it = iters + 1
        f = tl.where(it == 1, a.to(tl.float64), first)
        c = decide(a, r, bad == 0, f, it, max_iters, tol, rel_mode)
        y = tl.where(running[:, None], y_next, y)
        iters = tl.where(running, it, iters)
        first = tl.where(running, f, first)
        abs_res = tl.where(running, a, abs_res)
        rel_res = tl.where(running, r, rel_res)
        code = tl.where(running, c, code)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=tile)
    tl.store(iters_ptr + rows, iters, mask=rmask)
    tl.store(code_ptr + rows, code.to(tl.int64), mask=rmask)
    tl.store(abs_ptr + rows, abs_res, mask=rmask)
    tl.store(rel_ptr + rows, rel_res, mask=rmask)


def dot_dtype(w_dtype: torch.dtype, y_dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels multiply in: bf16 where state and weights are bf16, else fp32."""
    return torch.bfloat16 if w_dtype == y_dtype == torch.bfloat16 else torch.float32


def fits(n: int, w_dtype: torch.dtype, y_dtype: torch.dtype) -> bool:
    """Whether the persistent solve serves states of size n with these weight and state dtypes."""
    return n <= MAX_N[dot_dtype(w_dtype, y_dtype)]


def num_warps(n: int) -> int:
    """Warps per program: more threads to hold a larger W."""
    return 8 if n > 64 else 4


def solve(
    y0: torch.Tensor,
    w: torch.Tensor,
    inj: torch.Tensor,
    beta: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
    max_iters: torch.Tensor,
) -> SolveOut:
    """reference.dense_solve in one launch; ValueError where the state is too large (see `fits`)."""
    b, n = y0.shape
    if not fits(n, w.dtype, y0.dtype):
        top = MAX_N[dot_dtype(w.dtype, y0.dtype)]
        raise ValueError(
            f"the persistent solve takes n ≤ {top} for {w.dtype} weights and {y0.dtype} states, got {n}"
        )
    dev = y0.device
    y = y0.contiguous().clone()
    out = SolveOut(
        y,
        torch.empty(b, dtype=torch.long, device=dev),
        torch.empty(b, device=dev),
        torch.empty(b, device=dev),
        torch.empty(b, dtype=torch.long, device=dev),
    )
    persistent_kernel[(triton.cdiv(b, BLOCK_B),)](
        y,
        w.contiguous(),
        inj.contiguous(),
        beta.reshape(b).contiguous(),
        tol.contiguous(),
        rel_mode.contiguous(),
        max_iters.contiguous(),
        out.iters,
        out.code,
        out.abs_res,
        out.rel_res,
        b,
        n,
        BLOCK_B=BLOCK_B,
        BLOCK_N=max(16, triton.next_power_of_2(n)),
        BF16_DOT=dot_dtype(w.dtype, y.dtype) == torch.bfloat16,
        num_warps=num_warps(n),
    )
    return out


def shipped() -> list[Shipped]:
    """Every block width the persistent solve launches, for fp32 and for bf16 state and weights."""
    out = []
    for dtype, top in MAX_N.items():
        sig = {
            "y_ptr": ptr(dtype),
            "w_ptr": ptr(dtype),
            "inj_ptr": ptr(dtype),
            "beta_ptr": ptr(dtype),
            "tol_ptr": ptr(torch.float64),
            "rel_mode_ptr": ptr(torch.bool),
            "max_iters_ptr": ptr(torch.int64),
            "iters_ptr": ptr(torch.int64),
            "code_ptr": ptr(torch.int64),
            "abs_ptr": ptr(torch.float32),
            "rel_ptr": ptr(torch.float32),
            "num_rows": "i32",
            "n": "i32",
            "BLOCK_B": "constexpr",
            "BLOCK_N": "constexpr",
            "BF16_DOT": "constexpr",
        }
        block_n = 16
        while block_n <= top:
            constexprs = {"BLOCK_B": BLOCK_B, "BLOCK_N": block_n, "BF16_DOT": dtype == torch.bfloat16}
            name = f"persistent[{ptr(dtype)[1:]},b{BLOCK_B}n{block_n}w{num_warps(block_n)}]"
            out.append(Shipped(name, persistent_kernel, sig, constexprs, num_warps(block_n), 1))
            block_n *= 2
    return out
