"""The entry-point example: pip-installed into a folder of its own (never into the test environment),
then found by name by `eqserve serve` and `eqserve check` in processes that have it on PYTHONPATH."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from tests.examples.procs import COMMAND_TIMEOUT_S, EXAMPLES, eqserve, serving

pytestmark = pytest.mark.slow

NAME = "example-deq"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the package is installed into; built from a copy, so the build leaves the checkout clean."""
    src = tmp_path_factory.mktemp("src") / "pkg"
    shutil.copytree(
        EXAMPLES / "eqserve-example-pkg", src, ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    done = subprocess.run(
        [*pip, str(target), str(src)], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr
    return target


@pytest.fixture(scope="module")
def server(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(NAME, log_dir=tmp_path_factory.mktemp("log"), pythonpath=site) as url:
        yield url


def test_this_process_does_not_see_the_package(site: Path) -> None:
    assert NAME not in entry_points(group="eqserve.models").names


def test_served_by_its_name(server: str) -> None:
    meta = httpx.get(f"{server}/v1/models/{NAME}").json()
    r = httpx.post(f"{server}/v1/solve", json={"model": NAME, "input": meta["example_input"]}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "converged"
    assert body["residual"] <= meta["defaults"]["budget"]["tol"]
    assert len(body["output"]["y"]) == meta["state_shape"][0]


def test_a_wrong_input_is_the_requests_fault(server: str) -> None:
    r = httpx.post(f"{server}/v1/solve", json={"model": NAME, "input": {"x": [1.0, 2.0]}})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "x"


def test_check_finds_it_by_name(site: Path) -> None:
    out = eqserve("check", NAME, pythonpath=site)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "contract holds" in out.stdout
