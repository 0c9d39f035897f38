"""`eqserve` as a user runs it: a fresh process per command, a server on a free loopback port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.live_server import free_port, wait_ready

EQSERVE = str(Path(sys.executable).parent / "eqserve")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HEAT = EXAMPLES / "heat"
COMMAND_TIMEOUT_S = 180
"""Bound on one `eqserve check` (it imports torch and times steps for about a second)."""
START_TIMEOUT_S = 120
"""Bound on a server's start (import torch, load the models, bind)."""


def env(pythonpath: Path | None = None) -> dict[str, str]:
    """The environment of a child: ours, with `pythonpath` (only) on PYTHONPATH when given."""
    out = dict(os.environ)
    out.pop("PYTHONPATH", None)
    if pythonpath is not None:
        out["PYTHONPATH"] = str(pythonpath)
    return out


def eqserve(
    *args: str, cwd: Path | None = None, pythonpath: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `eqserve ARGS` to completion; its output as text."""
    return subprocess.run(
        [EQSERVE, *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
        cwd=cwd,
        env=env(pythonpath),
    )


@contextmanager
def serving(
    *args: str, log_dir: Path, cwd: Path | None = None, pythonpath: Path | None = None
) -> Iterator[str]:
    """`eqserve serve ARGS` on a free port until the block ends; yields its base URL once ready."""
    port = free_port()
    log = log_dir / "eqserve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [EQSERVE, "serve", *args, "--port", str(port), "--log-level", "warning"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env(pythonpath),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{url}/readyz", log, timeout=START_TIMEOUT_S)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def copy_heat(dest: Path) -> Path:
    """A copy of the heat model directory at `dest` (the code and weights a user would ship)."""
    shutil.copytree(HEAT, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest
