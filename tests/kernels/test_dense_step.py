"""The fused dense step against reference.dense_picard_step."""

from __future__ import annotations

import pytest
import torch

from eqserve.kernels import dense_step, dispatch, reference
from eqserve.kernels.reference import Stop
from tests.kernels.conftest import CUDA
from tests.kernels.problems import TOL, dense

SMALL = dense_step.StepConfig(16, 16, 16)
"""Blocks smaller than the shapes below: several column blocks meet in the cross-program sum."""

SPLITS = [
    dense_step.StepConfig(16, 16, 16, split_k=4),
    dense_step.StepConfig(16, 32, 16, split_k=2),
]
"""Split-K over n = 40: four slices of 16 (the last has no work, the third a masked tail), and two."""

LARGE = sorted({c for configs in dense_step.LARGE_CONFIGS.values() for _, c in configs}, key=str)
"""The large-n configurations, on the small shapes below (their blocks cover them: masked tails)."""


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


def _list_buffers(
    a: dict[str, torch.Tensor], rows: torch.Tensor, code: torch.Tensor
) -> dense_step.StepBuffers:
    """Buffers of a step over the index list `rows`; outputs start at −7 (state) and −1 (residuals)."""
    b, device = a["y"].shape[0], a["y"].device
    return dense_step.StepBuffers(
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


@pytest.mark.parametrize("config", [SMALL, *SPLITS, *LARGE], ids=lambda c: c.name)
def test_index_list_steps_only_listed_running_rows(
    case: tuple[str, torch.dtype], config: dense_step.StepConfig
) -> None:
    device, dtype = case
    a = _step_inputs(device, dtype)
    b = a["y"].shape[0]
    listed = [3, 17, 0, 8, 12, 5, 7, 19, 9, 1]
    rows = torch.tensor(listed + [-1] * (b - len(listed)), dtype=torch.int32, device=device)
    code = torch.zeros(b, dtype=torch.long, device=device)
    code[8] = Stop.CONVERGED  # listed but already stopped
    stepped = torch.tensor([r for r in listed if r != 8], device=device)
    buf = _list_buffers(a, rows, code)
    scratch = dense_step.Scratch.new(b, torch.device(device), a["w"].shape[0], config.split_k)
    for _ in range(2):  # the second launch sees the scratch the first left behind
        buf.code.copy_(code)
        dense_step.launch(a["w"], buf, scratch, config)
    assert not scratch.part.any() and not scratch.arrivals.any() and not scratch.tile_arrivals.any()

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


def test_rule_takes_large_configs_from_large_n(case: tuple[str, torch.dtype]) -> None:
    """With the threshold lowered to the test's n, the rule's pick for few rows steps a list with a
    NaN row and a padding slot as the reference does."""
    device, dtype = case
    a = _step_inputs(device, dtype)
    listed = [7, 3, 0, 5, 12, -1]  # 7 sees a NaN, 3 converges, 5 spends its budget; a padding slot
    bf16 = dtype == torch.bfloat16
    config = dense_step.step_config(40, len(listed), bf16, large_n=32)
    assert config in [c for _, c in dense_step.LARGE_CONFIGS[bf16]]
    rows = torch.tensor(listed, dtype=torch.int32, device=device)
    buf = _list_buffers(a, rows, torch.zeros_like(a["iters"]))
    scratch = dense_step.Scratch.new(len(listed), torch.device(device), 40, config.split_k)
    dense_step.launch(a["w"], buf, scratch, config)
    stepped = torch.tensor(listed[:-1], device=device)
    ref = reference.dense_picard_step(**{k: v if k == "w" else v[stepped] for k, v in a.items()})
    outs = (buf.y_out, buf.abs_res, buf.rel_res, buf.code, buf.iters_out, buf.first_out)
    _assert_step_close(reference.StepOut(*(t[stepped] for t in outs)), ref, dtype)
    assert set(ref.code.tolist()) == {Stop.RUNNING, Stop.CONVERGED, Stop.MAX_ITERS, Stop.DIVERGED}


def test_rule_below_large_n_is_unchanged() -> None:
    for bf16 in (False, True):
        for n in (64, 256, dense_step.LARGE_N[bf16] - 1):
            for rows in (1, 16, 64, 256):
                assert dense_step.step_config(n, rows, bf16) in dense_step.SMALL_CONFIGS[bf16]


def test_launch_refuses_blocks_scratch_is_not_sized_for() -> None:
    a = _step_inputs("cpu", torch.float32)
    rows = torch.arange(20, dtype=torch.int32)
    buf = _list_buffers(a, rows, torch.zeros_like(a["iters"]))
    small = dense_step.StepConfig(dense_step.MIN_BLOCK_B // 2, 16, 16)
    with pytest.raises(ValueError, match="MIN_BLOCK_B"):
        dense_step.launch(a["w"], buf, dense_step.Scratch.new(20, torch.device("cpu")), small)
    split = dense_step.StepConfig(16, 16, 16, split_k=2)
    with pytest.raises(ValueError, match="split_k = 2"):
        dense_step.launch(a["w"], buf, dense_step.Scratch.new(20, torch.device("cpu"), 40), split)


@pytest.mark.skipif(not CUDA, reason="programs arrive in a run-dependent order only on a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_k_state_does_not_depend_on_arrival_order(dtype: torch.dtype) -> None:
    """The tile's last slice adds the slices' partial sums in slice order, so repeated launches give
    the same state bit for bit (the rows' square sums meet by atomics: equal within rounding)."""
    p = dense(16, 1000, "cuda", dtype, seed=5)
    b = 16
    config = dense_step.StepConfig(16, 64, 128, split_k=4)
    scratch = dense_step.Scratch.new(b, torch.device("cuda"), 1000, config.split_k)
    outs = []
    for _ in range(5):
        buf = _list_buffers(
            {
                "y": p.y0,
                "inj": p.inj,
                "beta": p.beta,
                "tol": torch.full((b,), -1.0, dtype=torch.float64, device="cuda"),
                "rel_mode": torch.zeros(b, dtype=torch.bool, device="cuda"),
                "max_iters": torch.full((b,), 10, device="cuda"),
                "iters": torch.zeros(b, dtype=torch.long, device="cuda"),
                "first_res": torch.zeros(b, dtype=torch.float64, device="cuda"),
            },
            torch.arange(b, dtype=torch.int32, device="cuda"),
            torch.zeros(b, dtype=torch.long, device="cuda"),
        )
        dense_step.launch(p.w, buf, scratch, config)
        outs.append(buf)
    for o in outs[1:]:
        assert torch.equal(o.y_out, outs[0].y_out)
        torch.testing.assert_close(o.abs_res, outs[0].abs_res, rtol=1e-6, atol=0)
    assert not scratch.tile_arrivals.any() and not scratch.arrivals.any()
