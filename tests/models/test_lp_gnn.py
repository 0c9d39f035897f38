"""lp-gnn: LP generation, HiGHS, parameter counts, graph batching, MPS, bad inputs, the contraction,
convergence and error of the shipped weights."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import highspy
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from eqserve.models.base import InputError
from eqserve.models.lp_gnn.data import LP, make_dataset, random_lp, solve
from eqserve.models.lp_gnn.graph import lp_graph, union
from eqserve.models.lp_gnn.inputs import LpInput, from_lp, to_lp
from eqserve.models.lp_gnn.model import LpGnn
from eqserve.models.lp_gnn.mps import read_mps
from eqserve.models.lp_gnn.networks import MU, ExplicitGNN, ImplicitGNN, param_count, per_lp_norm
from eqserve.models.registry import load_model
from tests.conftest import make_client

MPS = """NAME          SMALL
ROWS
 N  COST
 L  CAP
 E  BALANCE
 G  FLOOR
COLUMNS
    X         COST         1.0   CAP          1.0
    X         BALANCE      1.0
    Y         COST         2.0   CAP          1.0
    Y         FLOOR        1.0
    Z         COST        -1.0   BALANCE      1.0
RHS
    RHS       CAP          4.0   BALANCE      2.0
    RHS       FLOOR       -1.0
BOUNDS
 UP BND       X            4.0
 LO BND       Y           -1.0
 UP BND       Y            1.0
 UP BND       Z            5.0
ENDATA
"""


@pytest.fixture(scope="module")
def model() -> LpGnn:
    return load_model("lp-gnn")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def client(model: LpGnn) -> Iterator[TestClient]:
    with make_client({"lp-gnn": model}, max_iters_cap=1000, timeout_cap_s=60) as c:
        yield c


def as_input(lp: LP, **extra: object) -> dict:
    """The JSON input of an LP with `extra` fields."""
    return from_lp(lp) | extra


def test_generator_is_deterministic_and_its_lps_feasible() -> None:
    lps, sols = make_dataset(6, seed=11)
    again, sols_again = make_dataset(6, seed=11)
    other, _ = make_dataset(6, seed=12)
    for lp, y, lp2, y2 in zip(lps, sols, again, sols_again, strict=True):
        for name in ("rows", "cols", "vals", "b", "eq", "c", "l", "u"):
            np.testing.assert_array_equal(getattr(lp, name), getattr(lp2, name))
        np.testing.assert_array_equal(y, y2)
        assert (lp.m, lp.n, len(lp.vals)) == (10, 50, 100)
        assert len(set(zip(lp.rows, lp.cols, strict=True))) == 100
        ay = np.zeros(lp.m)
        np.add.at(ay, lp.rows, lp.vals * y[lp.cols])
        assert np.all(ay[~lp.eq] <= lp.b[~lp.eq] + 1e-7)
        np.testing.assert_allclose(ay[lp.eq], lp.b[lp.eq], atol=1e-7)
        assert np.all((lp.l - 1e-9 <= y) & (y <= lp.u + 1e-9))
    assert not np.array_equal(lps[0].vals, other[0].vals)


def test_highs_solves_a_hand_made_lp() -> None:
    # min −y₀ − 2y₁  s.t.  y₀ + y₁ ≤ 1.5,  y₀ − y₁ = 0,  0 ≤ y ≤ 1  →  y = (0.75, 0.75)
    lp = LP(
        np.array([0, 0, 1, 1]),
        np.array([0, 1, 0, 1]),
        np.array([1.0, 1.0, 1.0, -1.0]),
        np.array([1.5, 0.0]),
        np.array([False, True]),
        np.array([-1.0, -2.0]),
        np.zeros(2),
        np.ones(2),
    )
    sol = solve(lp)
    assert sol.status == "optimal"
    np.testing.assert_allclose(sol.y, [0.75, 0.75], atol=1e-9)
    assert sol.objective == pytest.approx(-2.25)
    infeasible = LP(lp.rows, lp.cols, lp.vals, np.array([1.5, 5.0]), lp.eq, lp.c, lp.l, lp.u)
    assert solve(infeasible).status == "infeasible"


@pytest.mark.parametrize(
    ("d", "explicit", "implicit"), [(4, 580, 722), (8, 2088, 2350), (16, 7888, 8390), (32, 30624, 31606)]
)
def test_parameter_counts_match_the_paper(d: int, explicit: int, implicit: int) -> None:
    assert param_count(ExplicitGNN(d)) == explicit
    assert param_count(ImplicitGNN(d)) == implicit


def test_a_batch_of_lps_of_different_sizes_steps_like_each_alone(model: LpGnn) -> None:
    rng = np.random.default_rng(5)
    lps = [random_lp(rng, m, n, nnz) for m, n, nnz in [(10, 50, 100), (3, 7, 9), (1, 1, 1), (25, 80, 200)]]
    ctxs = [model.encode(LpInput(**as_input(lp))) for lp in lps]
    rows = [torch.randn(1, lp.n) for lp in lps]
    width = max(lp.n for lp in lps)
    y = torch.zeros(len(lps), width)
    for i, r in enumerate(rows):
        y[i, : r.shape[1]] = r[0]
    with torch.no_grad():
        batched = model.step(y, model.collate(ctxs))
        for i, (ctx, r) in enumerate(zip(ctxs, rows, strict=True)):
            alone = model.step(r, model.collate([ctx]))
            torch.testing.assert_close(batched[i : i + 1, : r.shape[1]], alone, rtol=1e-5, atol=1e-5)
            assert torch.all(batched[i, r.shape[1] :] == 0)
        explicit = ExplicitGNN(8).eval()
        graphs = [lp_graph(lp) for lp in lps]
        together = explicit(union(graphs))
        torch.testing.assert_close(
            together, torch.cat([explicit(union([g])) for g in graphs]), rtol=1e-5, atol=1e-6
        )


def test_mps_text_is_read_by_highs() -> None:
    lp = read_mps(MPS)
    # CAP: x + y ≤ 4;  BALANCE: x + z = 2;  FLOOR: y ≥ −1, i.e. −y ≤ 1
    a = np.zeros((lp.m, lp.n))
    a[lp.rows, lp.cols] = lp.vals
    np.testing.assert_array_equal(a, [[1, 1, 0], [1, 0, 1], [0, -1, 0]])
    np.testing.assert_array_equal(lp.b, [4, 2, 1])
    np.testing.assert_array_equal(lp.eq, [False, True, False])
    np.testing.assert_array_equal(lp.c, [1, 2, -1])
    np.testing.assert_array_equal(lp.l, [0, -1, 0])
    np.testing.assert_array_equal(lp.u, [4, 1, 5])


def test_mps_lp_has_the_solution_highs_finds_for_the_file(tmp_path: Path) -> None:
    path = tmp_path / "small.mps"
    path.write_text(MPS)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.readModel(str(path))
    h.run()
    np.testing.assert_allclose(solve(read_mps(MPS)).y, list(h.getSolution().col_value), atol=1e-9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not an mps file\n", "cannot read"),
        (MPS.replace(" UP BND       Z            5.0\n", ""), "finite"),
        (MPS.replace(" UP BND       X            4.0", " UP BND       X           -4.0"), "above its upper"),
    ],
)
def test_mps_refusals_name_the_field(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        to_lp(LpInput(mps=text))
    assert err.value.field == "input.mps"


SMALL = {
    "A": [[1.0, 1.0, 0.0], [1.0, 0.0, -1.0]],
    "b": [4.0, 0.5],
    "c": [0.01, -0.02, 0.005],
    "constraint_types": ["<=", "="],
    "l": [-1.0, -2.0, 0.0],
    "u": [3.0, 2.0, 1.0],
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"A": [[1.0, 1.0], [1.0, 0.0, -1.0]]}, "input.A.0"),
        ({"A": {"shape": [2, 4], "indices": [[0, 0]], "values": [1.0]}}, "input.A.shape"),
        ({"A": {"shape": [2, 3], "indices": [[0, 0], [1, 2]], "values": [1.0]}}, "input.A.values"),
        ({"A": {"shape": [2, 3], "indices": [[0, 0], [2, 0]], "values": [1.0, 2.0]}}, "input.A.indices.1"),
        ({"A": {"shape": [2, 3], "indices": [[0, 0], [0, 0]], "values": [1.0, 2.0]}}, "input.A.indices.1"),
        ({"A": [[1.0, math.inf, 0.0], [1.0, 0.0, -1.0]]}, "input.A.0.1"),
        ({"A": {"shape": [2, 3], "indices": [[0, 0]], "values": [math.nan]}}, "input.A.values.0"),
        ({"b": [4.0]}, "input.b"),
        ({"b": [4.0, math.nan]}, "input.b.1"),
        ({"c": [0.01, -0.02]}, "input.A.0"),
        ({"c": [0.01, math.inf, 0.005]}, "input.c.1"),
        ({"constraint_types": ["<="]}, "input.constraint_types"),
        ({"constraint_types": ["<=", ">="]}, "input.constraint_types.1"),
        ({"l": [-1.0, -2.0]}, "input.l"),
        ({"u": [3.0, 2.0, 1.0, 0.0]}, "input.u"),
        ({"l": [-1.0, 2.5, 0.0]}, "input.l.1"),
        ({"u": [3.0, 2.0, -math.inf]}, "input.u.2"),
        ({"b": None}, "input.b"),
        ({"mps": MPS}, "input.A"),
        ({"mps": "garbage"} | dict.fromkeys(SMALL), "input.mps"),
        ({"colour": 1}, "input.colour"),
    ],
)
def test_bad_inputs_get_422_naming_the_field(client: TestClient, change: dict, field: str) -> None:
    inp = {k: v for k, v in (SMALL | change).items() if v is not None}
    body = json.dumps({"model": "lp-gnn", "input": inp})  # NaN and Infinity as Python's json writes them
    r = client.post("/v1/solve", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_lps_of_different_sizes_and_mps_solve_together_with_reference(client: TestClient) -> None:
    (lp,), (y_star,) = make_dataset(1, seed=9)
    bodies = [as_input(lp, reference=True), SMALL | {"reference": True}, {"mps": MPS, "reference": True}]
    with ThreadPoolExecutor(len(bodies)) as pool:  # concurrent, so that they may share the engine's batch
        results = list(
            pool.map(lambda b: client.post("/v1/solve", json={"model": "lp-gnn", "input": b}).json(), bodies)
        )
    for body, res in zip(bodies, results, strict=True):
        out = res["output"]
        ref = out["reference"]
        n = len(body["c"]) if "c" in body else 3
        assert len(out["y"]) == len(ref["y"]) == n
        y, exact = np.array(out["y"]), np.array(ref["y"])
        assert ref["error"] == pytest.approx(np.linalg.norm(y - exact) / (np.linalg.norm(exact) + 1))
    assert results[0]["output"]["reference"]["y"] == pytest.approx(y_star.tolist(), abs=1e-7)
    assert results[2]["output"]["reference"]["y"] == pytest.approx([0.0, -1.0, 2.0], abs=1e-9)
    assert results[2]["output"]["reference"]["objective"] == pytest.approx(-4.0)


def test_infeasible_reference_is_reported(client: TestClient) -> None:
    body = SMALL | {"A": [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], "b": [1.0, 6.0], "constraint_types": ["<=", "="]}
    out = client.post("/v1/solve", json={"model": "lp-gnn", "input": body | {"reference": True}}).json()[
        "output"
    ]
    assert out["reference"] == {"status": "infeasible", "y": None, "objective": None, "error": None}
    assert len(out["y"]) == 3


def fresh_lps(count: int, seed: int) -> list[LP]:
    """Random LPs of the training distribution, solvable or not (a user does not know beforehand)."""
    rng = np.random.default_rng(seed)
    return [random_lp(rng) for _ in range(count)]


def lipschitz_ratios(model: LpGnn, lps: list[LP], pairs: int, spread: float, seed: int) -> torch.Tensor:
    """‖G(y) − G(y')‖ / ‖y − y'‖ per LP for `pairs` random pairs (y, y') of per-entry size ~`spread`
    in the LPs' own units, all LPs batched."""
    ctx = model.collate([model.encode(LpInput(**as_input(lp))) for lp in lps])
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for _ in range(pairs):
            y = spread * torch.randn(len(lps), lps[0].n, generator=gen, dtype=torch.float64)
            step = torch.randn(y.shape, generator=gen, dtype=torch.float64) * torch.rand(len(lps), 1)
            y2 = y + spread * step
            diff = model.step(y, ctx) - model.step(y2, ctx)
            out.append(diff.norm(dim=1) / (y - y2).norm(dim=1))
    return torch.cat(out)


def test_gain_brings_the_measured_norm_to_mu_whatever_the_weights() -> None:
    # Random weights scaled up so that G, ungained, expands; calibrating on the measured ∂G/∂z brings
    # the norm at those points to about μ (the points G sees move with the gain), and the secant ratios
    # between them below 1.
    torch.manual_seed(3)
    net = ImplicitGNN(8).double()
    lps = fresh_lps(20, seed=21)
    g = union([lp_graph(lp, torch.float64) for lp in lps])
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(5.0)
        emb = net.embed(g)
        z = torch.randn(g.var.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        before = net.jacobian_norms(g, emb, z, iters=20)
        for _ in range(5):
            net.calibrate(net.jacobian_norms(g, emb, z, iters=20), decay=0.0)
        after = net.jacobian_norms(g, emb, z, iters=20)
        secant = per_lp_norm(net.step(g, emb, z) - net.step(g, emb, 1.01 * z), g) / per_lp_norm(0.01 * z, g)
    assert before.max() > 1
    assert MU / 2 < after.max() <= MU * 1.05
    assert secant.max() < 1


def test_shipped_g_is_a_contraction(model: LpGnn) -> None:
    lps = fresh_lps(40, seed=22)
    double = LpGnn.from_weights(model.weights_dir / "lp-gnn.safetensors").double()
    for spread in (0.1, 1.0, 10.0):
        assert lipschitz_ratios(double, lps, pairs=3, spread=spread, seed=1).max() < 1


def picard(model: LpGnn, lps: list[LP], max_iters: int, tol: float) -> torch.Tensor:
    """Plain Picard from y0 = 0 on all LPs batched; each LP's first t with ‖G(y) − y‖ / ‖G(y)‖ ≤ tol
    (the server's `rel` stop), or max_iters + 1."""
    ctx = model.collate([model.encode(LpInput(**as_input(lp))) for lp in lps])
    y = torch.zeros(len(lps), lps[0].n)
    first = torch.full((len(lps),), max_iters + 1)
    with torch.no_grad():
        for t in range(1, max_iters + 1):
            gy = model.step(y, ctx)
            rel = (gy - y).norm(dim=1) / (gy.norm(dim=1) + 1e-12)
            first = torch.where((rel <= tol) & (first > max_iters), t, first)
            y = gy
    return first


def test_picard_with_the_defaults_converges_on_fresh_lps(model: LpGnn) -> None:
    d = model.defaults
    assert d["stop_mode"] == "rel" and d["tol"] <= 1e-4 and d["max_iters"] <= 100
    first = picard(model, fresh_lps(200, seed=23), d["max_iters"], d["tol"])
    assert (first <= d["max_iters"]).float().mean() >= 0.95


def test_error_falls_with_t_and_settles_at_the_fixed_point(model: LpGnn) -> None:
    ts = [1, 2, 4, 8, 16, 32, 64]
    err = model.evaluate(ts).error
    for earlier, later in itertools.pairwise(err):
        assert later <= earlier + 0.005
    assert err[-1] <= min(err) + 0.005
    assert abs(err[-1] - err[-2]) < 1e-4


def test_the_fixed_point_is_what_the_trainer_measures(model: LpGnn) -> None:
    lps, _ = model._heldout
    g = union([lp_graph(lp) for lp in lps[:50]])
    with torch.no_grad():
        z, iters = model.net.fixed_point(g)
        residual = model.net(g, z) - z
    assert (iters <= 100).all()
    assert (per_lp_norm(residual, g) <= 1e-3 * per_lp_norm(z, g)).all()


def test_shipped_model_beats_its_explicit_twin(model: LpGnn) -> None:
    report = model.evaluate([64])
    assert report.params == param_count(model.net)
    assert report.baseline is not None and report.baseline["params"] <= report.params
    assert report.error[0] < report.baseline["error"]
