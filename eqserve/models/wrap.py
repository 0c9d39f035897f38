"""`eqserve.from_module`: serve an existing `nn.Module` f(z, x) — the form torchdeq users have — as is.

The module's forward is the operator G; `encode` turns a request's input into the injected tensor x
(one row, leading dim 1) and `decode` one row's fixed point into the JSON output. Without them the
input is `{"x": numbers nested in x's shape}` and the output `{"y": the state as nested lists}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from eqserve.models.base import Ctx, ImplicitModel


class TensorInput(BaseModel):
    """The injected input x as numbers nested in its shape (without the batch dimension)."""

    model_config = ConfigDict(extra="forbid")
    x: list[Any]


class StateOutput(BaseModel):
    """The fixed point as numbers nested in the state's shape."""

    y: list[Any]


class ModuleModel(ImplicitModel):
    """An ImplicitModel around a module f(z, x): G(y, x) = f(y, x)."""

    Input = TensorInput
    Output = StateOutput

    def __init__(
        self,
        f: nn.Module,
        *,
        state_shape: tuple[int, ...] | Callable[[torch.Tensor], tuple[int, ...]],
        encode: Callable[[Any], torch.Tensor] | None = None,
        decode: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.f = f
        self._shape = state_shape
        self._encode = encode
        self._decode = decode

    def encode(self, inp: BaseModel) -> Ctx:
        if self._encode is not None:
            x = self._encode(inp)
        else:
            x = torch.tensor(inp.x, dtype=self.dtype()).unsqueeze(0)  # type: ignore[attr-defined]
        return {"x": x.to(self.device(), self.dtype())}

    def state_shape(self, ctx: Ctx) -> tuple[int, ...]:
        shape = self._shape(ctx["x"]) if callable(self._shape) else self._shape
        return tuple(int(n) for n in shape)

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        return self.f(y, ctx["x"])

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        if self._decode is not None:
            return self._decode(y, ctx["x"])
        return {"y": y[0].tolist()}


def from_module(
    f: nn.Module,
    *,
    state_shape: tuple[int, ...] | Callable[[torch.Tensor], tuple[int, ...]],
    encode: Callable[[Any], torch.Tensor] | None = None,
    decode: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]] | None = None,
    Input: type[BaseModel] | None = None,
    Output: type[BaseModel] | None = None,
    name: str = "",
    description: str = "",
    example_input: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> ImplicitModel:
    """A served model whose G is `f(z, x)`.

    `state_shape` is one row's state shape (or a function of the encoded x giving it); `encode(inp)`
    returns x for one request (leading dim 1) from the validated `Input`; `decode(y, x)` returns one
    row's output as a dict. `Input`/`Output` are pydantic models (default: `{"x": [...]}` in,
    `{"y": [...]}` out).
    """
    schemas: dict[str, Any] = {}
    if Input is not None:
        schemas["Input"] = Input
    if Output is not None:
        schemas["Output"] = Output
    cls = type(f"{type(f).__name__}Model", (ModuleModel,), schemas) if schemas else ModuleModel
    model = cls(f, state_shape=state_shape, encode=encode, decode=decode)
    model.name = name or type(f).__name__.lower()
    model.description = description or f"G(y, x) = {type(f).__name__}(y, x)"
    model.example_input = example_input
    if defaults:
        model.defaults = dict(defaults)
    return model
