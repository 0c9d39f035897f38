"""The solver epilogue of any model, fused: after the model's G-step, one launch per step does the rest.

Given y and G(y) of a batch, each program takes a block of rows and streams their columns once: the
damped Picard update and its store, the square sums of G(y) − y and G(y), then the rows' residual
norms, iteration count, first residual and stop decision (`reference.solver_epilogue`). Rows that
are not `active` (stopped earlier in a multi-step run, or empty slots) are frozen: nothing of theirs
changes. The per-row tensors are updated in place and `active` drops the rows that stop, so a run of
K steps launches the same arguments K times with no read back in between (and can be captured in
a CUDA graph); the model needs no kernel of its own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eqserve.kernels.configs import Shipped, ptr
from eqserve.kernels.reference import StepOut
from eqserve.kernels.triton_math import EPS, RUNNING, count_and_decide, lerp, residuals, square_sums

TILE = 1024
"""Elements per program per pass over the columns: BLOCK_B rows × TILE // BLOCK_B columns."""

BLOCK_BS = (1, 4, 16)
"""Rows per program shipped: one row each while the batch gives enough programs, more past that."""

MAX_PROGRAMS = 1024
"""Row blocks per launch before the launcher packs more rows into a program."""


@triton.jit
def epilogue_kernel(
    y_ptr,
    gy_ptr,
    mask_ptr,
    y_out_ptr,
    beta_ptr,
    tol_ptr,
    rel_mode_ptr,
    max_iters_ptr,
    active_ptr,
    iters_ptr,
    first_ptr,
    code_ptr,
    abs_ptr,
    rel_ptr,
    b,
    n,
    copy_frozen,
    HAS_MASK: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Rows pid·BLOCK_B…: y_out = lerp(y, G(y), β) over all n columns (G(y) zero where the pad mask is
    False), then each active row's residuals, counters and decision, in ACC (fp32, or fp64 for fp64
    states, as the reference). Frozen rows are copied to y_out when `copy_frozen` (y_out is another
    buffer) and otherwise not touched."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    valid = rows < b
    active = valid & (tl.load(active_ptr + rows, mask=valid, other=0) != 0)
    moved = active | (valid & (tl.zeros((BLOCK_B,), tl.int32) + copy_frozen != 0))
    if tl.sum(moved.to(tl.int32), axis=0) > 0:
        base = rows.to(tl.int64) * n
        beta = tl.load(beta_ptr + rows, mask=active, other=0.0).to(ACC)
        sq_d = tl.zeros((BLOCK_B,), dtype=ACC)
        sq_g = tl.zeros((BLOCK_B,), dtype=ACC)
        bad = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for c0 in range(0, n, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            cmask = cols < n
            offs = base[:, None] + cols[None, :]
            tile = active[:, None] & cmask[None, :]
            y_st = tl.load(y_ptr + offs, mask=moved[:, None] & cmask[None, :], other=0.0)
            y = y_st.to(ACC)
            own = tile
            if HAS_MASK:
                own = tile & (tl.load(mask_ptr + offs, mask=tile, other=0) != 0)
            g = tl.load(gy_ptr + offs, mask=own, other=0.0).to(ACC)
            y_next = lerp(y, g, beta[:, None]).to(y_out_ptr.dtype.element_ty)
            tl.store(y_out_ptr + offs, tl.where(tile, y_next, y_st), mask=moved[:, None] & cmask[None, :])
            d, s, f = square_sums(g - y, g, y_next.to(ACC), tile)
            sq_d += d
            sq_g += s
            bad += f
        if tl.float64 == ACC:  # fp64 sqrt and division round to nearest; fp32 needs the _rn forms
            abs_res = tl.sqrt(sq_d)
            rel_res = abs_res / (tl.sqrt(sq_g) + EPS)
        else:
            abs_res, rel_res = residuals(sq_d, sq_g)
        iters, first, code = count_and_decide(
            abs_res, rel_res, bad == 0, rows, active, iters_ptr, first_ptr, max_iters_ptr, tol_ptr,
            rel_mode_ptr,
        )
        tl.store(iters_ptr + rows, iters, mask=active)
        tl.store(first_ptr + rows, first, mask=active)
        tl.store(code_ptr + rows, code.to(tl.int64), mask=active)
        tl.store(abs_ptr + rows, abs_res, mask=active)
        tl.store(rel_ptr + rows, rel_res, mask=active)
        tl.store(active_ptr + rows, code == RUNNING, mask=active)


def block_rows(b: int) -> int:
    """Rows per program for a batch of b rows: the fewest shipped that keep within MAX_PROGRAMS."""
    return next((r for r in BLOCK_BS if triton.cdiv(b, r) <= MAX_PROGRAMS), BLOCK_BS[-1])


def launch(
    y: torch.Tensor,
    gy: torch.Tensor,
    mask: torch.Tensor | None,
    beta: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
    max_iters: torch.Tensor,
    active: torch.Tensor,
    iters: torch.Tensor,
    first_res: torch.Tensor,
    code: torch.Tensor,
    abs_res: torch.Tensor,
    rel_res: torch.Tensor,
    y_out: torch.Tensor,
    *,
    block_b: int | None = None,
) -> None:
    """One epilogue step in place: `y_out` (B, n) gets the new state (it may be `y` itself: then frozen
    rows are not touched); for active rows `iters`, `first_res`, `code`, `abs_res`, `rel_res` take
    the step's values and `active` becomes False where the row stopped. All tensors contiguous:
    y, gy, y_out (B, n) of y's dtype (fp32, bf16 or fp64; gy may differ), mask (B, n) bool or None,
    beta (B,) or (B, 1), tol and first_res fp64 (B,), rel_mode and active bool (B,), iters,
    max_iters and code int64 (B,), abs_res and rel_res fp32 (fp64 for fp64 states) (B,)."""
    b, n = y.shape
    updated = (y_out, active, iters, first_res, code, abs_res, rel_res)
    if not all(t.is_contiguous() for t in (y, gy, beta, tol, rel_mode, max_iters, *updated)):
        raise ValueError("the epilogue's tensors must be contiguous (several are updated in place)")
    if mask is not None and (mask.shape != y.shape or not mask.is_contiguous()):
        raise ValueError(f"the pad mask must be a contiguous {tuple(y.shape)} bool tensor")
    rows = block_b or block_rows(b)
    epilogue_kernel[(triton.cdiv(b, rows),)](
        y,
        gy,
        active if mask is None else mask,
        y_out,
        beta,
        tol,
        rel_mode,
        max_iters,
        active,
        iters,
        first_res,
        code,
        abs_res,
        rel_res,
        b,
        n,
        int(y_out.data_ptr() != y.data_ptr()),
        HAS_MASK=mask is not None,
        ACC=tl.float64 if y.dtype == torch.float64 else tl.float32,
        BLOCK_B=rows,
        BLOCK_N=TILE // rows,
    )


def step(
    y: torch.Tensor,
    gy: torch.Tensor,
    mask: torch.Tensor | None,
    beta: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
    iters: torch.Tensor,
    max_iters: torch.Tensor,
    first_res: torch.Tensor,
    code: torch.Tensor,
    abs_res: torch.Tensor,
    rel_res: torch.Tensor,
    active: torch.Tensor,
    *,
    block_b: int | None = None,
) -> StepOut:
    """reference.solver_epilogue in one launch: its inputs untouched, its outputs new tensors."""

    def fresh(t: torch.Tensor) -> torch.Tensor:
        return t.clone(memory_format=torch.contiguous_format)

    out = StepOut(
        torch.empty_like(y, memory_format=torch.contiguous_format),
        fresh(abs_res),
        fresh(rel_res),
        fresh(code),
        fresh(iters),
        fresh(first_res),
    )
    launch(
        y.contiguous(),
        gy.contiguous(),
        None if mask is None else mask.contiguous(),
        beta.contiguous(),
        tol.contiguous(),
        rel_mode.contiguous(),
        max_iters.contiguous(),
        fresh(active),
        out.iters,
        out.first_res,
        out.code,
        out.abs_res,
        out.rel_res,
        out.y,
        block_b=block_b,
    )
    return out


def shipped() -> list[Shipped]:
    """Every row block, with and without a pad mask, for fp32 and bf16 state."""
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        t = ptr(dtype)
        sig = {"y_ptr": t, "gy_ptr": t, "mask_ptr": ptr(torch.bool), "y_out_ptr": t, "beta_ptr": t}
        sig |= {"tol_ptr": ptr(torch.float64), "rel_mode_ptr": ptr(torch.bool)}
        sig |= {"max_iters_ptr": ptr(torch.int64), "active_ptr": ptr(torch.bool)}
        sig |= {"iters_ptr": ptr(torch.int64), "first_ptr": ptr(torch.float64), "code_ptr": ptr(torch.int64)}
        sig |= {"abs_ptr": ptr(torch.float32), "rel_ptr": ptr(torch.float32)}
        sig |= {"b": "i32", "n": "i32", "copy_frozen": "i32"}
        for masked in (False, True):
            for rows in BLOCK_BS:
                constexprs = {"HAS_MASK": masked, "ACC": tl.float32, "BLOCK_B": rows, "BLOCK_N": TILE // rows}
                name = f"epilogue[{t[1:]},b{rows}n{TILE // rows}{',mask' if masked else ''}]"
                sig_c = sig | dict.fromkeys(constexprs, "constexpr")
                out.append(Shipped(name, epilogue_kernel, sig_c, constexprs, 4, 1))
    return out
