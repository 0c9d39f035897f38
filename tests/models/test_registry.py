"""Model sources: installed names, model directories (with versions), import strings; refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from eqserve import from_module
from eqserve.models.check import check_model
from eqserve.models.registry import ModelLoadError, from_directory, load_model, names, repository, resolve
from eqserve.service.config import Settings
from eqserve.service.state import ServerState


def _model_dir(root: Path, toml: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "eqserve.toml").write_text(toml)
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


GRID_FILE = "from tests.shaped_models import Grid as Base\n\nclass Grid(Base):\n    VERSION = {v}\n"


def test_the_built_in_models_are_installed_entry_points() -> None:
    assert {"reciprocal", "deq-mlp", "lp-gnn"} <= set(names())
    assert resolve("deq-mlp").origin.startswith("entry point eqserve.models.builtin:")


def test_one_class_serves_two_checkpoints_under_two_names(tmp_path: Path) -> None:
    grid = 'entry = "tests.shaped_models:Grid"\n'
    a = _model_dir(tmp_path / "a", 'name = "fine"\n' + grid + "[defaults]\ntol = 1e-3\n")
    b = _model_dir(tmp_path / "b", 'entry = "tests.shaped_models:Grid"\ndescription = "the other"\n')
    state = ServerState(Settings(models=[str(a), str(b)]))
    state.start()
    try:
        assert set(state.served) == {"fine", "b"}
        assert state.served["fine"].model.name == "fine" and state.served["fine"].meta.default_tol == 1e-3
        assert state.served["b"].meta.description == "the other"
    finally:
        state.stop()


def test_the_highest_version_is_served_unless_one_is_pinned(tmp_path: Path) -> None:
    files = {f"{v}/model.py": GRID_FILE.format(v=v) for v in (1, 2, 10)}
    root = _model_dir(tmp_path / "grid", 'entry = "model.py:Grid"\n', files)
    assert type(load_model(str(root))).VERSION == 10  # type: ignore[attr-defined]
    assert type(from_directory(root, version=2).load()).VERSION == 2  # type: ignore[attr-defined]
    (root / "eqserve.toml").write_text('entry = "model.py:Grid"\nversion = 1\n')
    assert "(version 1)" in resolve(str(root)).origin
    assert list(repository(tmp_path)) == ["grid"]


@pytest.mark.parametrize(
    ("toml", "files", "message"),
    [
        ('entry = "model.py:Grid"\ncolour = "red"\n', {}, "unknown key(s) colour"),
        ('name = "x"\n', {}, "'entry' is required"),
        ('entry = "model.py:Grid"\n', {}, "no file"),
        ('entry = "model.py:Nope"\n', {"model.py": "x = 1\n"}, "has no attribute 'Nope'"),
        ('entry = "model.py:Grid"\n', {"model.py": "raise ImportError('torchvision')\n"}, "failed to import"),
        ('entry = "model.py:Grid"\nweights = "w.safetensors"\n', {}, "w.safetensors does not exist"),
        ('entry = "model.py:Grid"\ndtype = "int8"\n', {}, "not a torch floating dtype"),
        ('entry = "model.py:Grid"\nversion = 3\n', {"1/model.py": ""}, "version 3 is pinned"),
        ('entry = "model.py:Grid"\n[defaults]\nspeed = 1\n', {}, "[defaults] takes only"),
        (
            'entry = "model.py:Half"\n',
            {"model.py": "from eqserve import ImplicitModel\nclass Half(ImplicitModel):\n    pass\n"},
            "Half does not define encode, state_shape, step, decode",
        ),
        ('entry = "tests.shaped_models:KERNEL"\n', {}, "is a Tensor, not an ImplicitModel"),
    ],
)
def test_a_broken_model_directory_is_refused_naming_the_problem(
    tmp_path: Path, toml: str, files: dict[str, str], message: str
) -> None:
    root = _model_dir(tmp_path / "bad", toml, files)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(root))
    assert message in str(err.value)


def test_an_unknown_spec_names_what_is_installed() -> None:
    with pytest.raises(ValueError, match=r"installed: .*reciprocal"):
        Settings(models=["no-such-model"])


class _Contracting(nn.Module):
    """A torchdeq-style f(z, x): tanh(W z + x) with ‖W‖₂ = 0.5."""

    def __init__(self, n: int) -> None:
        super().__init__()
        w = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
        self.W = nn.Parameter(0.5 * w / torch.linalg.matrix_norm(w, ord=2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + x)


def test_from_module_serves_an_existing_module_and_passes_check() -> None:
    model = from_module(_Contracting(8), state_shape=(8,), example_input={"x": [0.1] * 8}, name="f")
    report = check_model(model)
    assert report.ok, report.render()
    assert any("contraction factor" in line for line in report.lines)
    assert model.meta().state_shape == [8] and model.name == "f"
