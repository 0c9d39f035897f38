"""The built-in models by name: how to build each, where its weights lie, how to train it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from eqserve.models.base import ImplicitModel

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelEntry:
    """A built-in model: its factory (device → loaded model) and optional trainer."""

    name: str
    build: Callable[[torch.device], ImplicitModel]
    train: Callable[..., dict] | None = None


def _reciprocal(device: torch.device) -> ImplicitModel:
    from eqserve.models.reciprocal import Reciprocal

    return Reciprocal(device=device)


def _deq_mlp(device: torch.device) -> ImplicitModel:
    from eqserve.models.deq_mlp.model import DeqMLP

    return DeqMLP.from_weights(WEIGHTS_DIR / "deq-mlp.safetensors").to(device)


def _train_deq_mlp(out_dir: Path = WEIGHTS_DIR, **kwargs: object) -> dict:
    from eqserve.models.deq_mlp.train import train

    return train(out_dir, **kwargs)  # type: ignore[arg-type]


def _lp_gnn(device: torch.device) -> ImplicitModel:
    from eqserve.models.lp_gnn.model import LpGnn

    return LpGnn.from_weights(WEIGHTS_DIR / "lp-gnn.safetensors").to(device)


def _train_lp_gnn(out_dir: Path = WEIGHTS_DIR, **kwargs: object) -> dict:
    from eqserve.models.lp_gnn.train import train

    return train(out_dir, **kwargs)  # type: ignore[arg-type]


REGISTRY: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry("reciprocal", _reciprocal),
        ModelEntry("deq-mlp", _deq_mlp, _train_deq_mlp),
        ModelEntry("lp-gnn", _lp_gnn, _train_lp_gnn),
    ]
}


def names() -> list[str]:
    """Names of the built-in models."""
    return list(REGISTRY)


def load_model(name: str, device: str | torch.device = "cpu") -> ImplicitModel:
    """Build a built-in model with its shipped weights, in eval mode."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; built-in: {', '.join(REGISTRY)}")
    model = REGISTRY[name].build(torch.device(device))
    return model.eval()
