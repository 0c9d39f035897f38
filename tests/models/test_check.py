"""`eqserve check`: what it catches, named."""

from __future__ import annotations

import math
import re

import pytest
import torch

from eqserve.models.check import check_model
from tests.shaped_models import Grid


class _Mixing(Grid):
    """Rows leak into each other (a batch mean): per-row exit would be wrong."""

    def step(self, y: torch.Tensor, ctx: dict) -> torch.Tensor:
        return super().step(y, ctx) + 0.01 * y.mean(0, keepdim=True)


class _Cropping(Grid):
    def step(self, y: torch.Tensor, ctx: dict) -> torch.Tensor:
        return super().step(y, ctx)[:, :, :-1]


class _Expanding(Grid):
    """|G(y) − G(z)| = 1.1 |y − z|."""

    def step(self, y: torch.Tensor, ctx: dict) -> torch.Tensor:
        return 1.1 * y + ctx["f"]


class _Silent(Grid):
    example_input = None


def test_a_sound_model_passes_with_its_contraction_factor() -> None:
    """On the 3×3 example, Jacobi's rate is c·cos(π/4), the spectral radius of the neighbour mean."""
    report = check_model(Grid(c=0.9))
    assert report.ok and not report.warnings, report.render()
    found = re.search(r"contraction factor ≈ ([0-9.]+)", report.render())
    assert found is not None and float(found.group(1)) == pytest.approx(0.9 * math.cos(math.pi / 4), abs=0.01)


def test_check_names_the_broken_part() -> None:
    assert check_model(_Mixing()).problems[0].startswith("batch invariance: row 0")
    assert check_model(_Cropping()).problems == ["step returned shape (1, 3, 2) for state shape (3, 3)"]
    assert "no example_input" in check_model(_Silent()).problems[0]


def test_an_expanding_map_is_warned_about_not_refused() -> None:
    report = check_model(_Expanding())
    assert report.ok and "≥ 1" in report.warnings[0]
