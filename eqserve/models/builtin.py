"""The built-in models' factories (the `eqserve.models` entry points of eqserve itself) and trainers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from eqserve.models.base import ImplicitModel
from eqserve.models.shipped import WEIGHTS_DIR


def reciprocal() -> ImplicitModel:
    """The paper's toy case; no weights."""
    from eqserve.models.reciprocal import Reciprocal

    return Reciprocal()


def deq_mlp() -> ImplicitModel:
    """The dense DEQ layer with its shipped weights."""
    from eqserve.models.deq_mlp.model import DeqMLP

    return DeqMLP.from_weights(WEIGHTS_DIR / "deq-mlp.safetensors")


def lp_gnn() -> ImplicitModel:
    """The implicit GNN for linear programs with its shipped weights."""
    from eqserve.models.lp_gnn.model import LpGnn

    return LpGnn.from_weights(WEIGHTS_DIR / "lp-gnn.safetensors")


def deblur() -> ImplicitModel:
    """DEQ-PGD image deblurring with its shipped weights."""
    from eqserve.models.deblur.model import Deblur

    return Deblur.from_weights(WEIGHTS_DIR / "deblur.safetensors")


def ns_fno() -> ImplicitModel:
    """Steady 2-D Navier–Stokes as a DEQ with a Fourier layer, with its shipped weights."""
    from eqserve.models.ns_fno.model import NsFno

    return NsFno.from_weights(WEIGHTS_DIR / "ns-fno.safetensors")


def _train_deq_mlp(out_dir: Path = WEIGHTS_DIR, **kwargs: object) -> dict:
    from eqserve.models.deq_mlp.train import train

    return train(out_dir, **kwargs)  # type: ignore[arg-type]


def _train_lp_gnn(out_dir: Path = WEIGHTS_DIR, **kwargs: object) -> dict:
    from eqserve.models.lp_gnn.train import train

    return train(out_dir, **kwargs)  # type: ignore[arg-type]


def _train_deblur(out_dir: Path = WEIGHTS_DIR, **kwargs: object) -> dict:
    from eqserve.models.deblur.train import train

    return train(out_dir, **kwargs)  # type: ignore[arg-type]


TRAINERS: dict[str, Callable[..., dict]] = {
    "deq-mlp": _train_deq_mlp,
    "lp-gnn": _train_lp_gnn,
    "deblur": _train_deblur,
}
"""`eqserve train NAME`: the built-in models that have weights, and the code that trains them."""
