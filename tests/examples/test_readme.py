"""The 30-line model of examples/README.md, as printed there, loads and passes `eqserve check`."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from eqserve.models.check import check_model
from eqserve.models.registry import load_model
from tests.examples.procs import EXAMPLES

FENCE = re.compile(r"^```\w*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(text: str) -> dict[str, str]:
    """The README's code blocks that open with a `# FILENAME` line, by that file name."""
    out = {}
    for block in FENCE.findall(text):
        first = block.splitlines()[0]
        if first.startswith("# ") and "." in first and " " not in first[2:]:
            out[first[2:]] = block
    return out


def test_the_readme_model_passes_check(tmp_path: Path) -> None:
    files = blocks((EXAMPLES / "README.md").read_text())
    for name in ("model.py", "eqserve.toml"):
        (tmp_path / name).write_text(files[name])
    model = load_model(str(tmp_path))
    report = check_model(model)
    assert report.ok and not report.warnings, report.render()

    ctx = model.encode(model.Input.model_validate({"M": [1.0], "e": 0.5}))
    y = model.init(ctx)
    for _ in range(100):
        y = model.step(y, ctx)
    assert torch.allclose(y - 0.5 * torch.sin(y), ctx["M"], atol=1e-12)  # Kepler's equation holds
