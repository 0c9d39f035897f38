"""The built-in models' factories (the `eqserve.models` entry points of eqserve itself) and trainers."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from eqserve.models.base import ImplicitModel
from eqserve.models.looped import LoopedLM
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


def looped_lm() -> LoopedLM:
    """The looped (recurrent-depth) LM in Huginn's layout with its shipped weights."""
    from eqserve.models.looped_lm import checkpoint

    return checkpoint.load(WEIGHTS_DIR / "looped-lm.safetensors")


def _trainer(module: str) -> Callable[..., dict]:
    """`module`'s `train(out_dir, **options)`, imported when called (training code is heavy); an option
    it does not take is a ValueError naming the ones it does."""

    def train(out_dir: Path = WEIGHTS_DIR, **kwargs: object) -> dict:
        fn = import_module(module).train
        takes = [k for k in inspect.signature(fn).parameters if k != "out_dir"]
        if unknown := sorted(set(kwargs) - set(takes)):
            raise ValueError(f"{module} does not take {', '.join(unknown)}; it takes {', '.join(takes)}")
        return fn(out_dir, **kwargs)

    return train


TRAINERS: dict[str, Callable[..., dict]] = {
    name: _trainer(f"eqserve.models.{name.replace('-', '_')}.train")
    for name in ("deq-mlp", "lp-gnn", "deblur", "ns-fno", "looped-lm")
}
"""`eqserve train NAME`: the built-in models that have weights, and the code that trains them."""
