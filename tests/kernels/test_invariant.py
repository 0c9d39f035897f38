"""Batch-invariant mode: a row's iterates and residuals, bit for bit, alone and amid random mates."""

from __future__ import annotations

import pytest
import torch

from eqserve.kernels import dense_step, invariant, reference
from eqserve.models.base import Ctx, ImplicitModel
from eqserve.models.deq_mlp.model import DeqMLP
from eqserve.models.reciprocal import Reciprocal
from eqserve.models.shipped import WEIGHTS_DIR
from tests.kernels.problems import TOL, dense

BATCHES = [(2, 1), (5, 0), (5, 4), (33, 17), (64, 0), (64, 63), (70, 40)]
"""(batch size, the row's position): below, at and past a product block, first, middle and last."""

TICKS = 4


def _deq_mlp() -> tuple[ImplicitModel, Ctx, list[Ctx]]:
    model = DeqMLP.from_weights(WEIGHTS_DIR / "deq-mlp.safetensors")
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(80, 4, generator=g) * 0.95 + 0.05
    row = model.encode(model.Input(x=[0.07, 0.3, 0.55, 0.9]))
    return model, row, [model.encode(model.Input(x=x.tolist())) for x in xs]


def _reciprocal() -> tuple[ImplicitModel, Ctx, list[Ctx]]:
    model = Reciprocal()
    g = torch.Generator().manual_seed(0)
    row = model.encode(model.Input(x=[0.25, 0.5, 1.5, 0.9, 1.2]))
    # mates both shorter and longer than the row: it is zero-padded in most batches
    mates = [
        model.encode(model.Input(x=(torch.rand(int(k), generator=g) * 1.5 + 0.2).tolist()))
        for k in torch.randint(1, 40, (80,), generator=g)
    ]
    return model, row, mates


def _ticks(model: ImplicitModel, ctxs: list[Ctx], pos: int) -> list[tuple[torch.Tensor, ...]]:
    """Row `pos`'s (y, abs, rel) after each of TICKS Picard ticks (step, residuals, update) of the
    batch `ctxs` in invariant mode, its state cut to its own size."""
    bctx = model.collate(ctxs)
    sizes = [model.state_size(c) for c in ctxs]
    size = sizes[pos]
    y = torch.zeros(len(ctxs), max(sizes), dtype=model.dtype())
    for i, k in enumerate(sizes):  # the engine's zero padding past each row's own size
        y[i, :k] = 0.1
    beta = torch.full((len(ctxs), 1), 0.9, dtype=model.dtype())
    out = []
    with torch.inference_mode(), invariant.mode(True):
        for _ in range(TICKS):
            gy = model.step(y, bctx)
            abs_res, rel_res = invariant.residuals(y, gy)
            y = reference.picard(y, gy, beta)
            out.append((y[pos, :size], abs_res[pos], rel_res[pos]))
    return out


@pytest.mark.parametrize("build", [_deq_mlp, _reciprocal], ids=["deq-mlp", "reciprocal"])
def test_torch_ticks_are_the_rows_own(build) -> None:
    model, row, mates = build()
    alone = _ticks(model, [row], 0)
    for b, pos in BATCHES:
        ctxs = mates[: b - 1]
        ctxs.insert(pos, row)
        for t, (got, want) in enumerate(zip(_ticks(model, ctxs, pos), alone, strict=True)):
            for part, (g, w) in zip(("y", "abs", "rel"), zip(got, want, strict=True), strict=True):
                assert torch.equal(g, w), f"batch {b}, position {pos}, tick {t + 1}: {part} differs"


@pytest.mark.parametrize("k", [16, 100])
def test_the_product_is_the_rows_own_at_every_width(k: int) -> None:
    """y Wᵀ in the mode, for every output width from 1 to 40 (MKL takes other paths for narrow
    outputs, some of which give a row other bits at another place in its block): each row of a batch
    of 40 gets the bits it gets alone, and the product is y Wᵀ."""
    g = torch.Generator().manual_seed(k)
    y = torch.randn(40, k, generator=g)
    weights = [torch.randn(m, k, generator=g) for m in range(1, 41)]  # weights, not inference tensors
    with torch.inference_mode(), invariant.mode(True):
        for m, w in enumerate(weights, start=1):
            batch = invariant.linear(y, w)
            torch.testing.assert_close(batch, y @ w.T)
            for i in range(40):
                assert torch.equal(invariant.linear(y[i : i + 1], w)[0], batch[i]), f"width {m}, row {i}"


def test_default_product_depends_on_the_batch() -> None:
    """Without the mode a row's y Wᵀ changes with its batch, so the test above can fail."""
    model = _deq_mlp()[0]
    y = torch.randn(1, model.hidden, generator=torch.Generator().manual_seed(1))
    w = model.W.detach()
    alone = y @ w.T
    g = torch.Generator().manual_seed(2)
    differs = []
    for b, pos in BATCHES:
        batch = torch.randn(b, model.hidden, generator=g)
        batch[pos] = y[0]
        differs.append(not torch.equal((batch @ w.T)[pos], alone[0]))
    if not any(differs):
        pytest.skip("this machine's default product already gives a row the same bits in every batch")


def test_residuals_ignore_zero_padding_anywhere() -> None:
    """A (5, 37) state alone and zero-padded per axis to (7, 50) amid mates: the same residual bits."""
    g = torch.Generator().manual_seed(3)
    y, gy = torch.randn(1, 5, 37, generator=g), torch.randn(1, 5, 37, generator=g)
    want = invariant.residuals(y.flatten(1), gy.flatten(1), (5, 37))
    big_y, big_g = torch.randn(4, 7, 50, generator=g), torch.randn(4, 7, 50, generator=g)
    big_y[2], big_g[2] = 0.0, 0.0
    big_y[2, :5, :37], big_g[2, :5, :37] = y[0], gy[0]
    got = invariant.residuals(big_y.flatten(1), big_g.flatten(1), (7, 50))
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a[2], b[0])
    torch.testing.assert_close(got[0], reference.residuals(big_y.flatten(1), big_g.flatten(1))[0])


def test_mode_is_per_thread_and_nests() -> None:
    assert not invariant.enabled()
    with invariant.mode(True):
        assert invariant.enabled()
        with invariant.mode(False):
            assert not invariant.enabled()
        assert invariant.enabled()
    assert not invariant.enabled()


def _kernel_ticks(device: str, b: int, pos: int) -> list[torch.Tensor]:
    """Row `pos`'s (y, abs, rel) after each of TICKS invariant fused steps of a random batch of b rows
    of size 40 whose row `pos` is problem 0's row."""
    p = dense(b, 40, device, torch.float32, seed=b)
    one = dense(1, 40, device, torch.float32, seed=0)
    p.y0[pos], p.inj[pos], p.beta[pos] = one.y0[0], one.inj[0], one.beta[0]
    y, iters = p.y0, torch.zeros(b, dtype=torch.long, device=device)
    first = torch.zeros(b, dtype=torch.float64, device=device)
    never = torch.full((b,), -1.0, dtype=torch.float64, device=device)
    budget = torch.full((b,), 100, device=device)
    rel_mode = torch.zeros(b, dtype=torch.bool, device=device)
    w = one.w
    out = []
    for _ in range(TICKS):
        s = dense_step.step(y, w, p.inj, p.beta, never, rel_mode, iters, budget, first, invariant=True)
        ref = reference.dense_picard_step(y, w, p.inj, p.beta, never, rel_mode, iters, budget, first)
        torch.testing.assert_close(s.y, ref.y, **TOL[torch.float32])
        torch.testing.assert_close(s.abs_res, ref.abs_res, **TOL[torch.float32])
        y, iters, first = s.y, s.iters, s.first_res
        out += [s.y[pos].clone(), s.abs_res[pos].clone(), s.rel_res[pos].clone()]
    return out


def test_triton_step_is_the_rows_own(device: str) -> None:
    alone = _kernel_ticks(device, 1, 0)
    for b, pos in [(7, 6), (17, 8), (40, 39), (70, 35)]:
        for i, (got, want) in enumerate(zip(_kernel_ticks(device, b, pos), alone, strict=True)):
            assert torch.equal(got, want), f"batch {b}, position {pos}, tick {i // 3 + 1}, output {i % 3}"
