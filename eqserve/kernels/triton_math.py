"""Device functions the kernels share: tanh from exp, torch's lerp, the fp32 dot, residuals, decisions."""

from __future__ import annotations

import triton
import triton.language as tl

from eqserve.kernels.reference import DIVERGENCE_GROWTH, RESIDUAL_EPS, Stop

RUNNING = tl.constexpr(int(Stop.RUNNING))
CONVERGED = tl.constexpr(int(Stop.CONVERGED))
MAX_ITERS = tl.constexpr(int(Stop.MAX_ITERS))
DIVERGED = tl.constexpr(int(Stop.DIVERGED))
EPS = tl.constexpr(RESIDUAL_EPS)
GROWTH = tl.constexpr(DIVERGENCE_GROWTH)


@triton.jit
def tanh(x):
    """tanh from exp (the interpreter has no libdevice): sign(x)·(1 − e)/(1 + e), e = exp(−2|x|)."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def lerp(a, b, w):
    """torch.lerp's formula, so that the damped update rounds as the reference does."""
    return tl.where(w < 0.5, a + w * (b - a), b - (b - a) * (1.0 - w))


@triton.jit
def dot(a, b, acc, BF16: tl.constexpr, IEEE: tl.constexpr):
    """acc + a @ b in fp32. bf16 operands on the tensor cores (exact products); fp32 operands either
    on the FMA units (IEEE) or on the tensor cores as three TF32 products, hi·hi + hi·lo + lo·hi: each
    product within a few fp32 ulps, and the fused step 3–7× faster at 256 rows (bench/RESULTS.md)."""
    if BF16:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="tf32x3")


@triton.jit
def square_sums(d, g, y_next, tile):
    """Per-row Σd², Σg² and the count of non-finite y_next over the masked `tile` (fp32 partial sums)."""
    sq_d = tl.sum(tl.where(tile, d * d, 0.0), axis=1)
    sq_g = tl.sum(tl.where(tile, g * g, 0.0), axis=1)
    bad = tile & ((y_next != y_next) | (tl.abs(y_next) == float("inf")))
    return sq_d, sq_g, tl.sum(bad.to(tl.float32), axis=1)


@triton.jit
def residuals(sq_d, sq_g):
    """abs = ‖G(y) − y‖ and rel = abs / (‖G(y)‖ + ε) from the square sums, as reference.residuals."""
    abs_res = tl.sqrt_rn(sq_d)
    return abs_res, tl.div_rn(abs_res, tl.sqrt_rn(sq_g) + EPS)


@triton.jit
def decide(abs_res, rel_res, y_finite, first_res, iters, max_iters, tol, rel_mode):
    """Stop codes (int32) as reference.decide: diverged > converged > max_iters > running."""
    res = tl.where(rel_mode, rel_res, abs_res).to(tl.float64)
    finite = (abs_res == abs_res) & (abs_res != float("inf")) & y_finite
    floor = tl.where(first_res < 1.0, 1.0, first_res)
    within = abs_res.to(tl.float64) <= GROWTH * floor  # false for NaN or inf, as in the reference
    code = tl.where(iters >= max_iters, MAX_ITERS, RUNNING)
    code = tl.where(res <= tol, CONVERGED, code)
    return tl.where(finite & within, code, DIVERGED)


@triton.jit
def count_and_decide(abs_res, rel_res, y_finite, rows, mask, iters_ptr, first_ptr, max_iters_ptr, tol_ptr,
                     rel_mode_ptr):  # fmt: skip
    """A step's bookkeeping for `rows`: iterations + 1, the first residual where this is the row's first
    step, and the stop code (`decide`) — (iters, first, code), not stored."""
    iters = tl.load(iters_ptr + rows, mask=mask, other=0) + 1
    first = tl.load(first_ptr + rows, mask=mask, other=0.0)
    first = tl.where(iters == 1, abs_res.to(tl.float64), first)
    code = decide(
        abs_res,
        rel_res,
        y_finite,
        first,
        iters,
        tl.load(max_iters_ptr + rows, mask=mask, other=0),
        tl.load(tol_ptr + rows, mask=mask, other=0.0),
        tl.load(rel_mode_ptr + rows, mask=mask, other=0) != 0,
    )
    return iters, first, code
