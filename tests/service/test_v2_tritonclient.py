"""The v2 protocol as Triton's own HTTP client speaks it, against a live server on loopback: health,
metadata, inference with binary and JSON tensors both ways, and errors it can read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from pydantic import BaseModel
from tritonclient.utils import InferenceServerException

from eqserve.models.base import Ctx
from eqserve.models.reciprocal import Reciprocal, ReciprocalInput
from eqserve.service.app import create_app
from eqserve.service.config import Settings
from tests.fake_models import RAISE_X, Faulty
from tests.live_server import live_server
from tests.service.test_v2 import WithMean, tiny_deq_mlp


class LabelledInput(ReciprocalInput):
    """Reciprocal's input with a text label."""

    label: str


class LabelledOutput(BaseModel):
    """The iterate and the label, upper-cased: a BYTES tensor each way."""

    y: list[float]
    label: str


class Labelled(Reciprocal):
    """Reciprocal that carries a label through encode and decode, to test BYTES tensors."""

    name = "labelled"
    Input = LabelledInput
    Output = LabelledOutput
    example_input = {"x": [0.5], "label": "half"}  # noqa: RUF012

    def encode(self, inp: LabelledInput) -> Ctx:  # type: ignore[override]
        label = torch.tensor([list(inp.label.encode())], dtype=torch.uint8)
        return {**super().encode(inp), "label": label}

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        return {**super().decode(y, ctx), "label": bytes(ctx["label"][0].tolist()).decode().upper()}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    models = {
        "reciprocal": Reciprocal(),
        "deq-mlp": tiny_deq_mlp(Path(tmp_path_factory.mktemp("deq"))),
        "with-mean": WithMean(),
        "labelled": Labelled(),
        "faulty": Faulty(),
    }
    app = create_app(Settings(models=[], max_iters_cap=5000, timeout_cap_s=60), models)  # type: ignore[call-arg]
    with live_server(app) as url, httpclient.InferenceServerClient(url.removeprefix("http://")) as c:
        yield c


def tensor(name: str, data: np.ndarray, datatype: str, binary: bool = True) -> Any:
    """An InferInput holding `data`, sent as bytes after the JSON or inside it."""
    return httpclient.InferInput(name, list(data.shape), datatype).set_data_from_numpy(
        data, binary_data=binary
    )


def x_input(binary: bool, x: tuple[float, ...] = (0.5, 0.25)) -> Any:
    return tensor("x", np.array(x, dtype=np.float64), "FP64", binary)


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("reciprocal") and not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "eqserve" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("labelled")
    assert model["inputs"] == [
        {"name": "x", "datatype": "FP64", "shape": [-1]},
        {"name": "eta", "datatype": "FP64", "shape": [1]},
        {"name": "label", "datatype": "BYTES", "shape": [1]},
    ]
    assert [o["datatype"] for o in model["outputs"]] == ["FP64", "BYTES"]


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False, None], ids=["binary-out", "json-out", "default-out"])
def test_infer_with_binary_and_json_tensors(client: Any, binary_in: bool, binary_out: bool | None) -> None:
    outputs = None if binary_out is None else [httpclient.InferRequestedOutput("y", binary_data=binary_out)]
    result = client.infer("reciprocal", [x_input(binary_in)], outputs=outputs, parameters={"tol": 1e-10})
    np.testing.assert_allclose(result.as_numpy("y"), [2.0, 4.0], atol=1e-9)
    assert result.as_numpy("y").dtype == np.float64
    params = result.get_response()["parameters"]
    assert params["status"] == "converged" and params["residual"] <= 1e-10
    [y] = result.get_response()["outputs"]
    assert ("binary_data_size" in y.get("parameters", {})) is (binary_out is not False)
    assert ("data" in y) is (binary_out is False)


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_binary_float32_tensors_answer_as_json_ones(client: Any, compression: str | None) -> None:
    x = np.array([0.1, 0.4, 0.7, 1.0], dtype=np.float32)
    parameters = {"tol": 1e-12, "max_iters": 40}
    binary = client.infer(
        "deq-mlp",
        [tensor("x", x, "FP32")],
        parameters=parameters,
        request_compression_algorithm=compression,
    )
    plain = client.infer(
        "deq-mlp",
        [tensor("x", x, "FP32", binary=False)],
        outputs=[httpclient.InferRequestedOutput("y", binary_data=False)],
        parameters=parameters,
    )
    assert binary.as_numpy("y").dtype == np.float32 and binary.as_numpy("y").shape == (3,)
    np.testing.assert_allclose(binary.as_numpy("y"), plain.as_numpy("y"), rtol=1e-6)
    assert (
        binary.get_response()["parameters"]["iterations"] == plain.get_response()["parameters"]["iterations"]
    )


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_tensors_both_ways(client: Any, binary: bool) -> None:
    inputs = [
        x_input(binary),
        tensor("label", np.array(["héllo wörld".encode()], dtype=object), "BYTES", binary),
    ]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "y")]
    result = client.infer("labelled", inputs, outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label", "y"]
    # The client hands binary BYTES back as bytes and JSON ones as the JSON's text.
    assert result.as_numpy("label").tolist() == ["HÉLLO WÖRLD".encode() if binary else "HÉLLO WÖRLD"]
    np.testing.assert_allclose(result.as_numpy("y"), [2.0, 4.0], atol=1e-6)


def test_one_output_binary_and_one_json(client: Any) -> None:
    outputs = [
        httpclient.InferRequestedOutput("mean", binary_data=False),
        httpclient.InferRequestedOutput("y", binary_data=True),
    ]
    result = client.infer("with-mean", [x_input(True)], outputs=outputs, parameters={"tol": 1e-10})
    mean, y = result.get_response()["outputs"]
    assert mean["data"] == pytest.approx([3.0]) and "binary_data_size" not in mean.get("parameters", {})
    assert y["parameters"]["binary_data_size"] == 16 and "data" not in y
    np.testing.assert_allclose(result.as_numpy("y"), [2.0, 4.0], atol=1e-9)
    np.testing.assert_allclose(result.as_numpy("mean"), [3.0], atol=1e-9)


def test_the_client_timeout_is_the_solve_deadline(client: Any) -> None:
    result = client.infer("reciprocal", [x_input(True)], timeout=1, parameters={"tol": 0, "max_iters": 5000})
    params = result.get_response()["parameters"]
    assert params["status"] == "deadline" and params["iterations"] < 5000


@pytest.mark.parametrize(
    ("call", "status", "says"),
    [
        (lambda c: c.infer("nope", [x_input(True)]), "404", "no model 'nope'"),
        (lambda c: c.get_model_metadata("nope"), "404", "no model 'nope'"),
        (
            lambda c: c.infer("reciprocal", [tensor("x", np.array([[0.5], [0.25]]), "FP64")]),
            "400",
            "tensor 'x' has shape [2, 1], expected [-1]",
        ),
        (
            lambda c: c.infer("reciprocal", [tensor("x", np.array([0.5], dtype=np.int64), "INT64")]),
            "400",
            "tensor 'x' has datatype INT64, expected FP64",
        ),
        (lambda c: c.infer("reciprocal", [x_input(True, (3.0,))]), "400", "x[0] = 3.0"),
        (lambda c: c.infer("reciprocal", [x_input(True)], priority=1), "400", "parameters.priority"),
        (lambda c: c.infer("reciprocal", [x_input(True)], sequence_id=7), "400", "sequence batching"),
        (
            lambda c: c.infer(
                "reciprocal", [x_input(True)], outputs=[httpclient.InferRequestedOutput("y", class_count=2)]
            ),
            "400",
            "outputs.0.parameters.classification",
        ),
        (lambda c: c.infer("reciprocal", [x_input(True)], parameters={"max_iter": 5}), "400", "max_iter"),
        (lambda c: c.infer("faulty", [x_input(True, (RAISE_X,))]), "500", "model 'faulty' failed"),
    ],
    ids=[
        "unknown-model",
        "unknown-metadata",
        "shape",
        "datatype",
        "input",
        "priority",
        "sequence",
        "classification",
        "parameter",
        "model-fault",
    ],
)
def test_errors_reach_the_client_readable(client: Any, call: Any, status: str, says: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        call(client)
    assert exc.value.status() == status
    assert isinstance(exc.value.message(), str) and says in exc.value.message()
    assert says in str(exc.value)
