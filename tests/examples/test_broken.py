"""Broken model directories are refused, each with a message naming what is wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.examples.procs import copy_heat, eqserve

pytestmark = pytest.mark.slow

MODEL = '''
from pydantic import BaseModel
import torch
from eqserve import ImplicitModel

class In(BaseModel):
    x: list[float]

class Out(BaseModel):
    y: list[float]

class Halve(ImplicitModel):
    """y = y / 2 + x, written with one mistake or none."""
    Input, Output = In, Out
    example_input = {{"x": [1.0, 2.0, 3.0]}}

    def encode(self, inp):
        return {{"x": torch.tensor([inp.x])}}

    def state_shape(self, ctx):
        return (ctx["x"].shape[1],)

    def decode(self, y, ctx):
        return {{"y": y[0].tolist()}}
{step}
'''

STEP = """
    def step(self, y, ctx):
        return (y / 2 + ctx["x"]){cut}
"""


def directory(root: Path, step: str, entry: str = "model.py:Halve") -> Path:
    """A model directory holding MODEL with the given `step` source."""
    root.mkdir()
    (root / "model.py").write_text(textwrap.dedent(MODEL.format(step=step)))
    (root / "eqserve.toml").write_text(f'name = "halve"\nentry = "{entry}"\n')
    return root


def test_the_sound_version_passes(tmp_path: Path) -> None:
    """The baseline the broken ones differ from by one mistake each."""
    out = eqserve("check", str(directory(tmp_path / "m", STEP.format(cut=""))))
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_missing_entry_file(tmp_path: Path) -> None:
    root = directory(tmp_path / "m", STEP.format(cut=""), entry="halve.py:Halve")
    for command in (["check"], ["serve", "--port", "0"]):
        out = eqserve(*command, str(root))
        assert out.returncode != 0, command
        assert f"no file {root / 'halve.py'}" in out.stderr, command


def test_a_class_without_step(tmp_path: Path) -> None:
    out = eqserve("check", str(directory(tmp_path / "m", "")))
    assert out.returncode == 2
    assert "Halve does not define step" in out.stderr


def test_a_step_that_changes_the_shape(tmp_path: Path) -> None:
    out = eqserve("check", str(directory(tmp_path / "m", STEP.format(cut="[:, :-1]"))))
    assert out.returncode == 1
    assert "step returned shape (1, 2) for state shape (3,)" in out.stdout


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    heat = copy_heat(tmp_path / "heat")
    weights = heat / "weights.safetensors"
    save_file({"taps": torch.zeros(5, dtype=torch.float64)}, str(weights))
    for command in (["check"], ["serve", "--port", "0"]):
        out = eqserve(*command, str(heat))
        assert out.returncode != 0, command
        assert f"{weights}: weights do not fit" in out.stdout + out.stderr, command
