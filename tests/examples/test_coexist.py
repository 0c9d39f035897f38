"""A user's own top-level `models` package and eqserve in one process, from a folder outside the
checkout: installing eqserve must not claim the generic names its folders have inside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.examples.procs import COMMAND_TIMEOUT_S, EXAMPLES, env

pytestmark = pytest.mark.slow

PROBE = """
import importlib.util, json
import models, eqserve
from eqserve import ImplicitModel
import eqserve.models
print(json.dumps({
    "user": models.__file__,
    "marker": models.WHO,
    "eqserve_models": eqserve.models.__file__,
    "contract": ImplicitModel.__module__,
    "generic": {n: importlib.util.find_spec(n) is not None for n in ("service", "kernels")},
}))
"""


def test_a_users_models_package_coexists(tmp_path: Path) -> None:
    assert not tmp_path.is_relative_to(EXAMPLES.parent)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text('WHO = "the user"\n')
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["user"] == str(tmp_path / "models" / "__init__.py")
    assert seen["marker"] == "the user"
    assert Path(seen["eqserve_models"]).parent.parent.name == "eqserve"
    assert seen["contract"] == "eqserve.models.base"
    assert seen["generic"] == {"service": False, "kernels": False}
