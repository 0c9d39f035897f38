"""Every shipped kernel configuration compiles for sm_90 and fits (bench/kernels_aot.py, no GPU needed)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="Triton's ptxas ships for Linux x86-64",
)
def test_shipped_configurations_fit() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "kernels_aot.py"), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])["kernels"]
    families = {k["name"].split("[")[0] for k in report}
    assert families == {"dense_step", "persistent", "record", "mix", "epilogue"}
    assert [k["name"] for k in report if not k["fits"]] == []
    assert run.returncode == 0, run.stderr
