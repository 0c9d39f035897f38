"""The KServe Open Inference Protocol v2: health, metadata, inference, tensor mapping, errors, auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import BaseModel
from safetensors.torch import save_file

from eqserve.models.base import Ctx
from eqserve.models.deq_mlp.model import HELDOUT_FILE, DeqMLP
from eqserve.models.reciprocal import Reciprocal
from eqserve.models.registry import WEIGHTS_DIR, load_model
from eqserve.models.tensors import Tensor, TensorError, TensorMap
from tests.conftest import make_client
from tests.fake_models import NAN_X, RAISE_X, Faulty


class WithMeanOutput(BaseModel):
    """Two outputs: the iterate and its mean (a scalar)."""

    y: list[float]
    mean: float


class WithMean(Reciprocal):
    """Reciprocal with a second, scalar output, to test the request's `outputs` filter."""

    name = "with-mean"
    Output = WithMeanOutput

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        out = super().decode(y, ctx)
        return {**out, "mean": sum(out["y"]) / len(out["y"])}


def tiny_deq_mlp(weights_dir: Path) -> DeqMLP:
    """A small random deq-mlp (‖W‖₂ = 0.5) with a held-out file beside it, so no shipped weights."""
    torch.manual_seed(0)
    model = DeqMLP(d_in=4, hidden=8, d_out=3, weights_dir=weights_dir)
    with torch.no_grad():
        w = torch.randn(8, 8)
        model.W.copy_(0.5 * w / torch.linalg.matrix_norm(w, ord=2))
    save_file({"x": torch.rand(2, 4), "y": torch.rand(2, 3)}, str(weights_dir / HELDOUT_FILE))
    return model.eval()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    models = {
        "reciprocal": Reciprocal(),
        "deq-mlp": tiny_deq_mlp(tmp_path_factory.mktemp("deq")),
        "with-mean": WithMean(),
        "faulty": Faulty(),
    }
    with make_client(models, max_iters_cap=5000, timeout_cap_s=60) as c:
        yield c


def tj(name: str, data: list[Any], shape: list[int] | None = None, datatype: str = "FP64") -> dict[str, Any]:
    """A tensor's JSON; the shape defaults to the data's length."""
    shape = [len(data)] if shape is None else shape
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def x_tensor(data: list[Any], shape: list[int] | None = None, datatype: str = "FP64") -> dict[str, Any]:
    return tj("x", data, shape, datatype)


def infer(client: TestClient, model: str = "reciprocal", **body: Any):
    return client.post(f"/v2/models/{model}/infer", json={"inputs": [x_tensor([0.5, 0.25])]} | body)


def test_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/reciprocal/ready").json() == {"name": "reciprocal", "ready": True}
    assert client.get("/v2").json() == {"name": "eqserve", "version": client.app.version, "extensions": []}
    missing = client.get("/v2/models/nope/ready")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_model_metadata_lists_tensors_with_variable_dims(client: TestClient) -> None:
    assert client.get("/v2/models/reciprocal").json() == {
        "name": "reciprocal",
        "versions": [],
        "platform": "eqserve",
        "inputs": [
            {"name": "x", "datatype": "FP64", "shape": [-1]},
            {"name": "eta", "datatype": "FP64", "shape": [1]},
        ],
        "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1]}],
    }
    deq = client.get("/v2/models/deq-mlp").json()
    assert deq["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    assert deq["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1]}]
    missing = client.get("/v2/models/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no model 'nope'; served: reciprocal, deq-mlp, with-mean, faulty"}


def test_infer_honours_budget_parameters_and_request_id(client: TestClient) -> None:
    capped = infer(client, parameters={"max_iters": 7, "tol": 0}).json()
    assert capped["parameters"]["status"] == "max_iters" and capped["parameters"]["iterations"] == 7
    body = infer(client, id="42", parameters={"tol": 1e-10}).json()
    assert body["id"] == "42" and body["model_name"] == "reciprocal" and "model_version" not in body
    p = body["parameters"]
    assert p["status"] == "converged" and p["residual"] <= 1e-10 and p["iterations"] > 7
    timing = {"queue_ms", "solve_ms", "per_iter_us"}
    assert set(p) == {"status", "iterations", "residual", "rel_residual", *timing}
    assert all(isinstance(v, str | int | float | bool) for v in p.values())
    [y] = body["outputs"]
    assert y["name"] == "y" and y["shape"] == [2] and y["datatype"] == "FP64"
    assert y["data"] == pytest.approx([2.0, 4.0], abs=1e-9)
    assert infer(client).json()["id"].startswith("req-")


def test_solver_and_stop_mode_parameters_reach_the_solve(client: TestClient) -> None:
    inputs = [x_tensor([0.05, 0.1])]
    base = {"tol": 1e-8, "max_iters": 2000}
    picard = infer(client, inputs=inputs, parameters=base).json()["parameters"]
    anderson = infer(client, inputs=inputs, parameters=base | {"method": "anderson", "m": 3})
    anderson = anderson.json()["parameters"]
    assert picard["status"] == anderson["status"] == "converged"
    assert anderson["iterations"] < picard["iterations"] / 5
    rel = infer(client, parameters={"tol": 1e-6, "stop_mode": "rel", "damping": 0.5}).json()["parameters"]
    assert rel["status"] == "converged" and rel["rel_residual"] <= 1e-6


@pytest.mark.parametrize(
    ("model", "inputs", "v1_input"),
    [
        ("reciprocal", [x_tensor([0.5, 1.5]), tj("eta", [0.8])], {"x": [0.5, 1.5], "eta": 0.8}),
        ("deq-mlp", [x_tensor([0.1, 0.4, 0.7, 1.0], datatype="FP32")], {"x": [0.1, 0.4, 0.7, 1.0]}),
    ],
)
def test_v2_answers_as_v1_solve(client: TestClient, model: str, inputs: list, v1_input: dict) -> None:
    budget = {"max_iters": 40, "tol": 1e-12}
    v1 = client.post("/v1/solve", json={"model": model, "input": v1_input, "budget": budget}).json()
    v2 = infer(client, model, inputs=inputs, parameters=budget).json()
    assert v2["parameters"]["status"] == v1["status"]
    assert v2["parameters"]["iterations"] == v1["iterations"]
    assert v2["outputs"][0]["data"] == pytest.approx(v1["output"]["y"], rel=1e-6)


def test_outputs_filter(client: TestClient) -> None:
    both = infer(client, "with-mean").json()["outputs"]
    assert [(o["name"], o["shape"]) for o in both] == [("y", [2]), ("mean", [1])]
    assert both[1]["data"] == pytest.approx([3.0])
    only = infer(client, "with-mean", outputs=[{"name": "mean"}]).json()["outputs"]
    assert [o["name"] for o in only] == ["mean"] and only[0]["data"] == pytest.approx([3.0])
    r = infer(client, "with-mean", outputs=[{"name": "median"}])
    assert r.status_code == 400 and "median" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"inputs": [x_tensor([1], datatype="INT64")]}, "tensor 'x' has datatype INT64, expected FP64"),
        ({"inputs": [x_tensor(["0.5"], datatype="BYTES")]}, "tensor 'x' has datatype BYTES"),
        ({"inputs": [x_tensor([0.5, 0.25], shape=[2, 1])]}, "tensor 'x' has shape [2, 1], expected [-1]"),
        ({"inputs": [x_tensor([0.5, 0.25], shape=[3])]}, "tensor 'x' of shape [3] needs 3 elements, got 2"),
        ({"inputs": [x_tensor([0.5, "a"])]}, "tensor 'x' (FP64): element 1 is 'a'"),
        ({"inputs": [x_tensor([0.5]), tj("eta", [1, 1])]}, "tensor 'eta' has shape [2], expected [1]"),
        ({"inputs": [x_tensor([0.5]), tj("colour", [1])]}, "unknown tensor 'colour'; expected x, eta"),
        ({"inputs": [tj("eta", [1.0])]}, "missing tensor 'x'"),
        ({"inputs": [x_tensor([0.5]), x_tensor([0.5])]}, "tensor 'x' is given twice"),
        ({"inputs": [x_tensor([0.5, 3.0])]}, "x[1] = 3.0"),
        ({"inputs": [x_tensor([])]}, "input.x"),
        ({"inputs": [x_tensor([0.5], datatype="FLOAT")]}, "inputs.0.datatype"),
        ({"inputs": [x_tensor([0.5], shape=[-1])]}, "inputs.0.shape"),
        ({"inputs": None}, "inputs"),
        ({"stream": True}, "stream"),
        ({"parameters": {"max_iters": 0}}, "parameters.max_iters"),
        ({"parameters": {"max_iters": 5001}}, "max_iters"),
        ({"parameters": {"tol": -1}}, "parameters.tol"),
        ({"parameters": {"tol": "small"}}, "parameters.tol"),
        ({"parameters": {"stop_mode": "sideways"}}, "parameters.stop_mode"),
        ({"parameters": {"timeout_s": 61}}, "timeout_s"),
        ({"parameters": {"method": "newton"}}, "parameters.method"),
        ({"parameters": {"damping": 1.5}}, "parameters.damping"),
        ({"parameters": {"m": 100}}, "parameters.m"),
        ({"parameters": {"max_iter": 10}}, "parameters.max_iter"),
    ],
)
def test_bad_requests_are_400_naming_the_culprit(client: TestClient, body: dict, says: str) -> None:
    r = infer(client, **body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and says in r.json()["error"]


@pytest.mark.parametrize(
    "raw",
    [
        '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [NaN]}]}',
        '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [0.5]}],'
        ' "parameters": {"tol": Infinity}}',
        '{"inputs": ',
    ],
)
def test_non_finite_and_malformed_json_are_400(client: TestClient, raw: str) -> None:
    r = client.post("/v2/models/reciprocal/infer", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


def test_unknown_model_is_404(client: TestClient) -> None:
    r = infer(client, "nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_diverged_answers_200_without_outputs_and_model_fault_is_500(client: TestClient) -> None:
    diverged = infer(client, "faulty", inputs=[x_tensor([NAN_X])]).json()
    assert diverged["parameters"]["status"] == "diverged" and diverged["outputs"] == []
    assert "residual" not in diverged["parameters"]
    fault = infer(client, "faulty", inputs=[x_tensor([RAISE_X])])
    assert fault.status_code == 500 and "faulty" in fault.json()["error"]


def test_full_queue_is_429_with_retry_after() -> None:
    with make_client({"reciprocal": Reciprocal()}, max_queue=0) as client:
        r = infer(client)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert set(r.json()) == {"error"}


def test_model_routes_need_the_key_and_health_stays_open() -> None:
    with make_client({"reciprocal": Reciprocal()}, api_key="k") as client:
        for path in ("/v2", "/v2/models/reciprocal", "/v2/models/reciprocal/ready"):
            r = client.get(path)
            assert r.status_code == 401 and set(r.json()) == {"error"}, path
            assert r.headers["WWW-Authenticate"] == "Bearer"
        assert infer(client).status_code == 401
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").json() == {"ready": True}
        auth = {"Authorization": "Bearer k"}
        assert client.get("/v2/models/reciprocal", headers=auth).status_code == 200
        ok = client.post("/v2/models/reciprocal/infer", json={"inputs": [x_tensor([0.5])]}, headers=auth)
        assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == pytest.approx([2.0])
        assert client.get("/v2", headers={"Authorization": "Bearer wrong"}).status_code == 401


class Everything(BaseModel):
    """One field of each kind the generic mapping knows."""

    grid: list[list[float]]
    steps: int
    flag: bool
    label: str
    tags: list[str]
    mode: Literal["abs", "rel"] = "abs"
    scale: float | None = None


def tensor(name: str, shape: list[int], datatype: str, data: list[Any]) -> Tensor:
    return Tensor(name=name, shape=shape, datatype=datatype, data=data)  # type: ignore[arg-type]


def test_tensor_map_covers_every_field_kind_both_ways() -> None:
    tm = TensorMap(Everything, "FP64")
    assert tm.metadata() == [
        {"name": "grid", "datatype": "FP64", "shape": [-1, -1]},
        {"name": "steps", "datatype": "INT64", "shape": [1]},
        {"name": "flag", "datatype": "BOOL", "shape": [1]},
        {"name": "label", "datatype": "BYTES", "shape": [1]},
        {"name": "tags", "datatype": "BYTES", "shape": [-1]},
        {"name": "mode", "datatype": "BYTES", "shape": [1]},
        {"name": "scale", "datatype": "FP64", "shape": [1]},
    ]
    common = [
        tensor("steps", [1], "INT32", [3]),
        tensor("flag", [], "BOOL", [True]),
        tensor("label", [1], "BYTES", ["a"]),
        tensor("tags", [2], "BYTES", ["p", "q"]),
    ]
    flat = tm.to_dict([tensor("grid", [2, 3], "FP32", [1, 2, 3, 4, 5, 6.5]), *common])
    nested = tm.to_dict([tensor("grid", [2, 3], "FP32", [[1, 2, 3], [4, 5, 6.5]]), *common])
    assert flat == nested == {
        "grid": [[1, 2, 3], [4, 5, 6.5]], "steps": 3, "flag": True, "label": "a", "tags": ["p", "q"]
    }  # fmt: skip
    back = {t.name: (t.shape, t.datatype, t.data) for t in tm.to_tensors(Everything(**flat).model_dump())}
    assert back == {
        "grid": ([2, 3], "FP64", [1, 2, 3, 4, 5, 6.5]),
        "steps": ([1], "INT64", [3]),
        "flag": ([1], "BOOL", [True]),
        "label": ([1], "BYTES", ["a"]),
        "tags": ([2], "BYTES", ["p", "q"]),
        "mode": ([1], "BYTES", ["abs"]),
    }


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (tensor("steps", [1], "FP32", [3.0]), "datatype FP32, expected INT64"),
        (tensor("steps", [1], "INT64", [True]), "element 0 is True"),
        (tensor("steps", [2], "INT64", [1, 2]), "shape [2], expected [1]"),
        (tensor("flag", [1], "BOOL", [1]), "element 0 is 1"),
        (tensor("tags", [3], "BYTES", ["p", "q"]), "needs 3 elements, got 2"),
    ],
)
def test_tensor_map_names_the_tensor_that_does_not_fit(bad: Tensor, message: str) -> None:
    good = {
        "grid": tensor("grid", [1, 1], "FP64", [1.0]),
        "steps": tensor("steps", [1], "INT64", [1]),
        "flag": tensor("flag", [1], "BOOL", [True]),
        "label": tensor("label", [1], "BYTES", ["a"]),
        "tags": tensor("tags", [0], "BYTES", []),
    }
    with pytest.raises(TensorError, match=message.replace("[", r"\[").replace("]", r"\]")) as exc:
        TensorMap(Everything).to_dict(list((good | {bad.name: bad}).values()))
    assert exc.value.name == bad.name


def test_a_field_without_tensor_form_asks_for_an_override() -> None:
    class Nested(BaseModel):
        inner: Everything

    with pytest.raises(TypeError, match="override v2_inputs"):
        TensorMap(Nested)


@pytest.mark.skipif(
    not (WEIGHTS_DIR / "deq-mlp.safetensors").exists(), reason="deq-mlp weights not trained yet"
)
def test_shipped_deq_mlp_over_v2() -> None:
    model = load_model("deq-mlp")
    with make_client({"deq-mlp": model}) as client:
        meta = client.get("/v2/models/deq-mlp").json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1]}]
        x = model.meta().example_input["x"]
        v1 = client.post("/v1/solve", json={"model": "deq-mlp", "input": {"x": x}}).json()
        v2 = infer(client, "deq-mlp", inputs=[x_tensor(x, datatype="FP32")]).json()
        assert v2["parameters"]["status"] == v1["status"] == "converged"
        assert v2["outputs"][0]["data"] == pytest.approx(v1["output"]["y"], rel=1e-6)
