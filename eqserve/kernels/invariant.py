"""Batch-invariant mode: a row's bits do not depend on what shares its batch.

On the CPU (torch with MKL) a row's elementwise ops, its lerp, its `vector_norm` and Anderson's
per-row `bmm` come out the same alone as amid any mates of its shape. Two things do not:

- the dense product y Wᵀ: MKL takes one path (and so one reduction order) for a single row, another
  for two or three and a third from four on, and with several threads it splits the rows so that a
  row's path depends on its position. `linear` multiplies fixed blocks of BLOCK rows instead, and
  pads W's rows to a multiple of WIDTH: for some narrow outputs (5–7 and 9–11 columns) even a fixed
  block gives a row other bits at another place in it;
- a norm over a row that the batch pads with zeros (rows of different shapes): torch's vectorised
  sum puts a value in another lane once zeros sit before it. `residuals` sums fixed chunks and folds
  the chunk sums in order, so zeros anywhere add exactly nothing.

The runner turns the mode on around a model's step and the residuals (`with mode(True): ...`); a
model whose step honours it declares `ImplicitModel.batch_invariant`. The mode is per thread, as
each engine worker runs its own model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from eqserve.kernels.reference import RESIDUAL_EPS

BLOCK = 32
"""Rows per product call. Every call has this shape whatever the batch, so a row takes the same path;
large enough that a batch of 64 streams W twice, not once per few rows."""

WIDTH = 8
"""The product's output columns are padded with zero rows of W to a multiple of this."""

CHUNK = 32
"""Entries of a state's last axis summed as one fixed-length piece by `residuals`."""

_local = threading.local()
_packed: WeakIdKeyDictionary = WeakIdKeyDictionary()
_packed_lock = threading.Lock()


@contextmanager
def mode(on: bool) -> Iterator[None]:
    """Batch-invariant computation while inside (on) or not (off), in this thread."""
    before = enabled()
    _local.on = on
    try:
        yield
    finally:
        _local.on = before


def enabled() -> bool:
    """Whether this thread is in batch-invariant mode."""
    return getattr(_local, "on", False)


def _wide(w: torch.Tensor) -> torch.Tensor:
    """W with zero rows appended up to a multiple of WIDTH (W itself where it is one)."""
    return F.pad(w, (0, 0, 0, -w.shape[0] % WIDTH)) if w.shape[0] % WIDTH else w


def _mkl_packed(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """W widened and packed once for MKL's BLOCK-row product (kept per weight tensor until it changes
    in place), or None where that product does not apply: re-packing W in every call is most of what
    splitting a batch into blocks costs."""
    if (
        w.dtype != torch.float32
        or w.device.type != "cpu"
        or torch.is_grad_enabled()
        or not torch.backends.mkl.is_available()
    ):
        return None
    with _packed_lock:
        kept = _packed.get(w)
        if kept is None or kept[0] != w._version:
            wide = _wide(w.detach())
            packed = torch.ops.mkl._mkl_reorder_linear_weight(wide, BLOCK)
            kept = _packed[w] = (w._version, wide, packed)
    return kept[1], kept[2]


def linear(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y Wᵀ for y (B, k) and W (m, k); outside the mode the plain product, in it the rows in
    zero-padded blocks of BLOCK, each its own product of one fixed shape and width."""
    if not enabled():
        return y @ w.T
    b, m = y.shape[0], w.shape[0]
    padded = F.pad(y, (0, 0, 0, -b % BLOCK))
    kept = _mkl_packed(w)
    if kept is not None:
        wide, packed = kept
        parts = [torch.ops.mkl._mkl_linear(blk, packed, wide, None, BLOCK) for blk in padded.split(BLOCK)]
    else:
        wide = _wide(w)
        parts = [blk @ wide.T for blk in padded.split(BLOCK)]
    out = torch.cat(parts)[:b]
    return out if wide.shape[0] == m else out[:, :m].contiguous()


def residuals(
    y: torch.Tensor, gy: torch.Tensor, shape: tuple[int, ...] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """reference.residuals (abs = ‖G(y) − y‖, rel = abs / (‖G(y)‖ + ε) per row of flat (B, n)
    states laid out as (B, *shape), default (B, n)), summed so that neither the batch nor zero
    padding anywhere in the row changes a bit: squares summed in CHUNK-long pieces of the last axis
    (zero-padded to whole pieces), the piece sums added one after another (cumsum's sequential
    fold, accumulated in double), and an exact 0 added to a sum changes nothing."""
    b = y.shape[0]
    sq = torch.empty(2, *y.shape, dtype=torch.promote_types(y.dtype, torch.float32), device=y.device)
    torch.sub(gy, y, out=sq[0])
    sq[1].copy_(gy)
    sq = sq.mul_(sq).view(2 * b, -1, (shape or y.shape[1:])[-1])
    if sq.shape[2] % CHUNK:
        sq = F.pad(sq, (0, -sq.shape[2] % CHUNK))
    pieces = sq.view(2 * b, -1, CHUNK).sum(2)
    norms = pieces.cumsum(1)[:, -1].sqrt()
    abs_res = norms[:b]
    return abs_res, abs_res / (norms[b:] + RESIDUAL_EPS)
