"""The KServe Open Inference Protocol v2: health, metadata, inference, tensor mapping, errors, auth."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import BaseModel
from safetensors.torch import save_file

from eqserve.models.base import Ctx
from eqserve.models.deq_mlp.model import HELDOUT_FILE, DeqMLP
from eqserve.models.reciprocal import Reciprocal
from eqserve.models.registry import load_model
from eqserve.models.shipped import WEIGHTS_DIR
from eqserve.models.tensors import Tensor, TensorError, TensorMap
from eqserve.service.app import create_app
from eqserve.service.config import Settings
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
    assert client.get("/v2").json() == {
        "name": "eqserve",
        "version": client.app.version,
        "extensions": ["binary_tensor_data", "parameters"],
    }
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


def binary_body(header: dict[str, Any], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    """A request in the binary tensor data extension: the JSON header, then each tensor's bytes."""
    head = json.dumps(header).encode()
    return head + b"".join(tensors), {"Inference-Header-Content-Length": str(len(head))}


def split_answer(r: httpx.Response) -> tuple[dict[str, Any], bytes]:
    """A binary answer's JSON header and the bytes after it."""
    n = int(r.headers["Inference-Header-Content-Length"])
    return json.loads(r.content[:n]), r.content[n:]


def f64(*x: float) -> bytes:
    return np.array(x, dtype="<f8").tobytes()


PLAIN = {"inputs": [x_tensor([0.5])]}
"""A request with a JSON tensor, to add parameters and outputs to."""


def binary_x(nbytes: int, **extra: Any) -> dict[str, Any]:
    """The JSON of a binary FP64 `x` of `nbytes` bytes."""
    return {
        "name": "x",
        "shape": [nbytes // 8],
        "datatype": "FP64",
        "parameters": {"binary_data_size": nbytes},
    } | extra


def test_binary_inputs_and_outputs(client: TestClient) -> None:
    eta = {"name": "eta", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 8}}
    header = {"inputs": [binary_x(16), eta], "parameters": {"tol": 1e-12, "binary_data_output": True}}
    content, headers = binary_body(header, f64(0.5, 1.5), f64(0.8))
    r = client.post("/v2/models/reciprocal/infer", content=content, headers=headers)
    assert r.status_code == 200, r.text
    head, tail = split_answer(r)
    [y] = head["outputs"]
    assert y == {"name": "y", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": 16}}
    v1 = {"model": "reciprocal", "input": {"x": [0.5, 1.5], "eta": 0.8}, "budget": {"tol": 1e-12}}
    v1 = client.post("/v1/solve", json=v1).json()
    assert head["parameters"]["iterations"] == v1["iterations"]
    assert np.frombuffer(tail, "<f8").tolist() == v1["output"]["y"]
    assert v1["output"]["y"] == pytest.approx([2.0, 1 / 1.5], abs=1e-9)


def test_outputs_choose_binary_or_json_each(client: TestClient) -> None:
    body = {
        "inputs": [x_tensor([0.5, 0.25])],
        "parameters": {"tol": 1e-10, "binary_data_output": True},
        "outputs": [{"name": "mean", "parameters": {"binary_data": False}}, {"name": "y"}],
    }
    head, tail = split_answer(client.post("/v2/models/with-mean/infer", json=body))
    mean, y = head["outputs"]
    assert mean["data"] == pytest.approx([3.0]) and "parameters" not in mean
    assert y["parameters"] == {"binary_data_size": 16} and np.frombuffer(tail, "<f8") == pytest.approx([2, 4])
    body["parameters"] = {"tol": 1e-10}
    plain = client.post("/v2/models/with-mean/infer", json=body)
    assert "Inference-Header-Content-Length" not in plain.headers
    assert [o["data"] for o in plain.json()["outputs"]] == [pytest.approx([3.0]), pytest.approx([2, 4])]


def test_bf16_binary_input_reaches_a_float_model(client: TestClient) -> None:
    x = [0.125, 0.5, 0.75, 1.0]  # exact in bfloat16: its bytes are float32's upper halves
    bf16 = (np.array(x, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
    header = {
        "inputs": [{"name": "x", "shape": [4], "datatype": "BF16", "parameters": {"binary_data_size": 8}}]
    }
    content, headers = binary_body(header, bf16)
    binary = client.post("/v2/models/deq-mlp/infer", content=content, headers=headers)
    plain = infer(client, "deq-mlp", inputs=[x_tensor(x, datatype="FP32")])
    assert binary.status_code == 200, binary.text
    assert binary.json()["outputs"] == plain.json()["outputs"]


def test_gzip_request_body(client: TestClient) -> None:
    content = gzip.compress(json.dumps({"inputs": [x_tensor([0.5])]}).encode())
    r = client.post("/v2/models/reciprocal/infer", content=content, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == pytest.approx([2.0])


@pytest.mark.parametrize(
    ("header", "tail", "length", "says"),
    [
        ({"inputs": [binary_x(16)]}, f64(0.5, 0.25), "abc", "Inference-Header-Content-Length: 'abc'"),
        ({"inputs": [binary_x(16)]}, f64(0.5, 0.25), "99999", "Inference-Header-Content-Length: '99999'"),
        ({"inputs": [binary_x(16)]}, f64(0.5), None, "binary_data_size: tensor 'x' needs 16 bytes; 8 follow"),
        ({"inputs": [binary_x(8)]}, f64(0.5, 0.25), None, "8 bytes after the JSON header belong to no input"),
        ({"inputs": [binary_x(8, data=[0.5])]}, f64(0.5), None, "inputs.0.data: tensor 'x' has both"),
        ({"inputs": [binary_x(8) | {"parameters": {"binary_data_size": "8"}}]}, f64(0.5), None,
         "inputs.0.parameters.binary_data_size: '8' is not a byte count"),
        ({"inputs": [binary_x(8) | {"shape": [2]}]}, f64(0.5), None, "of shape [2] needs 2 elements, got 1"),
        ({"inputs": [binary_x(7)]}, f64(0.5)[:7], None, "7 bytes is not a whole number of FP64 elements"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64"}]}, b"", None, "tensor 'x' has no data"),
        ({"inputs": [x_tensor([0.5]) | {"parameters": {"shared_memory_region": "r"}}]}, b"", None,
         "inputs.0.parameters.shared_memory_region: eqserve does not speak the shared-memory"),
        (PLAIN | {"outputs": [{"name": "y", "parameters": {"binary_data": "often"}}]}, b"",
         None, "outputs.0.parameters.binary_data"),
        (PLAIN | {"outputs": [{"name": "y", "parameters": {"classification": 2}}]}, b"",
         None, "outputs.0.parameters.classification: eqserve does not speak the classification"),
        (PLAIN | {"parameters": {"sequence_id": 3}}, b"", None, "sequence batching"),
        (PLAIN | {"parameters": {"priority": 1}}, b"", None, "by priority"),
        (PLAIN | {"parameters": {"binary_data_output": "often"}}, b"", None,
         "parameters.binary_data_output"),
        (PLAIN | {"parameters": {"timeout": 10, "timeout_s": 1}}, b"", None, "not both"),
        (PLAIN | {"parameters": {"timeout": 0}}, b"", None, "parameters.timeout"),
    ],
)  # fmt: skip
def test_bad_binary_and_protocol_parameters_are_400_naming_them(
    client: TestClient, header: dict, tail: bytes, length: str | None, says: str
) -> None:
    content, headers = binary_body(header, tail)
    if length is not None:
        headers["Inference-Header-Content-Length"] = length
    elif not any("binary_data_size" in (t.get("parameters") or {}) for t in header["inputs"]):
        headers = {}
    r = client.post("/v2/models/reciprocal/infer", content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and says in r.json()["error"]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"\x01\x00", "truncated length"),
        (b"\x09\x00\x00\x00abc", "runs past the tensor's end"),
        (b"\x01\x00\x00\x00\xff", "is not UTF-8 text"),
    ],
)
def test_bad_binary_bytes_elements_are_400(client: TestClient, raw: bytes, says: str) -> None:
    header = {
        "inputs": [
            {"name": "tags", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
        ]
    }
    content, headers = binary_body(header, raw)
    r = client.post("/v2/models/with-mean/infer", content=content, headers=headers)
    assert (
        r.status_code == 400
        and "inputs.0.parameters.binary_data_size: BYTES element at byte 0" in r.json()["error"]
    )
    assert says in r.json()["error"]


@pytest.mark.parametrize(
    ("encoding", "says"),
    [("br", "Content-Encoding 'br'"), ("gzip", "Content-Encoding gzip: the body does not")],
)
def test_unknown_or_broken_content_encoding_is_400(client: TestClient, encoding: str, says: str) -> None:
    r = client.post("/v2/models/reciprocal/infer", content=b"{}", headers={"Content-Encoding": encoding})
    assert r.status_code == 400 and says in r.json()["error"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded; charset=utf-8"])
def test_bodies_a_form_can_post_are_415(client: TestClient, content_type: str) -> None:
    """A page on another site can post these without asking; JSON, bytes and no type (Triton's
    clients) pass."""
    body = json.dumps({"inputs": [x_tensor([0.5])]}).encode()
    refused = client.post("/v2/models/reciprocal/infer", content=body, headers={"Content-Type": content_type})
    assert refused.status_code == 415 and "application/json" in refused.json()["error"]
    for ok in ("application/json", "application/octet-stream"):
        r = client.post("/v2/models/reciprocal/infer", content=body, headers={"Content-Type": ok})
        assert r.status_code == 200, r.text


class RaggedOutput(BaseModel):
    """A grid output, which decode below makes ragged."""

    grid: list[list[float]]


class Ragged(Reciprocal):
    """Reciprocal whose output no tensor can hold: a server-side fault at answer time."""

    name = "ragged"
    Output = RaggedOutput

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        return {"grid": [[0.0], [0.0, 1.0]]}


def test_errors_on_v2_routes_are_v2_shaped_and_5xx_reveal_nothing() -> None:
    app = create_app(Settings(models=[]), {"ragged": Ragged()})  # type: ignore[call-arg]
    with TestClient(app, raise_server_exceptions=False) as client:
        fault = client.post("/v2/models/ragged/infer", json={"inputs": [x_tensor([0.5])]})
        assert fault.status_code == 500 and set(fault.json()) == {"error"}
        assert isinstance(fault.json()["error"], str)
        assert not {"rectangular", "ValueError", "grid"} & set(
            fault.json()["error"].replace(":", " ").split()
        )
        assert client.post("/v1/solve", json={"model": "ragged", "input": {"x": [0.5]}}).status_code == 200
        for method, path, status in [
            ("GET", "/v2/models/ragged/config", 404),
            ("GET", "/v2/models/ragged/infer", 405),
        ]:
            r = client.request(method, path)
            assert r.status_code == status and isinstance(r.json()["error"], str), r.text
        v1 = client.get("/v1/nothing-here")
        assert v1.status_code == 404 and v1.json()["error"]["type"] == "not_found"
