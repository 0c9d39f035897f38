"""The engine gives the same statuses, iteration counts and outputs on both kernel backends."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pydantic", reason="the models need pydantic (the GPU image lacks it unless carried)")

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob, SolveResult
from eqserve.kernels.dispatch import select_backend
from eqserve.models.deq_mlp.model import DeqMLP


def small_deq(hidden: int = 24, norm: float = 0.8) -> DeqMLP:
    """A random deq-mlp with ‖W‖₂ = norm: small enough for the Triton interpreter."""
    torch.manual_seed(0)
    model = DeqMLP(d_in=4, hidden=hidden, d_out=4)
    with torch.no_grad():
        w = torch.randn(hidden, hidden)
        model.W.copy_(norm * w / torch.linalg.matrix_norm(w, ord=2))
        model.inj.weight.normal_(0, 1)
    return model.eval()


def jobs(model: DeqMLP, m: int) -> list[SolveJob]:
    specs = [([0.1, 0.5, 0.9, 0.3], 1e-2, 200), ([0.7, 0.2, 0.4, 0.6], 1e-5, 200), ([0.5] * 4, 0.0, 9)]
    out = []
    for k, (x, tol, max_iters) in enumerate(specs):
        ctx = model.encode(model.Input(x=x))
        out.append(
            SolveJob(
                id=str(k), ctx=ctx, y0=model.init(ctx), max_iters=max_iters, tol=tol, m=m, return_state=True
            )
        )
    return out


def run(model: DeqMLP, backend: str, m: int) -> list[SolveResult]:
    engine = Engine(model, backend=backend)  # type: ignore[arg-type]
    futures = [engine.submit(j) for j in jobs(model, m)]
    engine.start()
    try:
        return [f.result(120) for f in futures]
    finally:
        engine.stop()


@pytest.mark.parametrize("m", [0, 5], ids=["picard", "anderson"])
def test_triton_and_torch_backends_agree(m: int) -> None:
    """Picard runs the fused dense step; Anderson the torch G-step with the fused record and mixing."""
    model = small_deq()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    assert select_backend("triton", device, supported=True) == "triton"
    fused, plain = run(model, "triton", m), run(model, "torch", m)
    assert [r.status for r in fused] == [r.status for r in plain] == ["converged", "converged", "max_iters"]
    assert [r.iterations for r in fused] == [r.iterations for r in plain]
    for f, p in zip(fused, plain, strict=True):
        torch.testing.assert_close(torch.tensor(f.state), torch.tensor(p.state), rtol=1e-5, atol=1e-6)
        assert f.output is not None and p.output is not None
        torch.testing.assert_close(
            torch.tensor(f.output["y"]), torch.tensor(p.output["y"]), rtol=1e-5, atol=1e-5
        )


def test_auto_picks_torch_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: auto picks Triton here")
    assert select_backend("auto", "cpu", True) == "torch"


def test_the_solver_epilogue_serves_any_models_picard_rows_as_the_torch_path_does() -> None:
    """On the Triton backend a model without a dense form runs its step, then the fused epilogue."""
    from eqserve.engine.runner import EpilogueRunner
    from eqserve.models.reciprocal import Reciprocal, ReciprocalInput

    model = Reciprocal()
    specs = [([0.5, 0.25, 1.5], 1e-9, 300), ([0.8], 1e-4, 300), ([0.01, 0.02], 0.0, 7)]
    specs.append(([0.3, 0.9], 1e-11, 300))

    def solve(backend: str) -> tuple[list[SolveResult], object]:
        engine = Engine(model, backend=backend)  # type: ignore[arg-type]
        futures = []
        for x, tol, max_iters in specs:
            ctx = model.encode(ReciprocalInput(x=x))
            y0 = model.init(ctx)
            futures.append(engine.submit(SolveJob(str(x), ctx, y0, max_iters, tol, return_state=True)))
        engine.start()
        try:
            return [f.result(120) for f in futures], engine._runner
        finally:
            engine.stop()

    (fused, runner), (plain, _) = solve("triton"), solve("torch")
    assert isinstance(runner, EpilogueRunner)
    want = ["converged", "converged", "max_iters", "converged"]
    assert [r.status for r in fused] == [r.status for r in plain] == want
    assert [r.iterations for r in fused] == [r.iterations for r in plain]
    for f, p in zip(fused, plain, strict=True):
        torch.testing.assert_close(torch.tensor(f.state), torch.tensor(p.state), rtol=1e-12, atol=1e-12)
