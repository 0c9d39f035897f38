"""Anderson acceleration's two bandwidth-bound parts, fused: the Gram-row update and the mixing.

The solver keeps the Gram matrix of its residual history r_i = F_i − X_i. Each step replaces one
history slot, so only that slot's row and column change: `gram_row` writes (y, G(y)) into the slot
and takes M dot products with the new residual, one pass over the history instead of a full bmm.
After the small bordered solve (`reference.anderson_solve`), `mix` forms the new iterate
(1−β)Σα_i X_i + βΣα_i F_i, or the damped Picard step where the weights are not usable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.configs import Shipped, ptr
from kernels.triton_math import lerp

BLOCK_N = 128
"""State entries per program step."""

BLOCK_MS = (8, 16)
"""History tiles shipped: the history length M is padded to the next of these."""


@triton.jit
def gram_row_kernel(
    y_ptr, gy_ptr, x_ptr, f_ptr, gram_ptr, slot_ptr, n, hist, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    """Row pid: X[slot] = y, F[slot] = G(y); gram[slot, j] = gram[j, slot] = r_slot · r_j for j < M."""
    b = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + b)
    ms = tl.arange(0, BLOCK_M)
    old = (ms < hist) & (ms != slot)
    dots = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for c0 in range(0, n, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < n
        y = tl.load(y_ptr + b * n + cols, mask=cmask, other=0.0)
        gy = tl.load(gy_ptr + b * n + cols, mask=cmask, other=0.0)
        tl.store(x_ptr + (b * hist + slot) * n + cols, y, mask=cmask)
        tl.store(f_ptr + (b * hist + slot) * n + cols, gy, mask=cmask)
        r_new = (gy - y).to(tl.float32)
        hoffs = (b * hist + ms[:, None]) * n + cols[None, :]
        hmask = old[:, None] & cmask[None, :]
        xs = tl.load(x_ptr + hoffs, mask=hmask, other=0.0)
        fs = tl.load(f_ptr + hoffs, mask=hmask, other=0.0)
        r = tl.where((ms == slot)[:, None], r_new[None, :], (fs - xs).to(tl.float32))
        dots += tl.sum(r * r_new[None, :], axis=1)
    gmask = ms < hist
    tl.store(gram_ptr + (b * hist + slot) * hist + ms, dots, mask=gmask)
    tl.store(gram_ptr + (b * hist + ms) * hist + slot, dots, mask=gmask)


@triton.jit
def mix_kernel(
    y_ptr,
    gy_ptr,
    x_ptr,
    f_ptr,
    alpha_ptr,
    ok_ptr,
    beta_ptr,
    out_ptr,
    n,
    hist,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Row pid_0, columns pid_1·BLOCK_N:…: lerp(Σα X, Σα F, β) where ok, else lerp(y, G(y), β)."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < n
    ms = tl.arange(0, BLOCK_M)
    beta = tl.load(beta_ptr + b).to(tl.float32)
    y = tl.load(y_ptr + b * n + cols, mask=cmask, other=0.0).to(tl.float32)
    gy = tl.load(gy_ptr + b * n + cols, mask=cmask, other=0.0).to(tl.float32)
    alpha = tl.load(alpha_ptr + b * hist + ms, mask=ms < hist, other=0.0)
    alpha = alpha.to(x_ptr.dtype.element_ty).to(tl.float32)
    hoffs = (b * hist + ms[:, None]) * n + cols[None, :]
    hmask = (ms < hist)[:, None] & cmask[None, :]
    mixed_x = tl.sum(alpha[:, None] * tl.load(x_ptr + hoffs, mask=hmask, other=0.0).to(tl.float32), axis=0)
    mixed_f = tl.sum(alpha[:, None] * tl.load(f_ptr + hoffs, mask=hmask, other=0.0).to(tl.float32), axis=0)
    ok = tl.load(ok_ptr + b) != 0
    out = tl.where(ok, lerp(mixed_x, mixed_f, beta), lerp(y, gy, beta))
    tl.store(out_ptr + b * n + cols, out.to(out_ptr.dtype.element_ty), mask=cmask)


def block_m(hist: int) -> int:
    """The shipped history tile for M slots; ValueError past the largest."""
    for m in BLOCK_MS:
        if hist <= m:
            return m
    raise ValueError(f"Anderson kernels take a history of at most {BLOCK_MS[-1]}, got {hist}")


def gram_row(
    y: torch.Tensor,
    gy: torch.Tensor,
    hist_x: torch.Tensor,
    hist_f: torch.Tensor,
    gram: torch.Tensor,
    slot: torch.Tensor,
    *,
    block_n: int = BLOCK_N,
) -> None:
    """reference.anderson_gram_row in one launch; history (B, M, n) and gram (B, M, M) fp32, contiguous."""
    if not (hist_x.is_contiguous() and hist_f.is_contiguous() and gram.is_contiguous()):
        raise ValueError(
            "the Anderson history and Gram matrix must be contiguous (they are updated in place)"
        )
    b, hist, n = hist_x.shape
    gram_row_kernel[(b,)](
        y.contiguous(),
        gy.contiguous(),
        hist_x,
        hist_f,
        gram,
        slot,
        n,
        hist,
        BLOCK_M=block_m(hist),
        BLOCK_N=block_n,
    )


def mix(
    y: torch.Tensor,
    gy: torch.Tensor,
    hist_x: torch.Tensor,
    hist_f: torch.Tensor,
    alpha: torch.Tensor,
    ok: torch.Tensor,
    beta: torch.Tensor,
    *,
    block_n: int = BLOCK_N,
) -> torch.Tensor:
    """reference.anderson_mix in one launch."""
    b, hist, n = hist_x.shape
    out = torch.empty_like(y, memory_format=torch.contiguous_format)
    mix_kernel[(b, triton.cdiv(n, block_n))](
        y.contiguous(),
        gy.contiguous(),
        hist_x,
        hist_f,
        alpha.float().contiguous(),
        ok,
        beta.reshape(b).contiguous(),
        out,
        n,
        hist,
        BLOCK_M=block_m(hist),
        BLOCK_N=block_n,
    )
    return out


def shipped() -> list[Shipped]:
    """Both kernels at every history tile, for fp32 and bf16 state."""
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        t = ptr(dtype)
        grams = {"y_ptr": t, "gy_ptr": t, "x_ptr": t, "f_ptr": t, "gram_ptr": ptr(torch.float32)}
        grams |= {"slot_ptr": ptr(torch.int64), "n": "i32", "hist": "i32"}
        mixes = {"y_ptr": t, "gy_ptr": t, "x_ptr": t, "f_ptr": t, "alpha_ptr": ptr(torch.float32)}
        mixes |= {"ok_ptr": ptr(torch.bool), "beta_ptr": t, "out_ptr": t, "n": "i32", "hist": "i32"}
        for m in BLOCK_MS:
            constexprs = {"BLOCK_M": m, "BLOCK_N": BLOCK_N}
            sig = dict.fromkeys(constexprs, "constexpr")
            out.append(
                Shipped(f"gram_row[{t[1:]},m{m}n{BLOCK_N}]", gram_row_kernel, grams | sig, constexprs, 4, 1)
            )
            out.append(Shipped(f"mix[{t[1:]},m{m}n{BLOCK_N}]", mix_kernel, mixes | sig, constexprs, 4, 1))
    return out
