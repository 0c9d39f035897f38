"""Model control (Triton's repository extension) on a model repository holding the heat directory:
versions loaded beside the served one and swapped, a failed load that changes nothing, an unload.
Driven through tritonclient's own calls; the solves and the raw error through httpx."""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.examples.procs import HEAT, serving

pytestmark = pytest.mark.slow

V2 = "heat, version 2"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository whose heat directory holds version 1: the example's code and weights."""
    root = tmp_path / "repo"
    (root / "heat" / "1").mkdir(parents=True)
    shutil.copy(HEAT / "eqserve.toml", root / "heat")
    for name in ("model.py", "weights.safetensors"):
        shutil.copy(HEAT / name, root / "heat" / "1")
    return root


def add_version(heat: Path, n: int, *, description: str | None, weights: bool = True) -> None:
    """Version `n`: the example's code (with its class's description replaced when given), and its
    weights unless `weights` is False."""
    entry_class = tomllib.loads((heat / "eqserve.toml").read_text())["entry"].partition(":")[2]
    (heat / str(n)).mkdir()
    code = (HEAT / "model.py").read_text()
    if description is not None:
        code += f"\n{entry_class}.description = {description!r}\n"
    (heat / str(n) / "model.py").write_text(code)
    if weights:
        shutil.copy(HEAT / "weights.safetensors", heat / str(n))


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[str]:
    with serving("--model-repository", str(repo), "--model-control", log_dir=tmp_path) as url:
        yield url


def heat_index(client: triton.InferenceServerClient) -> dict:
    (entry,) = [m for m in client.get_model_repository_index() if m["name"] == "heat"]
    return entry


def solve(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/solve", json={"model": "heat", "input": {"f": [[1.0, 0.0], [0.0, 1.0]]}})


def description(url: str) -> str:
    return httpx.get(f"{url}/v1/models/heat").json()["description"]


def test_load_reload_fail_and_unload(server: str, repo: Path) -> None:
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    heat = repo / "heat"
    assert heat_index(client) == {"name": "heat", "version": "1", "state": "READY", "reason": ""}
    assert solve(server).json()["status"] == "converged"
    v1 = description(server)
    assert v1 != V2

    add_version(heat, 2, description=V2)
    assert heat_index(client)["version"] == "1"  # on disk, not yet loaded
    client.load_model("heat")
    assert description(server) == V2
    assert heat_index(client) == {"name": "heat", "version": "2", "state": "READY", "reason": ""}
    assert solve(server).json()["status"] == "converged"

    add_version(heat, 3, description="heat, version 3", weights=False)
    with pytest.raises(InferenceServerException) as failed:
        client.load_model("heat")
    assert failed.value.status() == "400"
    reason = failed.value.message()
    assert f"{Path('heat', '3', 'weights.safetensors')} does not exist" in reason
    assert str(repo) not in reason  # paths relative to the repository, not the server's layout
    assert description(server) == V2
    assert heat_index(client)["version"] == "2"
    assert solve(server).json()["status"] == "converged"

    client.unload_model("heat")
    assert solve(server).status_code in (404, 503)
    assert heat_index(client)["state"] == "UNAVAILABLE"

    # The same API without the client: the raw v2 error, then a load of the fixed version.
    r = httpx.post(f"{server}/v2/repository/models/heat/load", timeout=120)
    assert r.status_code == 400 and "does not exist" in r.json()["error"]
    assert httpx.post(f"{server}/v2/repository/models/nope/load").status_code == 404
    shutil.rmtree(heat / "3")
    assert httpx.post(f"{server}/v2/repository/models/heat/load", timeout=120).status_code == 200
    assert heat_index(client) == {"name": "heat", "version": "2", "state": "READY", "reason": ""}
    assert solve(server).json()["status"] == "converged"
