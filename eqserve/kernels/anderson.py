"""Anderson acceleration's two bandwidth-bound parts, fused: recording the newest point and mixing.

The history is in difference form (`eqserve.solvers.anderson`): per row, M slots of two halves of
n entries, the newest point (x, r = G(x) − x) in slot `point` and consecutive differences (Δx, Δr)
in the others, with the fp64 Gram matrix of the second halves. `record` turns the previous point's
slot into the difference to the new point, writes the new point, and takes the 2M dot products of
the two changed slots in one pass over the second halves; after the small solve, `mix` forms
(1−β)y + βG(y) − Σ_j (wx_j x_j + wf_j r_j) in one pass over both halves (Anderson's wx = γ,
wf = βγ; Broyden's wx = βvᵀg, wf = 0). Both are `eqserve.solvers.anderson.record` and `mix`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eqserve.kernels.configs import Shipped, ptr
from eqserve.kernels.triton_math import lerp

BLOCK_N = 128
"""State entries per program step of the mix."""

RECORD_BLOCK_N = 64
"""State entries per program step of the record, which keeps two rows of dot products live."""

BLOCK_MS = (8, 16, 32)
"""History tiles shipped: the history slots M are padded to the next of these (the server's cap on m
plus the newest point's slot needs 32)."""


@triton.jit
def record_kernel(
    y_ptr,
    gy_ptr,
    hist_ptr,
    gram_ptr,
    prev_ptr,
    point_ptr,
    n,
    slots,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Row pid: slot prev ← (y, r) − slot prev where prev ≠ point, slot point ← (y, r), r = G(y) − y;
    the Gram rows and columns of both slots from one pass over the second halves."""
    b = tl.program_id(0).to(tl.int64)
    p = tl.load(prev_ptr + b)
    q = tl.load(point_ptr + b)
    ms = tl.arange(0, BLOCK_M)
    used = ms < slots
    moved_m = (ms * 0 + p) != q  # p ≠ q as blocks: the previous point becomes a difference
    moved_n = (tl.arange(0, BLOCK_N) * 0 + p) != q
    row = hist_ptr + b * slots * 2 * n
    dp = tl.zeros((BLOCK_M,), dtype=tl.float32)
    dq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for c0 in range(0, n, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < n
        y = tl.load(y_ptr + b * n + cols, mask=cmask, other=0.0)
        gy = tl.load(gy_ptr + b * n + cols, mask=cmask, other=0.0)
        r = (gy.to(tl.float32) - y.to(tl.float32)).to(y.dtype)  # rounded to the state's dtype, as torch's
        xp = tl.load(row + p * 2 * n + cols, mask=cmask & moved_n, other=0.0)
        rp = tl.load(row + p * 2 * n + n + cols, mask=cmask & moved_n, other=0.0)
        dx = (y.to(tl.float32) - xp.to(tl.float32)).to(y.dtype)
        dr = (r.to(tl.float32) - rp.to(tl.float32)).to(y.dtype)
        tl.store(row + p * 2 * n + cols, dx, mask=cmask & moved_n)
        tl.store(row + p * 2 * n + n + cols, dr, mask=cmask & moved_n)
        tl.store(row + q * 2 * n + cols, y, mask=cmask)
        tl.store(row + q * 2 * n + n + cols, r, mask=cmask)
        r32, dr32 = r.to(tl.float32), dr.to(tl.float32)
        others = (used & (ms != p) & (ms != q))[:, None] & cmask[None, :]
        rs = tl.load(row + ms[:, None] * 2 * n + n + cols[None, :], mask=others, other=0.0).to(tl.float32)
        rs = tl.where((ms == q)[:, None], r32[None, :], rs)
        rs = tl.where(((ms == p) & moved_m)[:, None], dr32[None, :], rs)
        dp += tl.sum(rs * dr32[None, :], axis=1)
        dq += tl.sum(rs * r32[None, :], axis=1)
    gp, gq = dp.to(tl.float64), dq.to(tl.float64)
    tl.store(gram_ptr + (b * slots + p) * slots + ms, gp, mask=used & moved_m)
    tl.store(gram_ptr + (b * slots + ms) * slots + p, gp, mask=used & moved_m)
    tl.store(gram_ptr + (b * slots + q) * slots + ms, gq, mask=used)
    tl.store(gram_ptr + (b * slots + ms) * slots + q, gq, mask=used)


@triton.jit
def mix_kernel(
    y_ptr,
    gy_ptr,
    hist_ptr,
    wx_ptr,
    wf_ptr,
    beta_ptr,
    out_ptr,
    n,
    slots,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Row pid_0, columns pid_1·BLOCK_N…: (1−β)y + βG(y) − Σ_j (wx_j x_j + wf_j r_j)."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < n
    ms = tl.arange(0, BLOCK_M)
    used = ms < slots
    beta = tl.load(beta_ptr + b).to(tl.float32)
    y_st = tl.load(y_ptr + b * n + cols, mask=cmask, other=0.0)
    y = y_st.to(tl.float32)
    gy = tl.load(gy_ptr + b * n + cols, mask=cmask, other=0.0).to(tl.float32)
    # weights rounded to the state's dtype, as torch's; a zero weight's slot is not read
    wx = tl.load(wx_ptr + b * slots + ms, mask=used, other=0.0).to(y_st.dtype).to(tl.float32)
    wf = tl.load(wf_ptr + b * slots + ms, mask=used, other=0.0).to(y_st.dtype).to(tl.float32)
    offs = (b * slots + ms[:, None]) * 2 * n + cols[None, :]
    xs = tl.load(hist_ptr + offs, mask=(wx != 0.0)[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    rs = tl.load(hist_ptr + offs + n, mask=(wf != 0.0)[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    out = lerp(y, gy, beta) - tl.sum(wx[:, None] * xs + wf[:, None] * rs, axis=0)
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
    prev: torch.Tensor,
    point: torch.Tensor,
    *,
    block_n: int = RECORD_BLOCK_N,
) -> None:
    """solvers.anderson.record in one launch; hist (B, M, 2n) and gram (B, M, M) fp64 contiguous."""
    if not (hist.is_contiguous() and gram.is_contiguous()) or gram.dtype != torch.float64:
        raise ValueError("the Anderson history and fp64 Gram matrix must be contiguous (updated in place)")
    b, slots, two_n = hist.shape
    record_kernel[(b,)](
        y.contiguous(),
        gy.contiguous(),
        hist,
        gram,
        prev.contiguous(),
        point.contiguous(),
        two_n // 2,
        slots,
        BLOCK_M=block_m(slots),
        BLOCK_N=block_n,
    )


def mix(
    y: torch.Tensor,
    gy: torch.Tensor,
    hist: torch.Tensor,
    wx: torch.Tensor,
    wf: torch.Tensor,
    beta: torch.Tensor,
    *,
    block_n: int = BLOCK_N,
) -> torch.Tensor:
    """solvers.anderson.mix in one launch."""
    b, slots, two_n = hist.shape
    n = two_n // 2
    out = torch.empty_like(y, memory_format=torch.contiguous_format)
    mix_kernel[(b, triton.cdiv(n, block_n))](
        y.contiguous(),
        gy.contiguous(),
        hist.contiguous(),
        wx.float().contiguous(),
        wf.float().contiguous(),
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
        records |= {"prev_ptr": ptr(torch.int64), "point_ptr": ptr(torch.int64), "n": "i32", "slots": "i32"}
        w = ptr(torch.float32)
        mixes = {"y_ptr": t, "gy_ptr": t, "hist_ptr": t, "wx_ptr": w, "wf_ptr": w, "beta_ptr": t}
        mixes |= {"out_ptr": t, "n": "i32", "slots": "i32"}
        for m in BLOCK_MS:
            both = (("record", record_kernel, records, RECORD_BLOCK_N), ("mix", mix_kernel, mixes, BLOCK_N))
            for name, kernel, args, n in both:
                constexprs = {"BLOCK_M": m, "BLOCK_N": n}
                sig = dict.fromkeys(constexprs, "constexpr")
                out.append(Shipped(f"{name}[{t[1:]},m{m}n{n}]", kernel, args | sig, constexprs, 4, 1))
    return out
