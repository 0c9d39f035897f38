"""kernels.compiled: a model's step compiled at load, taken for warmed batches, never compiled on a call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch

from eqserve.kernels import compiled
from eqserve.kernels.compiled import CompiledStep, batch_of, example_row
from eqserve.models.registry import load_model


class Counting(CompiledStep):
    """Counts the calls that run a compiled graph."""

    runs = 0

    def _inductor(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        fn = super()._inductor(gm, example_inputs)

        def counted(*args: Any) -> Any:
            self.runs += 1
            return fn(*args)

        return counted


@pytest.fixture(scope="module")
def warmed() -> Counting:
    model = load_model("reciprocal")
    step = Counting(model)
    y, ctx = example_row(model)
    step.warm([batch_of(model, y, ctx, rows) for rows in (1, 2, 16)])
    assert step.error is None and step.compiled
    return step


@pytest.mark.parametrize("rows", [1, 2, 7, 16, 40])
def test_warmed_graphs_serve_every_batch_size_without_compiling(warmed: Counting, rows: int) -> None:
    """1 has its own graph; sizes from 2 on share the symbolic one, 7 and 40 included."""
    model = warmed.model
    y, ctx = example_row(model)
    graphs, runs = warmed.graphs, warmed.runs
    with torch.inference_mode():
        yb, cb = batch_of(model, y + torch.rand(rows, y.shape[1], dtype=y.dtype), ctx, rows)
        got = warmed(yb, cb)
        want = model.step(yb, cb)
    torch.testing.assert_close(got, want)
    assert warmed.graphs == graphs
    assert warmed.runs == runs + 1


def test_a_batch_no_graph_covers_runs_eager(warmed: Counting) -> None:
    """Outside inference mode (other guards) the call runs the eager step and compiles nothing."""
    model = warmed.model
    y, ctx = example_row(model)
    graphs, runs = warmed.graphs, warmed.runs
    yb, cb = batch_of(model, y, ctx, 3)
    torch.testing.assert_close(warmed(yb, cb), model.step(yb, cb))
    assert (warmed.graphs, warmed.runs) == (graphs, runs)


def test_failing_compile_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    def broken(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr("torch._inductor.compile_fx.compile_fx", broken)
    torch._dynamo.reset()
    model = load_model("reciprocal")
    y, ctx = example_row(model)
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        step = compiled.compiled_step(model, 4)
    assert not step.compiled and "no C++ compiler" in (step.error or "")
    assert "stays eager" in caplog.text
    with torch.inference_mode():
        yb, cb = batch_of(model, y, ctx, 4)
        assert torch.equal(step(yb, cb), model.step(yb, cb))


def test_rows_of_two_state_sizes_warm_a_graph_for_a_third() -> None:
    model = load_model("reciprocal")

    def row(n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inp = {"x": torch.linspace(0.2, 1.0, n).tolist(), "eta": 0.5}
        ctx = model.encode(model.Input.model_validate(inp))
        return model.init(ctx), ctx

    torch._dynamo.reset()
    step = Counting(model)
    step.warm([batch_of(model, *row(n), rows) for n in (4, 6) for rows in (2, 8)])
    graphs, runs = step.graphs, step.runs
    with torch.inference_mode():
        y, ctx = batch_of(model, *row(9), 5)
        torch.testing.assert_close(step(y, ctx), model.step(y, ctx))
    assert (step.graphs, step.runs) == (graphs, runs + 1)
