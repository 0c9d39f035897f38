"""The implicit-model contract: encode once, init, step G(y, x) over a batch, decode."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file
from torch import nn

from eqserve.models.padding import bound, fits, pad_to
from eqserve.models.tensors import TensorMap, float_datatype

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""A JSON number that must be finite (NaN and ±Infinity are refused with 422)."""

Ctx = dict[str, torch.Tensor]
"""A request's context: tensors with a leading batch dimension of 1 (one row)."""


class InputError(ValueError):
    """A request input that the model refuses; `field` is the dotted path of the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class ModelMeta:
    """What a client and the server need to know about a served model."""

    name: str
    description: str
    state_shape: list[int] | None
    """The state shape of the example input (None without one): what a warm start looks like."""
    dtype: str
    example_input: dict[str, Any] | None
    default_max_iters: int = 100
    default_tol: float = 1e-5
    default_stop_mode: str = "abs"
    default_solver: dict[str, Any] = field(
        default_factory=lambda: {"method": "picard", "damping": 1.0, "m": 10}
    )
    fused_kernel: bool = False


@dataclass
class EvalReport:
    """Error of the t-step map on a model's held-out set, for each t (the paper's E_t)."""

    model: str
    metric: str
    t: list[int]
    error: list[float]
    params: int
    baseline: dict[str, Any] | None = None


DEFAULT_KEYS = frozenset({"max_iters", "tol", "stop_mode", "solver"})
"""The request defaults a model (or its `eqserve.toml`'s `[defaults]`) may set."""


class ImplicitModel(nn.Module):
    """An operator G(y, x) whose fixed point y* = G(y*, x) is the answer.

    A model sets `Input` and `Output` (pydantic schemas) and implements `encode`, `state_shape`,
    `step` and `decode`; everything else is optional. Each row's state has the shape
    `state_shape(ctx)`; the engine stacks rows into (B, *S), S the per-axis maximum of the batch's
    shapes, zero-padded per axis, and zeroes G(y) in each row's padding, so rows of different shapes
    share a batch. `name` is per instance (the server sets it from the model's configuration), so one
    class serves two checkpoints under two names.
    """

    name: str = ""
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    description: str = ""
    """One line for clients; the class docstring's first line when empty."""
    example_input: dict[str, Any] | None = None
    """An input that `eqserve check` and the live page start from."""
    defaults: dict[str, Any] = {}  # noqa: RUF012 (read-only; an instance may replace it)
    """Request defaults: `max_iters`, `tol`, `stop_mode`, `solver` ({"method", "damping", "m"})."""
    state_dtype: torch.dtype | None = None
    """The state's dtype where the model has no parameters to take it from (None: torch's default)."""
    batch_invariant: ClassVar[bool] = False
    """Whether `step` gives each row the same bits whatever shares its batch while
    `eqserve.kernels.invariant.enabled()` (batch-invariant mode); without it that mode steps rows one
    at a time."""
    compile_step: ClassVar[bool] = False
    """Whether `step` is known to run faster under torch.compile: `--compile-step auto` compiles the
    steps of the models that say so."""

    def encode(self, inp: BaseModel) -> Ctx:
        """Everything that depends on the input alone, computed once per request (one row)."""
        raise NotImplementedError

    def state_shape(self, ctx: Ctx) -> tuple[int, ...]:
        """One row's state shape, e.g. (n,), (n, n) or (3, 64, 64)."""
        raise NotImplementedError

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        """G(y, x) for a batch: y is (B, *S), ctx is `collate` of B contexts."""
        raise NotImplementedError

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        """The JSON output for one row: y is (1, *state_shape(ctx)), ctx one request's context."""
        raise NotImplementedError

    def init(self, ctx: Ctx) -> torch.Tensor:
        """The starting state y0 of one request, shape (1, *state_shape(ctx))."""
        return torch.zeros(1, *self.state_shape(ctx), dtype=self.dtype(), device=self.device())

    def state_size(self, ctx: Ctx) -> int:
        """Number of state entries of this request's row."""
        return math.prod(self.state_shape(ctx))

    def meta(self) -> ModelMeta:
        """Metadata for clients, from `description`, `example_input` and `defaults`."""
        doc = (type(self).__doc__ or "").strip().splitlines()
        d = self.defaults
        shape = None
        if self.example_input is not None:
            shape = list(self.state_shape(self.encode(self.Input.model_validate(self.example_input))))
        return ModelMeta(
            name=self.name,
            description=self.description or (doc[0] if doc else ""),
            state_shape=shape,
            dtype=str(self.dtype()).removeprefix("torch."),
            example_input=self.example_input,
            default_max_iters=int(d.get("max_iters", 100)),
            default_tol=float(d.get("tol", 1e-5)),
            default_stop_mode=str(d.get("stop_mode", "abs")),
            default_solver={"method": "picard", "damping": 1.0, "m": 10} | dict(d.get("solver", {})),
            fused_kernel=type(self).dense_form is not ImplicitModel.dense_form,
        )

    def dense_form(self, ctx: Ctx) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W, inj) when G(y) = tanh(y Wᵀ + inj) for this batch context, so fused kernels can serve
        the step; None (the default) for any other operator."""
        return None

    def collate(self, ctxs: list[Ctx]) -> Ctx:
        """Stack B contexts into one batch context along dim 0, zero-padding each tensor per axis to
        the batch's largest where their shapes differ (row i stays row i: row-aligned)."""
        out = {}
        for k in ctxs[0]:
            parts = [c[k] for c in ctxs]
            shapes = {tuple(p.shape[1:]) for p in parts}
            if len(shapes) > 1:
                top = bound(list(shapes))
                parts = [pad_to(p, top) for p in parts]
            out[k] = torch.cat(parts, dim=0)
        return out

    @property
    def row_aligned(self) -> bool:
        """Whether row i of every batch-context tensor belongs to row i of the batch (the default
        `collate`), so rows can be selected, appended and replaced without collating again."""
        return type(self).collate is ImplicitModel.collate

    def rebatch(self, bctx: Ctx, keep: torch.Tensor | None, kept: list[Ctx], fresh: list[Ctx]) -> Ctx:
        """The batch context once rows `keep` of `bctx` (None: all of them) stay and `fresh` join.

        `kept` are the staying rows' own contexts. With the default, row-aligned `collate` the kept
        rows are selected and the fresh ones appended; a model with its own `collate` collates again.
        """
        if not self.row_aligned or not bctx:
            return self.collate(kept + fresh)
        out = bctx if keep is None else {k: v.index_select(0, keep) for k, v in bctx.items()}
        if fresh:
            out = self.collate([out, self.collate(fresh)])
        if keep is not None:  # rows left: the largest may have gone, so fit the padding to those staying
            rows = kept + fresh
            for k, v in out.items():
                top = bound([tuple(c[k].shape[1:]) for c in rows])
                if tuple(v.shape[1:]) != top:
                    out[k] = pad_to(v, top)
        return out

    def placeable(self, bctx: Ctx, fresh: list[Ctx]) -> bool:
        """Whether `fresh` contexts fit the batch context's rows as they are (row-aligned models)."""
        return all(fits(tuple(c[k].shape[1:]), tuple(v.shape[1:])) for c in fresh for k, v in bctx.items())

    def place(self, bctx: Ctx, slots: torch.Tensor, fresh: list[Ctx]) -> None:
        """Write the `fresh` contexts into rows `slots` of the batch context, in place (row-aligned
        models only: the engine re-collates the others through `rebatch`)."""
        new = self.collate(fresh)
        for k, v in bctx.items():
            v.index_copy_(0, slots, pad_to(new[k], tuple(v.shape[1:])))

    def evaluate(self, iters: list[int]) -> EvalReport:
        """E_t on the model's shipped held-out set."""
        raise NotImplementedError(f"model {self.name!r} ships no held-out set")

    def _placement(self) -> tuple[torch.dtype, torch.device]:
        """(dtype, device) of the first parameter or buffer (`state_dtype` on the CPU without one), kept
        until `.to()` and friends move the model: walking `parameters()` per request is not free."""
        if (found := self.__dict__.get("_placed")) is None:
            first = next(itertools.chain(self.parameters(), self.buffers()), None)
            if first is None:
                found = (self.state_dtype or torch.get_default_dtype(), torch.device("cpu"))
            else:
                found = (self.state_dtype or first.dtype, first.device)
            self.__dict__["_placed"] = found
        return found

    def _apply(self, fn: Any, recurse: bool = True) -> ImplicitModel:
        """nn.Module's parameter conversion (`to`, `cuda`, `double`, ...); forgets the kept placement."""
        self.__dict__.pop("_placed", None)
        return super()._apply(fn, recurse)

    def dtype(self) -> torch.dtype:
        """The dtype of the state."""
        return self._placement()[0]

    def device(self) -> torch.device:
        """The device the model lives on."""
        return self._placement()[1]

    def load(self, path: str | Path) -> ImplicitModel:
        """Load weights from a safetensors checkpoint (strict: every tensor must match)."""
        self.load_state_dict(load_file(str(path)), strict=True)
        return self

    def output_schema(self) -> dict[str, Any]:
        """JSON schema of the decoded output."""
        return self.Output.model_json_schema()

    def input_schema(self) -> dict[str, Any]:
        """JSON schema of the input."""
        return self.Input.model_json_schema()

    def v2_inputs(self) -> TensorMap:
        """The input as named v2 tensors, one per `Input` field; override for another mapping."""
        return TensorMap(self.Input, float_datatype(self.dtype()))

    def v2_outputs(self) -> TensorMap:
        """The output as named v2 tensors, one per `Output` field; override for another mapping."""
        return TensorMap(self.Output, float_datatype(self.dtype()))


def run_iterations(
    model: ImplicitModel, ctx: Ctx, y0: torch.Tensor, iters: list[int]
) -> dict[int, torch.Tensor]:
    """Plain Picard y_t = G(y_{t-1}, x), returning y_t at each t in `iters` (for E_t and L_t)."""
    out: dict[int, torch.Tensor] = {}
    y = y0
    wanted = sorted(set(iters))
    t = 0
    with torch.no_grad():
        for target in wanted:
            while t < target:
                y = model.step(y, ctx)
                t += 1
            out[target] = y
    return out
