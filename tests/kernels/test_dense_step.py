"""The fused dense step against reference.dense_picard_step."""

from __future__ import annotations

import pytest
import torch

from kernels import dense_step, dispatch, reference
from kernels.reference import Stop
from tests.kernels.conftest import CUDA
from tests.kernels.problems import TOL, dense

SMALL = dense_step.StepConfig(16, 16, 16)
"""Blocks smaller than the shapes below: several column blocks meet in the cross-program sum."""


def _step_inputs(device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """20 rows of size 40 that end every way one step can end."""
    p = dense(20, 40, device, dtype, seed=1)
    b = 20
    iters = torch.arange(b, device=device) % 4  # rows with iters 0 take their first residual here
    max_iters = torch.full((b,), 50, device=device)
    max_iters[5] = iters[5] + 1  # budget spent
    tol = torch.full((b,), 1e-6, dtype=torch.float64, device=device)
    tol[3] = 1e3  # converged
    y = p.y0.clone()
    y[9] = 1e7  # finite, but its residual grows past 1e6 × its first: diverged
    p.inj[7, 3] = float("nan")  # diverged
    return {
        "y": y,
        "w": p.w,
        "inj": p.inj,
        "beta": p.beta,
        "tol": tol,
        "rel_mode": torch.arange(b, device=device) % 2 == 0,
        "iters": iters,
        "max_iters": max_iters,
        "first_res": torch.full((b,), 0.5, dtype=torch.float64, device=device),
    }


def _assert_step_close(out: reference.StepOut, ref: reference.StepOut, dtype: torch.dtype) -> None:
    assert out.code.tolist() == ref.code.tolist()
    assert out.iters.tolist() == ref.iters.tolist()
    for got, want in zip(out, ref, strict=True):
        torch.testing.assert_close(got, want, equal_nan=True, **TOL[dtype])


def test_step_matches_reference(case: tuple[str, torch.dtype]) -> None:
    device, dtype = case
    args = _step_inputs(device, dtype)
    out = dispatch.dense_picard_step(**args, backend="triton")
    ref = reference.dense_picard_step(**args)
    _assert_step_close(out, ref, dtype)
    assert set(ref.code.tolist()) == {Stop.RUNNING, Stop.CONVERGED, Stop.MAX_ITERS, Stop.DIVERGED}
    assert ref.code[9] == Stop.DIVERGED and torch.isfinite(ref.y[9]).all()


@pytest.mark.skipif(not CUDA, reason="autotuning times kernels on a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autotuned_step_matches_reference(dtype: torch.dtype) -> None:
    args = _step_inputs("cuda", dtype)
    _assert_step_close(
        dispatch.dense_picard_step(**args, backend="triton", tuned=True),
        reference.dense_picard_step(**args),
        dtype,
    )


def test_index_list_steps_only_listed_running_rows(case: tuple[str, torch.dtype]) -> None:
    device, dtype = case
    a = _step_inputs(device, dtype)
    b = a["y"].shape[0]
    listed = [3, 17, 0, 8, 12, 5, 7, 19, 9, 1]
    rows = torch.tensor(listed + [-1] * (b - len(listed)), dtype=torch.int32, device=device)
    code = torch.zeros(b, dtype=torch.long, device=device)
    code[8] = Stop.CONVERGED  # listed but already stopped
    stepped = torch.tensor([r for r in listed if r != 8], device=device)
    buf = dense_step.StepBuffers(
        y=a["y"],
        y_out=torch.full_like(a["y"], -7.0),
        inj=a["inj"],
        beta=a["beta"].reshape(b),
        tol=a["tol"],
        rel_mode=a["rel_mode"],
        max_iters=a["max_iters"],
        iters=a["iters"].clone(),
        iters_out=a["iters"].clone(),
        first_res=a["first_res"].clone(),
        first_out=a["first_res"].clone(),
        code=code,
        abs_res=torch.full((b,), -1.0, device=device),
        rel_res=torch.full((b,), -1.0, device=device),
        rows=rows,
    )
    scratch = dense_step.Scratch.new(b, torch.device(device))
    for _ in range(2):  # the second launch sees the scratch the first left behind
        buf.code.copy_(code)
        dense_step.launch(a["w"], buf, scratch, SMALL)
    assert not scratch.part.any() and not scratch.arrivals.any()

    ref = reference.dense_picard_step(**{k: v if k == "w" else v[stepped] for k, v in a.items()})
    got = reference.StepOut(
        buf.y_out[stepped],
        buf.abs_res[stepped],
        buf.rel_res[stepped],
        buf.code[stepped],
        buf.iters_out[stepped],
        buf.first_out[stepped],
    )
    _assert_step_close(got, ref, dtype)
    untouched = torch.ones(b, dtype=torch.bool, device=device)
    untouched[stepped] = False
    assert (buf.y_out[untouched] == -7.0).all()
    assert (buf.abs_res[untouched] == -1.0).all()
    assert buf.iters_out[untouched].tolist() == a["iters"][untouched].tolist()
    assert buf.code[untouched].tolist() == code[untouched].tolist()
