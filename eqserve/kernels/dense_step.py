"""The fused dense step: y' = (1−β)y + β·tanh(y Wᵀ + inj), residuals, stop decision, masked store.

One launch covers an index list of rows (−1 = no row) on a fixed grid of (row blocks, column
blocks, K slices); rows that are absent or no longer RUNNING cost nothing. Each program computes a
tile of G(y) (with split-K, the last of a tile's slices to arrive adds their partial sums and
finishes the tile) and adds its rows' partial square sums into a scratch buffer; the last program
of a row block to arrive (an atomic counter) takes the rows' decisions and leaves the counters and
sums zeroed, so a launch needs no memset and can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from eqserve.kernels.configs import Shipped, ptr
from eqserve.kernels.reference import StepOut
from eqserve.kernels.triton_math import RUNNING, count_and_decide, dot, lerp, residuals, square_sums, tanh


@triton.jit
def _finish(
    acc,
    row,
    slots,
    active,
    cols,
    cmask,
    pid_b,
    y_ptr,
    y_out_ptr,
    inj_ptr,
    beta_ptr,
    tol_ptr,
    rel_mode_ptr,
    max_iters_ptr,
    iters_ptr,
    iters_out_ptr,
    first_ptr,
    first_out_ptr,
    code_ptr,
    abs_ptr,
    rel_ptr,
    part_ptr,
    arrivals_ptr,
    n,
):
    """A tile's epilogue from its pre-activation sums `acc` (y Wᵀ): tanh, damping, store, the rows'
    square sums; the last tile of the row block to arrive takes the rows' decisions."""
    base = row.to(tl.int64) * n
    tile = active[:, None] & cmask[None, :]
    offs = base[:, None] + cols[None, :]
    g = tanh(acc + tl.load(inj_ptr + offs, mask=tile, other=0.0).to(tl.float32))
    y = tl.load(y_ptr + offs, mask=tile, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + row, mask=active, other=0.0).to(tl.float32)
    y_next = lerp(y, g, beta[:, None]).to(y_out_ptr.dtype.element_ty)
    tl.store(y_out_ptr + offs, y_next, mask=tile)
    sq_d, sq_g, bad = square_sums(g - y, g, y_next.to(tl.float32), tile)
    # Relaxed adds, so that they do not wait for one another: the barrier and the arrival's release
    # order them before the last program's acquire, as a split-K semaphore does.
    tl.atomic_add(part_ptr + slots * 3, sq_d, mask=active, sem="relaxed")
    tl.atomic_add(part_ptr + slots * 3 + 1, sq_g, mask=active, sem="relaxed")
    tl.atomic_add(part_ptr + slots * 3 + 2, bad, mask=active, sem="relaxed")
    tl.debug_barrier()
    if tl.atomic_add(arrivals_ptr + pid_b, 1) == tl.num_programs(1) - 1:
        # Read the totals at the point of coherence (relaxed atomics, after the arrival's acquire),
        # then zero them for the next launch.
        sq_d = tl.atomic_add(part_ptr + slots * 3, 0.0, mask=active, sem="relaxed")
        sq_g = tl.atomic_add(part_ptr + slots * 3 + 1, 0.0, mask=active, sem="relaxed")
        bad = tl.atomic_add(part_ptr + slots * 3 + 2, 0.0, mask=active, sem="relaxed")
        tl.debug_barrier()  # every thread has read before any zeroes
        tl.store(part_ptr + slots * 3, 0.0, mask=active)
        tl.store(part_ptr + slots * 3 + 1, 0.0, mask=active)
        tl.store(part_ptr + slots * 3 + 2, 0.0, mask=active)
        tl.store(arrivals_ptr + pid_b, 0)
        abs_res, rel_res = residuals(sq_d, sq_g)
        iters, first, new_code = count_and_decide(
            abs_res, rel_res, bad == 0, row, active, iters_ptr, first_ptr, max_iters_ptr, tol_ptr,
            rel_mode_ptr,
        )
        tl.store(iters_out_ptr + row, iters, mask=active)
        tl.store(first_out_ptr + row, first, mask=active)
        tl.store(code_ptr + row, new_code.to(tl.int64), mask=active)
        tl.store(abs_ptr + row, abs_res, mask=active)
        tl.store(rel_ptr + row, rel_res, mask=active)


@triton.jit
def dense_step_kernel(
    y_ptr,
    y_out_ptr,
    w_ptr,
    inj_ptr,
    beta_ptr,
    tol_ptr,
    rel_mode_ptr,
    max_iters_ptr,
    iters_ptr,
    iters_out_ptr,
    first_ptr,
    first_out_ptr,
    code_ptr,
    abs_ptr,
    rel_ptr,
    rows_ptr,
    num_rows,
    part_ptr,
    arrivals_ptr,
    split_ptr,
    split_stride,
    tile_arrivals_ptr,
    n,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BF16_DOT: tl.constexpr,
    PDL: tl.constexpr,
    INVARIANT: tl.constexpr = False,
):
    """One fused step for the rows listed in rows[pid_b·BLOCK_B:…], columns pid_n·BLOCK_N:…, over the
    pid_k-th of SPLIT_K slices of the inner dimension (their sums meet in `split_ptr`). With PDL
    (a programmatic dependent launch on CUDA) the next launch is let in at once and this one waits
    for the previous to finish before it reads anything: back-to-back steps overlap their launch.
    With INVARIANT the product is elementwise and summed over each K block per row, where tl.dot's
    rounding may depend on the row's place in the block (the interpreter's BLAS does); launched with
    INVARIANT_CONFIG whatever the batch, a row's bits are then its own."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    slots = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row = tl.load(rows_ptr + slots, mask=slots < num_rows, other=-1)
    code = tl.load(code_ptr + row, mask=row >= 0, other=-1)
    active = (row >= 0) & (code == RUNNING)
    # Every program of a row block sees the same active rows: the decision that changes `code`
    # is taken by the last of them, after all have read it.
    if tl.sum(active.to(tl.int32), axis=0) > 0:
        row = tl.where(active, row, 0)
        base = row.to(tl.int64) * n
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < n
        span = tl.cdiv(tl.cdiv(n, SPLIT_K), BLOCK_K) * BLOCK_K
        k_lo = pid_k * span
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_lo, tl.minimum(k_lo + span, n), BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < n
            yk = tl.load(
                y_ptr + base[:, None] + ks[None, :], mask=active[:, None] & kmask[None, :], other=0.0
            )
            wk = tl.load(
                w_ptr + cols[None, :].to(tl.int64) * n + ks[:, None],
                mask=kmask[:, None] & cmask[None, :],
                other=0.0,
            )
            if INVARIANT:
                acc += tl.sum(yk.to(tl.float32)[:, :, None] * wk.to(tl.float32)[None, :, :], axis=1)
            else:
                acc = dot(yk, wk, acc, BF16_DOT, False)
        epilogue = True
        if SPLIT_K > 1:
            # Each slice stores its partial sums; the last slice of the tile to arrive adds them in
            # slice order (the same rounding whatever the arrival order) and finishes the tile.
            tile = active[:, None] & cmask[None, :]
            offs = slots[:, None].to(tl.int64) * n + cols[None, :]
            tl.store(split_ptr + pid_k * split_stride + offs, acc, mask=tile)
            tl.debug_barrier()
            tile_id = pid_b * tl.num_programs(1) + pid_n
            epilogue = tl.atomic_add(tile_arrivals_ptr + tile_id, 1) == SPLIT_K - 1
            if epilogue:
                tl.store(tile_arrivals_ptr + tile_id, 0)
                acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                for s in tl.static_range(SPLIT_K):
                    acc += tl.load(
                        split_ptr + s * split_stride + offs, mask=tile, other=0.0, cache_modifier=".cg"
                    )
        if epilogue:
            _finish(
                acc,
                row,
                slots,
                active,
                cols,
                cmask,
                pid_b,
                y_ptr,
                y_out_ptr,
                inj_ptr,
                beta_ptr,
                tol_ptr,
                rel_mode_ptr,
                max_iters_ptr,
                iters_ptr,
                iters_out_ptr,
                first_ptr,
                first_out_ptr,
                code_ptr,
                abs_ptr,
                rel_ptr,
                part_ptr,
                arrivals_ptr,
                n,
            )


@dataclass(frozen=True)
class StepConfig:
    """Block sizes and launch settings of the fused step; `split_k` > 1 splits the inner dimension
    over that many programs per tile (more programs streaming W when rows are few)."""

    block_b: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1

    @property
    def name(self) -> str:
        """A short label for tables."""
        split = f"x{self.split_k}" if self.split_k > 1 else ""
        return f"b{self.block_b}n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}{split}"


SMALL_CONFIGS = {
    False: (
        StepConfig(16, 16, 64, num_stages=4),
        StepConfig(16, 32, 64, num_stages=2),
        StepConfig(32, 32, 32),
        StepConfig(32, 64, 32, num_warps=8),
        StepConfig(64, 32, 32, num_warps=8),
    ),
    True: (
        StepConfig(16, 16, 128),
        StepConfig(16, 32, 64),
        StepConfig(32, 64, 64, num_warps=8),
        StepConfig(64, 64, 32, num_warps=8),
    ),
}
"""The fixed rule's configurations below LARGE_N, for the fp32 (TF32×3) dot (False) and the bf16 dot
(True): fp32 operands take twice the registers and shared memory, so its tiles are smaller."""

LARGE_N = {False: 1024, True: 2048}
"""From this state size on (per dot: fp32, bf16) the fixed rule takes LARGE_CONFIGS: W is large enough
that the step wants more programs streaming it than the small-n tiles give."""

LARGE_CONFIGS = {
    False: (
        (64, StepConfig(16, 64, 64, num_warps=8, split_k=4)),
        (None, StepConfig(64, 64, 32, num_warps=8, num_stages=4, split_k=2)),
    ),
    True: (
        (16, StepConfig(16, 64, 128, split_k=4)),
        (64, StepConfig(64, 64, 64, num_warps=8, num_stages=4, split_k=2)),
        (None, StepConfig(64, 64, 64, num_warps=8, num_stages=4)),
    ),
}
"""(most rows, configuration) for n ≥ LARGE_N, first match (None: any number), chosen by
bench/kernel_configs.py (bf16 on an H200 at n = 2048 and 4096, fp32 on an H100 at n = 1024 to 4096):
few rows split the inner dimension (bf16: 4 slices of 64 × 1024 of W per tile, ~2 programs per SM
streaming W, where one per SM left bandwidth unused); in fp32 the 16-row split tile serves up to 64
rows (2.5× the unsplit tiles at n = 1024, within 16 % of the best at 4096) and more rows split in two."""

STEP_CONFIGS = {
    bf16: tuple(dict.fromkeys(SMALL_CONFIGS[bf16] + tuple(c for _, c in LARGE_CONFIGS[bf16])))
    for bf16 in (False, True)
}
"""Every configuration a launcher may pick: the fixed launcher by rule, the autotuned one by timing.
Each fits sm_90 without spills (bench/kernels_aot.py)."""

INVARIANT_CONFIG = StepConfig(16, 16, 32)
"""The one configuration of batch-invariant launches: no split of the inner dimension, and blocks
small enough for the elementwise product's (rows, K, columns) block."""

MIN_BLOCK_B = min(c.block_b for configs in STEP_CONFIGS.values() for c in configs)
"""The smallest row block: scratch is sized for it."""

MIN_BLOCK_N = min(c.block_n for configs in STEP_CONFIGS.values() for c in configs)
"""The smallest column block: split-K tile counters are sized for it."""

MAX_SPLIT_K = max(c.split_k for configs in STEP_CONFIGS.values() for c in configs)
"""The most inner-dimension slices a shipped configuration takes."""

MIN_PROGRAMS = 128
"""The small-n rule's goal: about one wave of programs on an H100 (132 SMs) when the shape allows."""


def step_config(n: int, rows: int, bf16_dot: bool, large_n: int | None = None) -> StepConfig:
    """The fixed launcher's configuration. From `large_n` (default LARGE_N of the dot) on,
    LARGE_CONFIGS by number of rows; below, rows per block by batch size, then the widest column block
    that still gives MIN_PROGRAMS programs (else the narrowest)."""
    if n >= (LARGE_N[bf16_dot] if large_n is None else large_n):
        return next(c for most, c in LARGE_CONFIGS[bf16_dot] if most is None or rows <= most)
    block_b = 16 if rows <= 16 else 32 if rows <= 64 else 64
    fits = [c for c in SMALL_CONFIGS[bf16_dot] if c.block_b == block_b]
    wide = [c for c in fits if triton.cdiv(rows, block_b) * triton.cdiv(n, c.block_n) >= MIN_PROGRAMS]
    return max(wide, key=lambda c: c.block_n) if wide else min(fits, key=lambda c: c.block_n)


@dataclass
class StepBuffers:
    """Per-row tensors of one fused step. `iters_out`/`first_out` may alias `iters`/`first_res`;
    `code`, `abs_res`, `rel_res` are updated in place for the rows stepped; `y_out` must not alias `y`.
    `rows` (int32) lists the rows to step, −1 for none; rows whose code is not RUNNING are skipped.
    """

    y: torch.Tensor
    y_out: torch.Tensor
    inj: torch.Tensor
    beta: torch.Tensor
    tol: torch.Tensor
    rel_mode: torch.Tensor
    max_iters: torch.Tensor
    iters: torch.Tensor
    iters_out: torch.Tensor
    first_res: torch.Tensor
    first_out: torch.Tensor
    code: torch.Tensor
    abs_res: torch.Tensor
    rel_res: torch.Tensor
    rows: torch.Tensor

    @staticmethod
    def ping_pong(
        y0: torch.Tensor,
        y1: torch.Tensor,
        inj: torch.Tensor,
        beta: torch.Tensor,
        tol: torch.Tensor,
        rel_mode: torch.Tensor,
        max_iters: torch.Tensor,
        iters: torch.Tensor,
        first_res: torch.Tensor,
        code: torch.Tensor,
        abs_res: torch.Tensor,
        rel_res: torch.Tensor,
        rows: torch.Tensor,
    ) -> tuple[StepBuffers, StepBuffers]:
        """The steps y0 → y1 and y1 → y0 of a solve held in fixed buffers: the counters, first
        residuals, codes and residuals updated in place (step i of a solve takes buffers i % 2)."""
        shared = {
            "inj": inj,
            "beta": beta,
            "tol": tol,
            "rel_mode": rel_mode,
            "max_iters": max_iters,
            "iters": iters,
            "iters_out": iters,
            "first_res": first_res,
            "first_out": first_res,
            "code": code,
            "abs_res": abs_res,
            "rel_res": rel_res,
            "rows": rows,
        }
        return StepBuffers(y=y0, y_out=y1, **shared), StepBuffers(y=y1, y_out=y0, **shared)


@dataclass
class Scratch:
    """Zeroed partial square sums (3 per list slot) and arrival counters (1 per row block), left
    zeroed; for split-K launches also each slice's pre-activations (split_k × slots × n, fp32,
    overwritten by every launch) and per-tile arrival counters (left zeroed)."""

    part: torch.Tensor
    arrivals: torch.Tensor
    split: torch.Tensor
    tile_arrivals: torch.Tensor

    @staticmethod
    def new(slots: int, device: torch.device, n: int = 0, split_k: int = 1) -> Scratch:
        """Scratch for index lists of up to `slots` entries, under any configuration of at most
        `split_k` slices for states of size up to `n`."""
        blocks = triton.cdiv(slots, MIN_BLOCK_B)
        split = split_k > 1
        tiles = blocks * triton.cdiv(n, MIN_BLOCK_N) if split else 1
        return Scratch(
            torch.zeros(blocks * MIN_BLOCK_B * 3, device=device),
            torch.zeros(blocks, dtype=torch.int32, device=device),
            torch.empty(split_k * blocks * MIN_BLOCK_B * n if split else 1, device=device),
            torch.zeros(tiles, dtype=torch.int32, device=device),
        )

    def fits(self, slots: int, n: int = 0, split_k: int = 1) -> bool:
        """Whether this scratch serves index lists of `slots` entries, states of size n and
        configurations of `split_k` slices."""
        blocks = triton.cdiv(slots, MIN_BLOCK_B)
        return self.arrivals.numel() >= blocks and (
            split_k == 1
            or (
                self.split.numel() >= split_k * slots * n
                and self.tile_arrivals.numel() >= blocks * triton.cdiv(n, MIN_BLOCK_N)
            )
        )


def _args(w: torch.Tensor, buf: StepBuffers, scratch: Scratch) -> tuple:
    n, slots = w.shape[0], buf.rows.numel()
    return (
        buf.y,
        buf.y_out,
        w,
        buf.inj,
        buf.beta,
        buf.tol,
        buf.rel_mode,
        buf.max_iters,
        buf.iters,
        buf.iters_out,
        buf.first_res,
        buf.first_out,
        buf.code,
        buf.abs_res,
        buf.rel_res,
        buf.rows,
        slots,
        scratch.part,
        scratch.arrivals,
        scratch.split,
        slots * n,
        scratch.tile_arrivals,
        n,
    )


def _bf16_dot(w: torch.Tensor, buf: StepBuffers) -> bool:
    return w.dtype == buf.y.dtype == torch.bfloat16


@functools.cache
def _dependent_launch(device: torch.device) -> bool:
    """Whether `device` takes programmatic dependent launches (Hopper, sm_90, and later)."""
    return torch.cuda.get_device_capability(device)[0] >= 9


def launch(
    w: torch.Tensor,
    buf: StepBuffers,
    scratch: Scratch,
    config: StepConfig | None = None,
    invariant: bool = False,
) -> None:
    """Launch one fused step with a fixed configuration (`step_config`'s rule unless given); batch
    invariant (each row's bits whatever shares the launch) with INVARIANT_CONFIG unless given."""
    n, slots = w.shape[0], buf.rows.numel()
    cfg = config or (INVARIANT_CONFIG if invariant else step_config(n, slots, _bf16_dot(w, buf)))
    if cfg.block_b < MIN_BLOCK_B or (cfg.split_k > 1 and cfg.block_n < MIN_BLOCK_N):
        raise ValueError(
            f"blocks {cfg.name} are below MIN_BLOCK_B {MIN_BLOCK_B} / MIN_BLOCK_N {MIN_BLOCK_N},"
            " which scratch is sized for"
        )
    if not scratch.fits(slots, n, cfg.split_k):
        raise ValueError(f"scratch is too small for {slots} slots, n = {n}, split_k = {cfg.split_k}")
    grid = (triton.cdiv(slots, cfg.block_b), triton.cdiv(n, cfg.block_n), cfg.split_k)
    # Split-K launches are short (at most ~2 programs per SM): there the overlap measured 2–5 % faster
    # on an H200; the multi-wave tiles of many rows measured slower with it (bench/RESULTS.md).
    pdl = cfg.split_k > 1 and w.is_cuda and _dependent_launch(w.device)
    dense_step_kernel[grid](
        *_args(w, buf, scratch),
        BLOCK_B=cfg.block_b,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        SPLIT_K=cfg.split_k,
        BF16_DOT=_bf16_dot(w, buf),
        PDL=pdl,
        INVARIANT=invariant,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **({"launch_pdl": True} if pdl else {}),
    )


def _autotune(configs: tuple[StepConfig, ...]) -> triton.runtime.Autotuner:
    return triton.autotune(
        configs=[
            triton.Config(
                {
                    "BLOCK_B": c.block_b,
                    "BLOCK_N": c.block_n,
                    "BLOCK_K": c.block_k,
                    "SPLIT_K": c.split_k,
                },
                num_warps=c.num_warps,
                num_stages=c.num_stages,
            )
            for c in configs
        ],
        key=["num_rows", "n"],
        restore_value=["iters_out_ptr", "first_out_ptr", "code_ptr", "abs_ptr", "rel_ptr"],
    )(dense_step_kernel)


_autotuned = {bf16: _autotune(configs) for bf16, configs in STEP_CONFIGS.items()}


def launch_autotuned(w: torch.Tensor, buf: StepBuffers, scratch: Scratch) -> None:
    """Launch one fused step with the configuration timed fastest for its (rows, n) on this GPU."""
    n, slots = w.shape[0], buf.rows.numel()

    if not scratch.fits(slots, n, MAX_SPLIT_K):
        raise ValueError(f"scratch is too small for {slots} slots, n = {n}, split_k = {MAX_SPLIT_K}")

    def grid(meta: dict) -> tuple[int, int, int]:
        return triton.cdiv(slots, meta["BLOCK_B"]), triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"]

    bf16 = _bf16_dot(w, buf)
    _autotuned[bf16][grid](*_args(w, buf, scratch), BF16_DOT=bf16, PDL=False)


_scratch: dict[tuple[str, int, int, int], Scratch] = {}
_scratch_lock = threading.Lock()


def _stream_scratch(device: torch.device, slots: int, n: int, split_k: int) -> Scratch:
    """Scratch shared by the launches of one CUDA stream (they run one after another), or of one
    thread on the CPU, per state size and split; grown on demand."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else threading.get_ident()
    key = (str(device), stream, n, split_k)
    with _scratch_lock:
        s = _scratch.get(key)
        if s is None or not s.fits(slots, n, split_k):
            s = _scratch[key] = Scratch.new(slots, device, n, split_k)
        return s


def step(
    y: torch.Tensor,
    w: torch.Tensor,
    inj: torch.Tensor,
    beta: torch.Tensor,
    tol: torch.Tensor,
    rel_mode: torch.Tensor,
    iters: torch.Tensor,
    max_iters: torch.Tensor,
    first_res: torch.Tensor,
    *,
    tuned: bool = False,
    invariant: bool = False,
) -> StepOut:
    """reference.dense_picard_step for every row of the batch, in one fused launch; batch-invariant
    (the autotuner's choice set aside) with `invariant`."""
    b = y.shape[0]
    dev = y.device
    buf = StepBuffers(
        y=y.contiguous(),
        y_out=torch.empty_like(y, memory_format=torch.contiguous_format),
        inj=inj.contiguous(),
        beta=beta.reshape(b).contiguous(),
        tol=tol.contiguous(),
        rel_mode=rel_mode.contiguous(),
        max_iters=max_iters.contiguous(),
        iters=iters.contiguous(),
        iters_out=torch.empty_like(iters, memory_format=torch.contiguous_format),
        first_res=first_res.contiguous(),
        first_out=torch.empty_like(first_res, memory_format=torch.contiguous_format),
        code=torch.zeros_like(iters),
        abs_res=torch.empty(b, device=dev),
        rel_res=torch.empty(b, device=dev),
        rows=torch.arange(b, dtype=torch.int32, device=dev),
    )
    w = w.contiguous()
    n = w.shape[0]
    if invariant:
        launch(w, buf, _stream_scratch(dev, b, n, INVARIANT_CONFIG.split_k), invariant=True)
        return StepOut(buf.y_out, buf.abs_res, buf.rel_res, buf.code, buf.iters_out, buf.first_out)
    split_k = MAX_SPLIT_K if tuned else step_config(n, b, _bf16_dot(w, buf)).split_k
    scratch = _stream_scratch(dev, b, n, split_k)
    if tuned:
        launch_autotuned(w, buf, scratch)
    else:
        launch(w, buf, scratch)
    return StepOut(buf.y_out, buf.abs_res, buf.rel_res, buf.code, buf.iters_out, buf.first_out)


def shipped() -> list[Shipped]:
    """Every configuration of the fused step, for fp32 and for bf16 state and weights; and the
    batch-invariant one."""
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        sig = {
            "y_ptr": ptr(dtype),
            "y_out_ptr": ptr(dtype),
            "w_ptr": ptr(dtype),
            "inj_ptr": ptr(dtype),
            "beta_ptr": ptr(dtype),
            "tol_ptr": ptr(torch.float64),
            "rel_mode_ptr": ptr(torch.bool),
            "max_iters_ptr": ptr(torch.int64),
            "iters_ptr": ptr(torch.int64),
            "iters_out_ptr": ptr(torch.int64),
            "first_ptr": ptr(torch.float64),
            "first_out_ptr": ptr(torch.float64),
            "code_ptr": ptr(torch.int64),
            "abs_ptr": ptr(torch.float32),
            "rel_ptr": ptr(torch.float32),
            "rows_ptr": ptr(torch.int32),
            "num_rows": "i32",
            "part_ptr": ptr(torch.float32),
            "arrivals_ptr": ptr(torch.int32),
            "split_ptr": ptr(torch.float32),
            "split_stride": "i32",
            "tile_arrivals_ptr": ptr(torch.int32),
            "n": "i32",
        }
        bf16 = dtype == torch.bfloat16
        for c, inv in [(c, False) for c in STEP_CONFIGS[bf16]] + [(INVARIANT_CONFIG, True)]:
            constexprs = {
                "BLOCK_B": c.block_b,
                "BLOCK_N": c.block_n,
                "BLOCK_K": c.block_k,
                "SPLIT_K": c.split_k,
                "BF16_DOT": bf16,
                "PDL": c.split_k > 1,
                "INVARIANT": inv,
            }
            out.append(
                Shipped(
                    f"dense_step[{ptr(dtype)[1:]},{c.name}{',invariant' if inv else ''}]",
                    dense_step_kernel,
                    {**sig, **dict.fromkeys(constexprs, "constexpr")},
                    constexprs,
                    c.num_warps,
                    c.num_stages,
                )
            )
    return out
