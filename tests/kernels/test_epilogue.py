"""The fused solver epilogue against reference.solver_epilogue, for G(y) from no model in particular."""

from __future__ import annotations

import pytest
import torch

from eqserve.kernels import dispatch, epilogue, reference
from eqserve.kernels.reference import StepOut, Stop
from tests.kernels.problems import TOL

B, N = 13, 1100
"""Rows not a multiple of the larger row blocks, columns spanning several column blocks of each."""


def _inputs(device: str, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """B rows of size N, all active, that end every way one step can end: row 0 converges in abs
    mode, row 1 in rel mode, row 2 spends its budget, rows 3–5 see NaN or inf, row 6's residual grows
    past 1e6 × its first, rows 7 and 8 take their first residual here; the rest run on."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(B, N, generator=g, dtype=torch.float64)
    scale = torch.logspace(-4, 0, B, dtype=torch.float64)[:, None]
    gy = y + torch.randn(B, N, generator=g, dtype=torch.float64) * scale
    y[6] *= 1e7
    gy[6] = -y[6]
    gy[3, 5] = float("nan")
    gy[4, N - 1] = float("inf")
    y[5, 17] = -float("inf")
    iters = torch.arange(B) % 5 + 1
    iters[7:9] = 0
    max_iters = torch.full((B,), 100)
    max_iters[2] = iters[2] + 1
    y, gy = y.to(dtype), gy.to(dtype)
    d = (gy.float() - y.float()).norm(dim=1).double()
    rel = d / (gy.float().norm(dim=1).double() + reference.RESIDUAL_EPS)
    rel_mode = torch.arange(B) % 2 == 1
    # Tolerances a factor 2 from the residual, so that rounding never moves a decision.
    tol = torch.where(rel_mode, rel, d) / 2
    tol[0], tol[1] = d[0] * 2, rel[1] * 2
    t = {
        "y": y,
        "gy": gy,
        "mask": None,
        "beta": (torch.rand(B, 1, generator=g) * 0.5 + 0.5).to(dtype),
        "tol": tol,
        "rel_mode": rel_mode,
        "iters": iters,
        "max_iters": max_iters,
        "first_res": torch.full((B,), 0.5, dtype=torch.float64),
        "code": torch.zeros(B, dtype=torch.long),
        "abs_res": torch.full((B,), -1.0),
        "rel_res": torch.full((B,), -1.0),
        "active": torch.ones(B, dtype=torch.bool),
    }
    return {k: None if v is None else v.to(device) for k, v in t.items()}


def _assert_close(out: StepOut, ref: StepOut, dtype: torch.dtype) -> None:
    assert out.code.tolist() == ref.code.tolist()
    assert out.iters.tolist() == ref.iters.tolist()
    for got, want in zip(out, ref, strict=True):
        torch.testing.assert_close(got, want, equal_nan=True, **TOL[dtype])


@pytest.mark.parametrize("block_b", epilogue.BLOCK_BS)
def test_step_matches_reference(case: tuple[str, torch.dtype], block_b: int) -> None:
    device, dtype = case
    a = _inputs(device, dtype)
    before = {k: v.clone() for k, v in a.items() if v is not None}
    ref = reference.solver_epilogue(**a)
    _assert_close(epilogue.step(**a, block_b=block_b), ref, dtype)
    for k, v in before.items():
        torch.testing.assert_close(a[k], v, rtol=0, atol=0, equal_nan=True)
    codes = ref.code.tolist()
    assert codes[:3] == [Stop.CONVERGED, Stop.CONVERGED, Stop.MAX_ITERS]
    assert codes[3:7] == [Stop.DIVERGED] * 4 and torch.isfinite(ref.y[6]).all()
    assert Stop.RUNNING in codes[7:]
    assert ref.first_res[7:9].tolist() == ref.abs_res[7:9].double().tolist()


def test_dispatch_backends_agree(case: tuple[str, torch.dtype]) -> None:
    device, dtype = case
    a = _inputs(device, dtype, seed=1)
    _assert_close(
        dispatch.solver_epilogue(**a, backend="triton"), dispatch.solver_epilogue(**a, backend="torch"), dtype
    )


def test_fp64_rows_step_in_fp64(device: str) -> None:
    """An fp64 state (reciprocal's) is updated and measured in fp64, as the reference does."""
    a = _inputs(device, torch.float64, seed=7)
    a["abs_res"], a["rel_res"] = a["abs_res"].double(), a["rel_res"].double()
    ref = reference.solver_epilogue(**a)
    out = epilogue.step(**a)
    assert out.code.tolist() == ref.code.tolist() and out.iters.tolist() == ref.iters.tolist()
    for got, want in zip(out, ref, strict=True):
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block_b", [1, 4])
def test_masked_rows_ignore_what_lies_outside_their_shape(
    case: tuple[str, torch.dtype], block_b: int
) -> None:
    """Rows of different lengths padded into one batch: G(y) past a row's length is garbage (even NaN)
    and counts as 0, as the engine's torch.where does."""
    device, dtype = case
    a = _inputs(device, dtype, seed=2)
    lengths = torch.randint(1, N + 1, (B,), generator=torch.Generator().manual_seed(3))
    lengths[0] = N
    mask = (torch.arange(N)[None, :] < lengths[:, None]).to(device)
    a["mask"] = mask
    a["y"] = torch.where(mask, a["y"], 0.0)
    outside = torch.where(torch.arange(N, device=device) % 2 == 0, float("nan"), float("inf"))
    a["gy"] = torch.where(mask, a["gy"], outside.to(dtype))
    ref = reference.solver_epilogue(**a)
    _assert_close(epilogue.step(**a, block_b=block_b), ref, dtype)
    assert (ref.y[~mask] == 0).all()
    assert not ref.code[[r for r in range(7, B) if r % 2 == 0]].eq(Stop.DIVERGED).any()


@pytest.mark.parametrize("block_b", [1, 16])
def test_frozen_rows_keep_everything(case: tuple[str, torch.dtype], block_b: int) -> None:
    """Rows stopped earlier in a run (NaN in their G(y) included) change in nothing; the active rows
    step as if alone."""
    device, dtype = case
    a = _inputs(device, dtype, seed=4)
    frozen = torch.tensor([1, 3, 6, 8, 12], device=device)
    a["active"][frozen] = False
    a["code"][frozen] = torch.tensor([Stop.CONVERGED, Stop.MAX_ITERS, Stop.DIVERGED, 0, Stop.CONVERGED]).to(
        device
    )
    a["abs_res"][frozen] = 0.25
    a["gy"][12, 0] = float("nan")
    ref = reference.solver_epilogue(**a)
    out = epilogue.step(**a, block_b=block_b)
    _assert_close(out, ref, dtype)
    for k, got in zip(StepOut._fields, out, strict=True):
        torch.testing.assert_close(got[frozen], a[k][frozen], rtol=0, atol=0, equal_nan=True, msg=k)


@pytest.mark.parametrize("in_place", [True, False])
def test_launch_updates_buffers_in_place(case: tuple[str, torch.dtype], in_place: bool) -> None:
    """The runner's form: y_out may be y; active drops the rows that stop; frozen rows of an in-place
    y are not written (a sentinel there survives)."""
    device, dtype = case
    a = _inputs(device, dtype, seed=5)
    a["active"][[2, 10]] = False
    ref = reference.solver_epilogue(**a)
    buf = {k: v.clone() for k, v in a.items() if v is not None}
    y_out = buf["y"] if in_place else torch.full_like(buf["y"], -7.0)
    epilogue.launch(
        buf["y"], buf["gy"], None, buf["beta"], buf["tol"], buf["rel_mode"], buf["max_iters"], buf["active"],
        buf["iters"], buf["first_res"], buf["code"], buf["abs_res"], buf["rel_res"], y_out,
    )  # fmt: skip
    got = StepOut(y_out, buf["abs_res"], buf["rel_res"], buf["code"], buf["iters"], buf["first_res"])
    _assert_close(got, ref, dtype)
    assert buf["active"].tolist() == (a["active"] & (ref.code == Stop.RUNNING)).tolist()


def test_runs_of_k_steps_stop_rows_where_single_steps_do(device: str) -> None:
    """K in-place launches after G-steps of a contraction, no read back between them, against the
    reference one step at a time: every row stops at the same iteration with the same code (the
    tolerances lie between two iterations' residuals, a factor of about 2 from each)."""
    dtype = torch.float32
    g = torch.Generator().manual_seed(6)
    b, n = 9, 300
    w = torch.randn(n, n, generator=g, dtype=torch.float64)
    w = (w * 0.6 / torch.linalg.matrix_norm(w, 2)).to(device, dtype)
    inj = (torch.randn(b, n, generator=g) * 0.5).to(device, dtype)

    def model(y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ w.T + inj)

    a = _inputs(device, dtype)
    a = {k: v[:b] if v is not None else None for k, v in a.items()}
    a["y"] = torch.zeros(b, n, device=device, dtype=dtype)
    a["iters"] = torch.zeros(b, dtype=torch.long, device=device)
    a["max_iters"] = torch.tensor([40, 40, 5, 40, 40, 7, 40, 40, 40], device=device)
    tol = [3e-2, 7e-3, 0, 4e-2, 1e-3, 0, 5e-3, 1e-1, 6e-4]
    a["tol"] = torch.tensor(tol, dtype=torch.float64, device=device)
    ref = dict(a)
    buf = {k: v.clone() for k, v in a.items() if v is not None}
    for _ in range(12):
        ref["gy"] = model(ref["y"])
        ref.update(zip(StepOut._fields, reference.solver_epilogue(**ref), strict=True))
        ref["active"] = ref["active"] & (ref["code"] == Stop.RUNNING)
        per_row = [buf[k] for k in ("beta", "tol", "rel_mode", "max_iters", "active", "iters", "first_res")]
        epilogue.launch(
            buf["y"], model(buf["y"]), None, *per_row, buf["code"], buf["abs_res"], buf["rel_res"], buf["y"]
        )
    assert buf["code"].tolist() == ref["code"].tolist()
    assert buf["iters"].tolist() == ref["iters"].tolist()
    assert buf["active"].tolist() == ref["active"].tolist()
    assert {Stop.RUNNING, Stop.CONVERGED, Stop.MAX_ITERS} <= set(ref["code"].tolist())
    assert ref["iters"].tolist() == [6, 9, 5, 4, 12, 7, 10, 3, 11]
    torch.testing.assert_close(buf["y"], ref["y"], **TOL[dtype])


def test_launch_refuses_what_it_cannot_update_in_place() -> None:
    a = _inputs("cpu", torch.float32)
    args = [a[k] for k in ("y", "gy", "mask", "beta", "tol", "rel_mode", "max_iters", "active")]
    rest = [a[k] for k in ("iters", "first_res", "code", "abs_res", "rel_res")]
    with pytest.raises(ValueError, match="contiguous"):
        epilogue.launch(*args, *rest, torch.empty(N, B).T)
    args[2] = torch.ones(B, N + 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="pad mask"):
        epilogue.launch(*args, *rest, a["y"].clone())


def test_row_blocks_keep_launches_within_bounds() -> None:
    assert epilogue.block_rows(1) == 1
    assert epilogue.block_rows(epilogue.MAX_PROGRAMS) == 1
    assert epilogue.block_rows(epilogue.MAX_PROGRAMS + 1) == 4
    assert epilogue.block_rows(10**6) == epilogue.BLOCK_BS[-1]
