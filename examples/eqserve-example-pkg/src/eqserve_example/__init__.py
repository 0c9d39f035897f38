"""eqserve's packaging example: a torchdeq-style layer served unchanged through `eqserve.from_module`.

The package advertises `example_deq` under the `eqserve.models` entry-point group (pyproject.toml), so
once it is installed `eqserve serve example-deq` and `eqserve check example-deq` find it by name. The
layer's weights are drawn from a fixed seed when it is built (a few hundred numbers, the same on every
machine): the example shows the packaging, not a trained network.
"""

from __future__ import annotations

from typing import Any

import torch

from eqserve import ImplicitModel, InputError, from_module
from eqserve_example.layer import DEQLayer

D_IN, D_HIDDEN = 8, 16


def _encode(inp: Any) -> torch.Tensor:
    """One request's injection x, (1, D_IN); a wrong length is the request's fault (422)."""
    if len(inp.x) != D_IN:
        raise InputError("x", f"x must hold {D_IN} numbers, not {len(inp.x)}")
    return torch.tensor([inp.x], dtype=torch.float32)


def _decode(z: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
    return {"y": z[0].tolist()}


def example_deq() -> ImplicitModel:
    """The served model: G(z, x) = DEQLayer(z, x), a state of D_HIDDEN numbers per request."""
    return from_module(
        DEQLayer(D_IN, D_HIDDEN),
        state_shape=(D_HIDDEN,),
        encode=_encode,
        decode=_decode,
        description="A torchdeq-style DEQ layer tanh(Wz + Ux + b), ‖W‖₂ = 0.8, weights from a fixed seed",
        example_input={"x": [0.5, -1.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.75]},
        defaults={"max_iters": 200, "tol": 1e-6},
    )
