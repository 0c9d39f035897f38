"""deq-mlp: the shipped weights are a contraction, the four steps batch exactly, E_t falls with t."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from eqserve.models.base import InputError
from eqserve.models.deq_mlp.model import DeqMLP
from eqserve.models.registry import load_model
from eqserve.models.shipped import WEIGHTS_DIR

WEIGHTS = WEIGHTS_DIR / "deq-mlp.safetensors"


@pytest.fixture(scope="module")
def model() -> DeqMLP:
    m = load_model("deq-mlp")
    assert isinstance(m, DeqMLP)
    return m


def _ctx(model: DeqMLP, x: list[float]) -> dict[str, torch.Tensor]:
    return model.encode(model.Input(x=x))


def test_shipped_w_is_a_contraction(model: DeqMLP) -> None:
    norm = torch.linalg.matrix_norm(model.W.detach().double(), ord=2).item()
    assert 0.5 < norm < 1.0


def test_shapes_and_meta(model: DeqMLP) -> None:
    meta = model.meta()
    ctx = _ctx(model, meta.example_input["x"])
    h = model.hidden
    assert meta.state_shape == [h] and model.state_shape(ctx) == (1024,)
    assert ctx["inj"].shape == (1, h)
    y0 = model.init(ctx)
    assert y0.shape == (1, h) and y0.dtype == torch.float32 and not y0.any()
    y1 = model.step(y0, ctx)
    assert y1.shape == (1, h) and y1.abs().max() < 1.0
    out = model.Output(**model.decode(y1, ctx))
    assert len(out.y) == len(meta.example_input["x"])


def test_collate_steps_each_row_as_alone(model: DeqMLP) -> None:
    xs = [[0.05, 0.3, 0.7, 1.0], [0.9, 0.1, 0.2, 0.4], [0.5, 0.5, 0.06, 0.8]]
    ctxs = [_ctx(model, x) for x in xs]
    gen = torch.Generator().manual_seed(0)
    ys = [torch.rand(1, model.hidden, generator=gen) * 2 - 1 for _ in xs]
    batch = model.collate(ctxs)
    assert batch["inj"].shape == (3, model.hidden)
    with torch.no_grad():
        stepped = model.step(torch.cat(ys), batch)
        for i, (y, ctx) in enumerate(zip(ys, ctxs, strict=True)):
            alone = model.step(y, ctx)
            torch.testing.assert_close(stepped[i : i + 1], alone, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(stepped[0], stepped[1])


@pytest.mark.parametrize("x", [[0.5, 0.5, 0.5], [0.5] * 5])
def test_wrong_length_input_is_refused(model: DeqMLP, x: list[float]) -> None:
    with pytest.raises(InputError) as err:
        _ctx(model, x)
    assert err.value.field == "input.x"


def test_schema_refuses_non_finite_and_extra_fields(model: DeqMLP) -> None:
    with pytest.raises(ValueError):
        model.Input(x=[0.5, float("nan"), 0.5, 0.5])
    with pytest.raises(ValueError):
        model.Input(x=[0.5] * 4, eta=1.0)


def test_error_falls_with_iterations(model: DeqMLP) -> None:
    report = model.evaluate([1, 2, 4, 8, 16, 32, 64])
    errors = report.error
    assert report.t == [1, 2, 4, 8, 16, 32, 64]
    for before, after in pairwise(errors):
        assert after <= before * 1.001, errors
    assert errors[-1] < errors[0] / 20, errors
    assert errors[-1] < 0.05
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.baseline is not None
    assert abs(report.baseline["params"] - report.params) <= 0.1 * report.params


def test_from_weights_refuses_non_contraction(tmp_path: Path) -> None:
    state = load_file(str(WEIGHTS))
    state["W"] = state["W"] / torch.linalg.matrix_norm(state["W"], ord=2) * 1.01
    save_file(state, str(tmp_path / "deq-mlp.safetensors"))
    with pytest.raises(ValueError, match="‖W‖₂"):
        DeqMLP.from_weights(tmp_path / "deq-mlp.safetensors")
