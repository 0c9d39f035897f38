"""The heat model directory served and checked as a user would: `eqserve serve examples/heat`, and a
copy of it outside the checkout served from its own folder as `eqserve serve ./heat`."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from eqserve.models.base import ImplicitModel
from eqserve.models.registry import load_model
from tests.examples.procs import EXAMPLES, copy_heat, eqserve, serving

pytestmark = pytest.mark.slow

OUTSIDE = "heat-outside"
"""The copy's served name: one server serves both, and two models cannot share a name."""


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/heat in a folder outside the checkout, renamed in its eqserve.toml."""
    home = tmp_path_factory.mktemp("user")
    assert not home.is_relative_to(EXAMPLES.parent)
    heat = copy_heat(home / "heat")
    toml = heat / "eqserve.toml"
    text = toml.read_text()
    assert 'name = "heat"' in text
    toml.write_text(text.replace('name = "heat"', f'name = "{OUTSIDE}"'))
    return heat


@pytest.fixture(scope="module")
def server(outside: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server, started from the copy's folder, for the checkout's directory and the copy."""
    log_dir = tmp_path_factory.mktemp("log")
    with serving(str(EXAMPLES / "heat"), "./heat", log_dir=log_dir, cwd=outside.parent) as url:
        yield url


def poisson(f: np.ndarray) -> np.ndarray:
    """The exact discrete solution of -Δ_h u = f on the unit square's n×n interior points (5-point
    stencil, u = 0 on the boundary), by a direct sparse solve: the fixed point the model must reach."""
    n = f.shape[0]
    one = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n))
    a = (sp.kron(one, sp.eye(n)) + sp.kron(sp.eye(n), one)) * (n + 1) ** 2
    return spla.spsolve(a.tocsc(), f.ravel()).reshape(n, n)


def source(n: int, seed: int) -> np.ndarray:
    """A source with a smooth part and noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, n + 2)[1:-1]
    return 3 * np.outer(np.sin(np.pi * x), np.sin(2 * np.pi * x)) + rng.normal(size=(n, n))


def solve(url: str, model: str, f: np.ndarray, **extra: object) -> dict:
    r = httpx.post(f"{url}/v1/solve", json={"model": model, "input": {"f": f.tolist()}, **extra}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("model", ["heat", OUTSIDE])
def test_two_grid_sizes_solve_to_the_discrete_solution(server: str, model: str) -> None:
    tol = httpx.get(f"{server}/v1/models/{model}").json()["defaults"]["budget"]["tol"]
    sources = [source(8, 1), source(13, 2)]
    with ThreadPoolExecutor(2) as pool:  # sent together, so the two shapes may share a padded batch
        answers = list(pool.map(lambda f: solve(server, model, f), sources))
    for f, body in zip(sources, answers, strict=True):
        assert body["status"] == "converged"
        assert body["residual"] <= tol
        u = np.array(body["output"]["u"])
        assert u.shape == f.shape
        ref = poisson(f)
        assert np.abs(u - ref).max() <= 1e-6 * np.abs(ref).max()


@pytest.mark.parametrize("model", ["heat", OUTSIDE])
def test_a_base64_state_comes_back_as_a_warm_start(server: str, model: str) -> None:
    f = source(10, 3)
    cold = solve(server, model, f, **{"return": {"state": True, "encoding": "base64"}})
    state = cold["state"]
    assert state["encoding"] == "base64" and state["shape"] == [10, 10] and state["dtype"] == "float64"
    y = np.frombuffer(base64.b64decode(state["data"]), dtype="<f8").reshape(state["shape"])
    assert np.array_equal(y, np.array(cold["output"]["u"]))

    warm = solve(server, model, f, warm_start=state)
    assert warm["status"] == "converged"
    assert warm["iterations"] <= 2 < cold["iterations"]
    assert np.abs(np.array(warm["output"]["u"]) - y).max() <= 1e-8


def test_a_ragged_source_is_the_requests_fault(server: str) -> None:
    r = httpx.post(f"{server}/v1/solve", json={"model": "heat", "input": {"f": [[1.0, 2.0], [3.0]]}})
    assert r.status_code == 422
    assert "square" in r.json()["error"]["message"]
    assert solve(server, "heat", source(4, 4))["status"] == "converged"


@pytest.mark.parametrize("where", ["checkout", "outside"])
def test_check_passes(where: str, outside: Path) -> None:
    if where == "checkout":
        out = eqserve("check", "examples/heat", cwd=EXAMPLES.parent)
    else:
        out = eqserve("check", "./heat", cwd=outside.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "contract holds" in out.stdout
    assert "batch invariance" in out.stdout


def picard_steps(model: ImplicitModel, f: np.ndarray, tol: float = 1e-9, cap: int = 20_000) -> int:
    """Plain Picard steps from u = 0 until ‖G(u) − u‖ ≤ tol."""
    ctx = model.encode(model.Input.model_validate({"f": f.tolist()}))
    u = model.init(ctx)
    with torch.no_grad():
        for t in range(1, cap + 1):
            g = model.step(u, ctx)
            if float((g - u).norm()) <= tol:
                return t
            u = g
    return cap


def test_the_committed_weights_are_trained() -> None:
    """The shipped taps reach the fixed point in far fewer steps than the untrained (Jacobi) ones."""
    learned = load_model(str(EXAMPLES / "heat"))
    jacobi = type(learned)().to(learned.dtype())
    f = source(12, 5)
    assert 4 * picard_steps(learned, f) < picard_steps(jacobi, f)
