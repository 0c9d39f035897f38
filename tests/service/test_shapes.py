"""Shaped states: rows of different shapes share a batch and each iterates as it would alone."""

from __future__ import annotations

import base64
import json
import math
import time

import numpy as np
import pytest
import torch

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob
from tests.conftest import make_client
from tests.shaped_models import Grid

SHAPES = [(3, 3), (5, 4), (2, 6)]


def _job(model: Grid, shape: tuple[int, int], seed: int, m: int = 0, max_iters: int = 400) -> SolveJob:
    f = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ctx = model.encode(model.Input(f=f.tolist()))
    return SolveJob(
        id=f"r{seed}", ctx=ctx, y0=model.init(ctx), max_iters=max_iters, tol=1e-12, m=m, return_state=True
    )


def _alone(model: Grid, shape: tuple[int, int], seed: int, m: int) -> tuple[int, torch.Tensor]:
    engine = Engine(model)
    engine.start()
    try:
        r = engine.submit(_job(model, shape, seed, m)).result(timeout=60)
    finally:
        engine.stop()
    return r.iterations, torch.tensor(r.state)


@pytest.mark.parametrize("m", [0, 4], ids=["picard", "anderson"])
def test_rows_of_different_shapes_in_one_batch_each_iterate_as_alone(m: int) -> None:
    model = Grid()
    engine = Engine(model)
    futures = [engine.submit(_job(model, s, i, m)) for i, s in enumerate(SHAPES)]
    engine.start()  # all three are admitted into one batch of shape (5, 6)
    try:
        results = [f.result(timeout=60) for f in futures]
    finally:
        engine.stop()
    for i, (shape, r) in enumerate(zip(SHAPES, results, strict=True)):
        assert r.status == "converged"
        state = torch.tensor(r.state)
        assert state.shape == shape
        iterations, alone = _alone(model, shape, i, m)
        assert r.iterations == iterations
        torch.testing.assert_close(state, alone, rtol=0, atol=1e-12)


def test_a_larger_newcomer_relays_out_the_running_rows_and_their_history() -> None:
    """A row running with Anderson history when a larger row joins (the batch's shape grows) ends as
    it would have alone."""
    model = Grid(c=0.99)
    engine = Engine(model)
    engine.start()
    try:
        small = engine.submit(_job(model, (3, 3), 0, m=3, max_iters=3000))
        while engine.running < 1 and not small.done():
            time.sleep(0.001)
        large = engine.submit(_job(model, (6, 7), 1, m=3))
        got = [small.result(timeout=60), large.result(timeout=60)]
    finally:
        engine.stop()
    for r, (shape, seed) in zip(got, [((3, 3), 0), ((6, 7), 1)], strict=True):
        _, alone = _alone(model, shape, seed, 3)
        assert r.status == "converged"
        torch.testing.assert_close(torch.tensor(r.state), alone, rtol=0, atol=1e-9)


def test_state_round_trips_as_base64_and_as_nested_lists() -> None:
    with make_client({"grid": Grid()}) as client:
        f = [[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]
        body = {"model": "grid", "input": {"f": f}, "return": {"state": True, "encoding": "base64"}}
        first = client.post("/v1/solve", json=body).json()
        enc = first["state"]
        assert enc["encoding"] == "base64" and enc["dtype"] == "float64" and enc["shape"] == [2, 4]
        u = np.frombuffer(base64.b64decode(enc["data"]), "<f8").reshape(2, 4)
        np.testing.assert_allclose(u, first["output"]["u"], rtol=0, atol=0)
        warm = client.post("/v1/solve", json=body | {"warm_start": enc}).json()
        assert warm["status"] == "converged" and warm["iterations"] <= 2
        nested = client.post("/v1/solve", json=body | {"warm_start": u.tolist(), "return": {"state": True}})
        np.testing.assert_allclose(nested.json()["state"], u, rtol=0, atol=1e-10)
        flat = client.post("/v1/solve", json=body | {"warm_start": u.ravel().tolist()})
        assert flat.json()["iterations"] <= 2


@pytest.mark.parametrize(
    ("warm", "field"),
    [
        ([[0.0, 0.0]], "warm_start"),
        ([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, math.inf, 0.0]], "warm_start.1.2"),
        ({"encoding": "base64", "dtype": "float64", "shape": [4, 2], "data": ""}, "warm_start.shape"),
        ({"encoding": "base64", "dtype": "int8", "shape": [2, 4], "data": ""}, "warm_start.dtype"),
        ({"encoding": "base64", "dtype": "float32", "shape": [2, 4], "data": "AAAA"}, "warm_start.data"),
    ],
)
def test_a_warm_start_that_does_not_fit_is_refused_naming_the_field(warm: object, field: str) -> None:
    with make_client({"grid": Grid()}) as client:
        body = {"model": "grid", "input": {"f": [[1.0] * 4, [0.0] * 4]}, "warm_start": warm}
        raw = json.dumps(body)  # writes inf as Infinity, which the server's parser reads as a float
        r = client.post("/v1/solve", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field
