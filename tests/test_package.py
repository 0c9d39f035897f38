"""The installed package: lazy public API, kernels importable alone, ids unique across processes."""

from __future__ import annotations

import subprocess
import sys

import eqserve


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_the_public_api_is_exposed_lazily() -> None:
    assert {"ImplicitModel", "Client", "AsyncClient", "from_module"} <= set(eqserve.__all__)
    loaded = _run(
        "import sys, eqserve, eqserve.kernels.dispatch, eqserve.kernels.reference\n"
        "print(sorted(m for m in sys.modules if m.startswith(('eqserve.service', 'fastapi', 'pydantic'))))"
    )
    assert loaded.strip() == "[]"  # a GPU box with torch and Triton alone can import the kernels
    assert eqserve.ImplicitModel.__module__ == "eqserve.models.base"


def test_request_ids_differ_across_processes() -> None:
    code = "from eqserve.engine.job import new_id; print(new_id())"
    first, second = _run(code).strip(), _run(code).strip()
    assert first != second and first.startswith("req-") and first.endswith("-00000001")
