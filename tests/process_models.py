"""Models for the engine-process tests: importable by the engine process (`tests.process_models:X`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from eqserve.models.base import Ctx
from eqserve.models.reciprocal import Reciprocal


def crash_file(front_pid: int) -> Path:
    """While this file exists, a `Crashing` model served by process `front_pid` ends its engine
    process from inside its next step."""
    return Path(tempfile.gettempdir()) / f"eqserve-test-crash-{front_pid}"


HOG_X = 1.55
"""A batch holding a row with this x makes its step keep `HOG_MIB` MiB for good."""

HOG_MIB = 400

_kept: list[bytearray] = []


class Crashing(Reciprocal):
    """Reciprocal whose step exits the process (as a segfaulting extension would) while its front's
    `crash_file` exists."""

    name = "crashing"

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        if crash_file(os.getppid()).exists():
            os._exit(3)
        return super().step(y, ctx)


class Hog(Reciprocal):
    """Reciprocal whose step leaks HOG_MIB MiB (touched, so resident) the first time it sees HOG_X."""

    name = "hog"

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        if not _kept and (ctx["x"] == HOG_X).any():
            _kept.append(bytearray(os.urandom(1)) * (HOG_MIB * 2**20))
        return super().step(y, ctx)
