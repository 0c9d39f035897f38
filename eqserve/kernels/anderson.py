"""Anderson acceleration's two bandwidth-bound parts, fused: recording the newest iterate and mixing.

A row's history (B, M, 2n) holds its last iterates X_i and residuals R_i = G(X_i) − X_i side by
side, and the solver keeps the Gram matrix RRᵀ (fp64). Each step replaces one slot, so only that
slot's row and column change: `record` writes (y, G(y) − y) into the slot and takes M dot products
with the new residual, one pass over the history instead of a full bmm. After the small bordered
solve (`reference.anderson_solve`), `mix` forms y + βr + Σα_i((X_i − y) + β(R_i − r)) in one pass.
Both are `reference.anderson_record` and `reference.anderson_mix`, which `SolverState.update` runs
on the torch backend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eqserve.kernels.configs import Shipped, ptr
from eqserve.kernels.triton_math import lerp

BLOCK_N = 128
"""State entries per program step."""

BLOCK_MS = (8, 16)
"""History tiles shipped: the history length M is padded to the next of these (16 = the server's cap on m)."""


@triton.jit
def record_kernel(
    y_ptr, gy_ptr, hist_ptr, gram_ptr, slot_ptr, n, slots, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    """Row pid: X[slot] = y, R[slot] = G(y) − y; gram[slot, j] = gram[j, slot] = R_slot · R_j, j < M."""
    b = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + b)
    ms = tl.arange(0, BLOCK_M)
    used = ms < slots
    row = hist_ptr + b * slots * 2 * n
    dots = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for c0 in range(0, n, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < n
        y = tl.load(y_ptr + b * n + cols, mask=cmask, other=0.0)
        gy = tl.load(gy_ptr + b * n + cols, mask=cmask, other=0.0)
        r = (gy.to(tl.float32) - y.to(tl.float32)).to(y.dtype)  # rounded to the state's dtype, as torch's
        tl.store(row + slot * 2 * n + cols, y, mask=cmask)
        tl.store(row + slot * 2 * n + n + cols, r, mask=cmask)
        r32 = r.to(tl.float32)
        others = (used & (ms != slot))[:, None] & cmask[None, :]
        rs = tl.load(row + ms[:, None] * 2 * n + n + cols[None, :], mask=others, other=0.0)
        rs = tl.where((ms == slot)[:, None], r32[None, :], rs.to(tl.float32))
        dots += tl.sum(rs * r32[None, :], axis=1)
    g = dots.to(tl.float64)
    tl.store(gram_ptr + (b * slots + slot) * slots + ms, g, mask=used)
    tl.store(gram_ptr + (b * slots + ms) * slots + slot, g, mask=used)


@triton.jit
def mix_kernel(
    y_ptr,
    gy_ptr,
    hist_ptr,
    alpha_ptr,
    beta_ptr,
    out_ptr,
    n,
    slots,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Row pid_0, columns pid_1·BLOCK_N…: y + βr + Σα_i((X_i − y) + β(R_i − r)), r = G(y) − y."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < n
    ms = tl.arange(0, BLOCK_M)
    used = ms < slots
    beta = tl.load(beta_ptr + b).to(tl.float32)
    y_st = tl.load(y_ptr + b * n + cols, mask=cmask, other=0.0)
    y = y_st.to(tl.float32)
    gy = tl.load(gy_ptr + b * n + cols, mask=cmask, other=0.0).to(tl.float32)
    r = (gy - y).to(y_st.dtype).to(tl.float32)
    alpha = tl.load(alpha_ptr + b * slots + ms, mask=used, other=0.0).to(y_st.dtype).to(tl.float32)
    offs = (b * slots + ms[:, None]) * 2 * n + cols[None, :]
    hmask = used[:, None] & cmask[None, :]
    xs = tl.load(hist_ptr + offs, mask=hmask, other=0.0).to(tl.float32)
    rs = tl.load(hist_ptr + offs + n, mask=hmask, other=0.0).to(tl.float32)
    terms = tl.where(hmask, (xs - y[None, :]) + beta * (rs - r[None, :]), 0.0)
    out = lerp(y, gy, beta) + tl.sum(alpha[:, None] * terms, axis=0)
    tl.store(out_ptr + b * n + cols, out.to(out_ptr.dtype.element_ty), mask=cmask)


def block_m(hist: int) -> int:
    """The shipped history tile for M slots; ValueError past the largest."""
    for m in BLOCK_MS:
        if hist <= m:
            return m
    raise ValueError(f"Anderson kernels take a history of at most {BLOCK_MS[-1]}, got {hist}")


def record(
    y: torch.Tensor,
    gy: torch.Tensor,
    hist: torch.Tensor,
    gram: torch.Tensor,
    slot: torch.Tensor,
    *,
    block_n: int = BLOCK_N,
) -> None:
    """reference.anderson_record in one launch; hist (B, M, 2n) and gram (B, M, M) fp64 contiguous."""
    if not (hist.is_contiguous() and gram.is_contiguous()) or gram.dtype != torch.float64:
        raise ValueError("the Anderson history and fp64 Gram matrix must be contiguous (updated in place)")
    b, slots, two_n = hist.shape
    record_kernel[(b,)](
        y.contiguous(),
        gy.contiguous(),
        hist,
        gram,
        slot.contiguous(),
        two_n // 2,
        slots,
        BLOCK_M=block_m(slots),
        BLOCK_N=block_n,
    )


def mix(
    y: torch.Tensor,
    gy: torch.Tensor,
    hist: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    *,
    block_n: int = BLOCK_N,
) -> torch.Tensor:
    """reference.anderson_mix in one launch."""
    b, slots, two_n = hist.shape
    n = two_n // 2
    out = torch.empty_like(y, memory_format=torch.contiguous_format)
    mix_kernel[(b, triton.cdiv(n, block_n))](
        y.contiguous(),
        gy.contiguous(),
        hist.contiguous(),
        alpha.float().contiguous(),
        beta.reshape(b).contiguous(),
        out,
        n,
        slots,
        BLOCK_M=block_m(slots),
        BLOCK_N=block_n,
    )
    return out


def shipped() -> list[Shipped]:
    """Both kernels at every history tile, for fp32 and bf16 state."""
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        t = ptr(dtype)
        records = {"y_ptr": t, "gy_ptr": t, "hist_ptr": t, "gram_ptr": ptr(torch.float64)}
        records |= {"slot_ptr": ptr(torch.int64), "n": "i32", "slots": "i32"}
        mixes = {"y_ptr": t, "gy_ptr": t, "hist_ptr": t, "alpha_ptr": ptr(torch.float32), "beta_ptr": t}
        mixes |= {"out_ptr": t, "n": "i32", "slots": "i32"}
        for m in BLOCK_MS:
            constexprs = {"BLOCK_M": m, "BLOCK_N": BLOCK_N}
            sig = dict.fromkeys(constexprs, "constexpr")
            out.append(
                Shipped(f"record[{t[1:]},m{m}n{BLOCK_N}]", record_kernel, records | sig, constexprs, 4, 1)
            )
            out.append(Shipped(f"mix[{t[1:]},m{m}n{BLOCK_N}]", mix_kernel, mixes | sig, constexprs, 4, 1))
    return out
