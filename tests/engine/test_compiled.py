"""A compiled step served: the engine runs the step it is given, and the server compiles at load the
models `--compile-step` names."""

from __future__ import annotations

import pytest
import torch

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob
from eqserve.models.base import Ctx
from eqserve.models.reciprocal import Reciprocal, ReciprocalInput
from tests.conftest import make_client


def test_the_engine_steps_with_the_step_it_is_given() -> None:
    model = Reciprocal()
    calls: list[int] = []

    def step(y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        calls.append(y.shape[0])
        return model.step(y, ctx)

    engine = Engine(model, step=step)
    ctx = model.encode(ReciprocalInput(x=[0.5]))
    engine.start()
    try:
        job = SolveJob(id="a", ctx=ctx, y0=model.init(ctx), max_iters=50, tol=1e-9)
        result = engine.submit(job).result(10)
    finally:
        engine.stop()
    assert result.status == "converged" and len(calls) == result.iterations


def test_a_model_named_by_compile_step_is_served_by_its_compiled_step() -> None:
    with make_client({"reciprocal": Reciprocal()}, compile_step=["reciprocal"]) as client:
        step = client.app.state.eq.served["reciprocal"].engine.batch.step  # type: ignore[attr-defined]
        assert step.compiled, step.error  # compiled at load, before any request
        body = {"model": "reciprocal", "input": {"x": [0.5, 1.5]}, "return": {"state": True}}
        got = client.post("/v1/solve", json=body).json()
    assert got["status"] == "converged"
    assert got["output"]["y"] == pytest.approx([2.0, 2 / 3], abs=1e-8)


def test_auto_compiles_only_the_models_that_declare_a_gain() -> None:
    with make_client({"reciprocal": Reciprocal()}, compile_step=["auto"]) as client:
        step = client.app.state.eq.served["reciprocal"].engine.batch.step  # type: ignore[attr-defined]
    assert not Reciprocal.compile_step and not hasattr(step, "compiled")
