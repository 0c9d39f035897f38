"""Backend selection and the one API over both backends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from eqserve.kernels import dispatch, reference
from tests.kernels.problems import assert_same_solve, dense, solve_case

ROOT = Path(__file__).resolve().parents[2]


def test_select_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dispatch.select_backend("torch", "cuda") == "torch"
    assert dispatch.select_backend("auto", "cpu") == "torch"
    assert dispatch.select_backend("auto", "cuda") == "triton"
    assert dispatch.select_backend("auto", "cuda", supported=False) == "torch"
    assert dispatch.select_backend("triton", torch.device("cuda", 0)) == "triton"
    with pytest.raises(ValueError, match="no fused kernel"):
        dispatch.select_backend("triton", "cuda", supported=False)
    with pytest.raises(ValueError, match="one of auto, triton, torch"):
        dispatch.select_backend("cuda", "cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        dispatch.select_backend("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.select_backend("triton", "cpu") == "triton"


def test_torch_backend_is_the_engine_tick() -> None:
    """For fp32 the torch path is exactly dense_step → residuals → picard → decide, as _tick runs them."""
    p = dense(6, 10, "cpu", torch.float32)
    tol = torch.full((6,), 0.05, dtype=torch.float64)
    rel_mode = torch.tensor([True, False] * 3)
    iters = torch.tensor([0, 0, 1, 2, 3, 4])
    max_iters = torch.full((6,), 4)
    first = torch.tensor([0.0, 0.0, 0.7, 0.7, 0.7, 0.7], dtype=torch.float64)
    out = dispatch.dense_picard_step(
        p.y0, p.w, p.inj, p.beta, tol, rel_mode, iters, max_iters, first, "torch"
    )
    gy = reference.dense_step(p.y0, p.w, p.inj)
    abs_res, rel_res = reference.residuals(p.y0, gy)
    y_next = reference.picard(p.y0, gy, p.beta)
    first = torch.where(iters + 1 == 1, abs_res.double(), first)
    code = reference.decide(abs_res, rel_res, y_next, first, iters + 1, max_iters, tol, rel_mode)
    for got, want in zip(out, (y_next, abs_res, rel_res, code, iters + 1, first), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("n", [40, 70])  # the persistent kernel, then the graph runner
def test_dense_solver_matches_reference(device: str, n: int) -> None:
    p, bud = solve_case(device, torch.float32, b=12, n=n)
    args = (p.y0, p.inj, p.beta, bud.tol, bud.rel_mode, bud.max_iters)
    assert_same_solve(
        dispatch.dense_solver(p.w, "triton")(*args),
        reference.dense_solve(args[0], p.w, *args[1:]),
        torch.float32,
    )
    torch_out = dispatch.dense_solver(p.w, "torch")(*args)
    assert torch_out.iters.tolist() == reference.dense_solve(args[0], p.w, *args[1:]).iters.tolist()


def test_works_without_triton(tmp_path: Path) -> None:
    """Where Triton is missing (macOS), kernels imports and the torch path runs."""
    fake = tmp_path / "triton"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no triton here')\n")
    code = textwrap.dedent(
        """
        import torch
        from eqserve.kernels import dispatch
        assert not dispatch.triton_available()
        assert dispatch.select_backend("auto", "cuda") == "torch"
        try:
            dispatch.select_backend("triton", "cuda")
        except ValueError as e:
            assert "not installed" in str(e)
        else:
            raise AssertionError("triton selected without Triton")
        y = torch.zeros(2, 3)
        i = torch.zeros(2, dtype=torch.long)
        f = torch.zeros(2, dtype=torch.float64)
        out = dispatch.dense_picard_step(
            y, torch.eye(3) * 0.5, y + 1, torch.ones(2, 1), f, i.bool(), i, i + 5, f, "torch"
        )
        assert out.iters.tolist() == [1, 1]
        print("ok")
        """
    )
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
