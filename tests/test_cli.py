"""The `eqserve` console script end to end against a real uvicorn server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live_server import free_port, wait_ready

EQSERVE = str(Path(sys.executable).parent / "eqserve")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([EQSERVE, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "eqserve.log"
    with log.open("w") as out:
        args = ["serve", "--port", str(port), "--models", "reciprocal,deq-mlp", "--max-iters-cap", "3000"]
        proc = subprocess.Popen(
            [EQSERVE, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{url}/readyz", log)
    yield url
    proc.terminate()
    proc.wait(10)


def test_models_lists_the_served_models(server: str) -> None:
    out = run("models", "--url", server)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == ["reciprocal", "deq-mlp"]


def test_solve_inline_and_from_file(server: str, tmp_path: Path) -> None:
    out = run("solve", "reciprocal", "--input", '{"x": [0.5, 0.25]}', "--tol", "1e-9", "--url", server)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["status"] == "converged"
    assert body["output"]["y"] == pytest.approx([2.0, 4.0], abs=1e-8)

    example = httpx.get(f"{server}/v1/models/deq-mlp").json()["example_input"]
    path = tmp_path / "in.json"
    path.write_text(json.dumps(example))
    out = run("solve", "deq-mlp", "--input", f"@{path}", "--max-iters", "3", "--url", server)
    body = json.loads(out.stdout)
    assert body["iterations"] == 3 and body["status"] == "max_iters"
    assert len(body["output"]["y"]) == len(example["x"])


def test_solve_reports_server_errors(server: str) -> None:
    out = run("solve", "reciprocal", "--input", '{"x": [0.5]}', "--max-iters", "999999", "--url", server)
    assert out.returncode == 1
    assert "budget.max_iters" in out.stderr or "max_iters" in out.stderr


def test_eval_json_has_falling_error_and_a_baseline() -> None:
    out = run("eval", "deq-mlp", "--iters", "1,4,16,64", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["model"] == "deq-mlp" and report["t"] == [1, 4, 16, 64]
    assert report["error"][-1] < report["error"][0]
    assert report["params"] > 0
    assert report["baseline"]["params"] > 0 and report["baseline"]["error"] > 0


def test_eval_table_for_reciprocal() -> None:
    out = run("eval", "reciprocal", "--iters", "1,8")
    assert out.returncode == 0
    assert out.stdout.splitlines()[-1].split()[0] == "8"


def test_train_writes_loadable_weights(tmp_path: Path) -> None:
    out = run("train", "deq-mlp", "--epochs", "1", "--samples", "256", "--out", str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr
    from eqserve.models.deq_mlp.model import DeqMLP

    model = DeqMLP.from_weights(tmp_path / "deq-mlp.safetensors")
    assert model.meta().name == "deq-mlp"
    assert (tmp_path / "deq-mlp-heldout.safetensors").exists()


def test_train_names_the_options_a_trainer_takes(tmp_path: Path) -> None:
    out = run("train", "looped-lm", "--epochs", "3", "--out", str(tmp_path))
    assert out.returncode == 2
    assert "does not take epochs" in out.stderr and "steps" in out.stderr
    assert not list(tmp_path.iterdir())  # refused before any training
