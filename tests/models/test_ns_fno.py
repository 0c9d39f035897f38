"""ns-fno: the solver's steady states, the spectral layer, the contraction guard, E_t, mixed sizes,
serving."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from eqserve.models.base import InputError, run_iterations
from eqserve.models.check import check_model
from eqserve.models.fitting import relative_error
from eqserve.models.ns_fno.data import AMPLITUDE
from eqserve.models.ns_fno.layers import SpectralConv2d
from eqserve.models.ns_fno.model import NsFno, NsFnoInput
from eqserve.models.ns_fno.solver import _linear, random_forcing, residual, steady_state, velocity
from eqserve.models.registry import load_model
from tests.conftest import make_client


@pytest.fixture(scope="module")
def model() -> NsFno:
    return load_model("ns-fno")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def client(model: NsFno) -> Iterator[TestClient]:
    with make_client({"ns-fno": model}, max_iters_cap=1000, timeout_cap_s=120) as c:
        yield c


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_solver_steady_states_satisfy_the_discrete_equations() -> None:
    f = random_forcing(3, 32, seed=5, amplitude=AMPLITUDE)
    w, _ = steady_state(f)
    res = residual(w, f).flatten(1).norm(dim=1) / f.flatten(1).norm(dim=1)
    assert res.max().item() < 1e-8
    # the nonlinear term matters: the linear response (−νΔ + α)⁻¹ f is no steady state
    linear = torch.fft.irfft2(torch.fft.rfft2(f) / _linear(32, torch.float64), s=(32, 32))
    assert (residual(linear, f).flatten(1).norm(dim=1) / f.flatten(1).norm(dim=1)).min().item() > 0.05


def test_velocity_is_divergence_free_with_the_vorticity_as_its_curl() -> None:
    w = random_forcing(2, 32, seed=1, amplitude=(1.0, 1.0))
    u = velocity(w)
    k = torch.fft.fftfreq(32, 1 / 32, dtype=torch.float64)
    dx = lambda a: torch.fft.ifft(1j * k.view(-1, 1) * torch.fft.fft(a, dim=-2), dim=-2).real  # noqa: E731
    dy = lambda a: torch.fft.ifft(1j * k * torch.fft.fft(a, dim=-1), dim=-1).real  # noqa: E731
    assert (dx(u[:, 0]) + dy(u[:, 1])).abs().max().item() < 1e-10
    assert _rel(dx(u[:, 1]) - dy(u[:, 0]), w) < 1e-10  # forcings have zero mean, so ω does too


@pytest.mark.parametrize(("kx", "ky", "n"), [(1, 2, 16), (-3, 1, 32), (5, 7, 32), (-8, 3, 64)])
def test_spectral_conv_on_a_fourier_mode(kx: int, ky: int, n: int) -> None:
    """A kept mode cos(k·x + φ) in channel i leaves channel o as |R| cos(k·x + φ + arg R), R = R_k[o, i]."""
    torch.manual_seed(0)
    conv = SpectralConv2d(2, 3, modes=8).double()
    x = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    phase = kx * x.view(-1, 1) + ky * x.view(1, -1) + 0.3
    z = torch.zeros(1, 2, n, n, dtype=torch.float64)
    z[0, 1] = torch.cos(phase)
    r = conv.matrices()[kx if kx >= 0 else 2 * 8 + kx, ky, :, 1].detach()
    want = r.abs().view(3, 1, 1) * torch.cos(phase + r.angle().view(3, 1, 1))
    assert torch.allclose(conv(z)[0], want, atol=1e-12)


def test_spectral_conv_drops_the_modes_it_does_not_keep() -> None:
    conv = SpectralConv2d(1, 1, modes=4).double()
    x = torch.arange(32, dtype=torch.float64) * (2 * math.pi / 32)
    z = torch.cos(5 * x.view(-1, 1) + 2 * x.view(1, -1)).view(1, 1, 32, 32)
    assert conv(z).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="below"):
        conv(torch.zeros(1, 1, 6, 6, dtype=torch.float64))


def _linear_gain(model: NsFno, n: int) -> float:
    """max ‖(K + W) z‖ / ‖z‖ on an n×n grid by power iteration on (K + W)ᵀ(K + W) (adjoint by autograd)."""
    block = model.block
    lin = lambda z: block.spectral(z) + torch.nn.functional.conv2d(z, block.pointwise.weight)  # noqa: E731
    z = torch.randn(1, model.channels, n, n, generator=torch.Generator().manual_seed(3))
    for _ in range(60):
        z = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(lin(z), z, lin(z).detach())
        z = grad / grad.norm()
    with torch.no_grad():
        return (lin(z).norm() / z.norm()).item()


def test_contraction_guard_bounds_the_measured_lipschitz_constant(model: NsFno) -> None:
    bound = model.contraction_bound()
    assert bound < 1
    for n in (32, 64):
        gain = _linear_gain(model, n)
        assert 0.9 * bound < gain <= bound * (1 + 1e-4)  # the per-mode bound is tight, and holds
    f = model._heldout["f32"][:4]
    ctx = {"inj": model.lift(20 * f.unsqueeze(1)).detach(), "grid": torch.full((4,), 32)}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for spread in (1.0, 1e-3):
            y1 = torch.randn(4, model.channels, 32, 32, generator=gen)
            y2 = y1 + spread * torch.randn(4, model.channels, 32, 32, generator=gen)
            moved = (model.step(y1, ctx) - model.step(y2, ctx)).flatten(1).norm(dim=1)
            ratio = moved / (y1 - y2).flatten(1).norm(dim=1)
            assert ratio.max().item() < 1


def test_checkpoint_without_the_guard_is_refused(model: NsFno, tmp_path: Path) -> None:
    state = load_file(str(model.weights_dir / "ns-fno.safetensors"))
    state["block.pointwise.weight"] = state["block.pointwise.weight"] * 2 / model.contraction_bound()
    save_file(state, str(tmp_path / "ns-fno.safetensors"))
    with pytest.raises(ValueError, match="not be a contraction"):
        NsFno.from_weights(tmp_path / "ns-fno.safetensors")


def test_error_falls_with_iterations(model: NsFno) -> None:
    """E_t falls until the iterate is near the fixed point (t ≈ 8), stays within 1 % of the fixed point's
    error from there (the last steps may move it either way), and the fixed point is reached by t = 16."""
    report = model.evaluate([1, 2, 4, 8, 16, 64])
    assert all(a > b for a, b in zip(report.error[:4], report.error[1:4], strict=False)), report.error
    assert all(abs(e - report.error[-1]) < 1e-2 * report.error[-1] for e in report.error[3:]), report.error
    assert abs(report.error[-1] - report.error[4]) < 1e-3 * report.error[4]
    assert report.error[-1] < 0.7 * report.error[0]
    assert 0.9 < report.baseline["params"] / report.params < 1.1


def test_a_row_in_a_mixed_size_batch_iterates_as_alone(model: NsFno) -> None:
    forcings = [model._heldout["f32"][0], model._heldout["f64"][1]]
    ctxs = [model.encode(NsFnoInput(forcing=f.tolist())) for f in forcings]
    batch = model.collate(ctxs)
    y = torch.zeros(2, model.channels, 64, 64)
    alone = [model.init(c) for c in ctxs]
    with torch.no_grad():
        for _ in range(5):
            y = model.step(y, batch)
            alone = [model.step(a, c) for a, c in zip(alone, ctxs, strict=True)]
    assert torch.allclose(y[0, :, :32, :32], alone[0][0], atol=1e-6)
    assert y[0, :, 32:].abs().max().item() == 0 and y[0, :, :, 32:].abs().max().item() == 0
    assert torch.allclose(y[1], alone[1][0], atol=1e-6)


def test_check_model_passes(model: NsFno) -> None:
    report = check_model(model)
    assert report.ok, report.render()


@pytest.mark.parametrize("grid", [32, 64])
def test_solve_serves_the_steady_vorticity(client: TestClient, model: NsFno, grid: int) -> None:
    f, w = model._heldout[f"f{grid}"][2], model._heldout[f"w{grid}"][2]
    body = {"model": "ns-fno", "input": {"forcing": f.tolist()}, "budget": {"max_iters": 300, "tol": 1e-5}}
    r = client.post("/v1/solve", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "converged"
    vort = torch.tensor(out["output"]["vorticity"])
    assert vort.shape == (grid, grid) and len(out["output"]["velocity"]) == 2
    ctx = model.encode(NsFnoInput(forcing=f.tolist()))
    offline = model.vorticity(run_iterations(model, ctx, model.init(ctx), [64])[64])
    assert _rel(vort, offline[0].detach()) < 1e-3  # the served answer is the model's fixed point
    assert relative_error(vort.unsqueeze(0), w.unsqueeze(0)).item() < 0.6  # and near the solver's
    raw = f.numpy().astype("<f4").tobytes()
    data = base64.b64encode(raw).decode()
    encoded = {"encoding": "base64", "dtype": "float32", "shape": [grid, grid], "data": data}
    again = client.post("/v1/solve", json=body | {"input": {"forcing": encoded}}).json()
    assert np.allclose(again["output"]["vorticity"], out["output"]["vorticity"], atol=1e-5)


@pytest.mark.parametrize(
    ("forcing", "field"),
    [
        ([[0.0] * 32] * 31, "input.forcing"),
        ([[0.0] * 8] * 8, "input.forcing"),
        ({"encoding": "base64", "dtype": "float32", "shape": [2, 2], "data": "AAAA"}, "input.forcing.data"),
        ({"encoding": "base64", "dtype": "int8", "shape": [16, 16], "data": ""}, "input.forcing.dtype"),
    ],
)
def test_bad_forcings_are_refused(model: NsFno, forcing: object, field: str) -> None:
    with pytest.raises(InputError) as exc:
        model.encode(NsFnoInput.model_validate({"forcing": forcing}))
    assert exc.value.field == field


def test_v2_infer_takes_the_forcing_as_one_tensor(client: TestClient, model: NsFno) -> None:
    f = model._heldout["f32"][3]
    tensor = {"name": "forcing", "shape": [32, 32], "datatype": "FP32", "data": f.flatten().tolist()}
    r = client.post("/v2/models/ns-fno/infer", json={"inputs": [tensor]})
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["vorticity"]["shape"] == [32, 32] and out["velocity"]["shape"] == [2, 32, 32]
