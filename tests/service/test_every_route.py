"""Every route answers every built-in model with a 2xx or a clear 4xx, never a 5xx: a model the v2
protocol cannot carry (lp-gnn's `A` is dense rows or a sparse object) says so, on v1 it solves; a
looped LM completes on /v1/completions and says so on the routes that solve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from eqserve.models.registry import load_model, names
from tests.conftest import make_client

BUDGET = {"max_iters": 5}
"""Enough to exercise a solve; the answers' values are other tests' business."""


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with make_client({name: load_model(name) for name in names()}) as c:
        yield c


def example(client: TestClient, model: str) -> dict[str, Any]:
    """The model's example input, as its listing gives it."""
    return client.get(f"/v1/models/{model}").json()["example_input"]


def shape_and_flat(value: Any) -> tuple[list[int], list[Any]]:
    """A JSON value's tensor shape and row-major elements."""
    if not isinstance(value, list):
        return [], [value]
    parts = [shape_and_flat(v) for v in value]
    return [len(value), *(parts[0][0] if parts else [])], [x for _, flat in parts for x in flat]


def v2_inputs(client: TestClient, model: str) -> list[dict[str, Any]]:
    """The example input as the v2 tensors the model's metadata names (none where it has no v2 form)."""
    meta = client.get(f"/v2/models/{model}")
    if meta.status_code != 200:
        return []
    values = example(client, model)
    tensors = []
    for spec in meta.json()["inputs"]:
        if spec["name"] in values:
            shape, flat = shape_and_flat(values[spec["name"]])
            tensors.append(
                {"name": spec["name"], "shape": shape or [1], "datatype": spec["datatype"], "data": flat}
            )
    return tensors


def answers(client: TestClient, model: str) -> dict[str, httpx.Response]:
    """Every HTTP route's answer for `model`, by route."""
    solve = {"model": model, "input": example(client, model), "budget": BUDGET}
    infer = {"inputs": v2_inputs(client, model), "parameters": BUDGET}
    complete = {"model": model, "prompt": (example(client, model) or {}).get("prompt", "1"), "max_tokens": 2}
    return {
        "POST /v1/completions": client.post("/v1/completions", json=complete),
        "POST /v1/completions stream": client.post("/v1/completions", json=complete | {"stream": True}),
        "GET /v1/models": client.get("/v1/models"),
        "GET /v1/models/{name}": client.get(f"/v1/models/{model}"),
        "POST /v1/solve": client.post("/v1/solve", json=solve),
        "POST /v1/solve stream": client.post("/v1/solve", json=solve | {"stream": True}),
        "GET /v2": client.get("/v2"),
        "GET /v2/health/ready": client.get("/v2/health/ready"),
        "GET /v2/models/{name}": client.get(f"/v2/models/{model}"),
        "GET /v2/models/{name}/ready": client.get(f"/v2/models/{model}/ready"),
        "POST /v2/models/{name}/infer": client.post(f"/v2/models/{model}/infer", json=infer),
        "POST /v2/models/{name}/infer binary out": client.post(
            f"/v2/models/{model}/infer", json=infer | {"parameters": BUDGET | {"binary_data_output": True}}
        ),
    }


@pytest.mark.parametrize("model", names())
def test_every_route_answers_every_built_in_model_without_a_5xx(client: TestClient, model: str) -> None:
    routes = answers(client, model)
    for route, r in routes.items():
        assert r.status_code < 500, f"{route} for {model}: {r.status_code} {r.text}"
        if r.status_code >= 400:
            error = r.json()["error"]
            message = error if route.split()[1].startswith("/v2") else error["message"]
            assert isinstance(message, str) and message, f"{route} for {model}: {r.text}"
    looped = client.get(f"/v1/models/{model}").json()["kind"] == "looped-lm"
    if looped:
        assert routes["POST /v1/completions"].status_code == 200
        with client.websocket_connect("/v1/completions/stream") as ws:
            ws.send_json({"model": model, "prompt": example(client, model)["prompt"], "max_tokens": 2})
            while (event := ws.receive_json())["type"] == "token":
                pass
    else:
        with client.websocket_connect("/v1/solve/stream") as ws:
            ws.send_json({"model": model, "input": example(client, model), "budget": BUDGET})
            while (event := ws.receive_json())["type"] == "iterate":
                pass
    assert event["type"] == "result", json.dumps(event)


def test_a_model_without_a_v2_form_says_so() -> None:
    """lp-gnn's input has no tensor form: v2 metadata is 404 and inference 400, each saying why and
    where to go instead, while /v1/solve solves it."""
    with make_client({"lp-gnn": load_model("lp-gnn")}) as client:
        meta = client.get("/v2/models/lp-gnn")
        infer = client.post("/v2/models/lp-gnn/infer", json={"inputs": []})
        assert (meta.status_code, infer.status_code) == (404, 400)
        for r in (meta, infer):
            assert "no v2 tensor form (LpInput.A" in r.json()["error"] and "/v1/solve" in r.json()["error"]
        assert client.get("/v2/models/lp-gnn/ready").json() == {"name": "lp-gnn", "ready": True}
        solve = {"model": "lp-gnn", "input": example(client, "lp-gnn"), "budget": BUDGET}
        assert client.post("/v1/solve", json=solve).status_code == 200
