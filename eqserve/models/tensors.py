"""Named tensors of the Open Inference Protocol v2, mapped to and from a model's pydantic fields.

Each field of a schema is one tensor named after it (its alias if it has one): `float` → the model's
float datatype with shape [1], `list[float]` → shape [-1], nested lists → one -1 per level, `int`
→ INT64, `bool` → BOOL, `str` (and str literals) → BYTES. Data travels flat in row-major order, in
the JSON `data` or (see `eqserve.service.v2_binary`) as raw bytes after the JSON.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt
from pydantic.fields import FieldInfo

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]  # fmt: skip
"""The protocol's tensor datatypes (BF16 comes from the binary extension; JSON carries it as numbers)."""

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
INT_TYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})


class Tensor(BaseModel):
    """One tensor as the protocol's JSON carries it; `data` may be flat or nested, row-major, and is
    absent where the tensor's bytes follow the JSON (`parameters.binary_data_size`)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[NonNegativeInt]
    datatype: Datatype
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class TensorError(ValueError):
    """A request tensor that does not fit the model's input; `name` is the tensor at fault."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class NoTensorForm(TypeError):
    """A schema field that no tensor can carry; `field` names it and its annotation."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} has no v2 tensor form; the model must override v2_inputs/v2_outputs")
        self.field = field


def float_datatype(dtype: torch.dtype) -> str:
    """The v2 datatype of a model's float fields (FP32 for dtypes JSON cannot say, like bf16)."""
    return {torch.float16: "FP16", torch.float64: "FP64"}.get(dtype, "FP32")


@dataclass(frozen=True)
class _Kind:
    """What a field's elements are: the datatypes a request may use, and the one we answer with."""

    label: str
    accepts: frozenset[str]
    datatype: str

    def holds(self, v: Any) -> bool:
        """Whether a JSON element is of this kind (a bool is not a number here)."""
        if self.label == "bool":
            return isinstance(v, bool)
        if self.label == "str":
            return isinstance(v, str)
        allowed = int if self.label == "int" else (int, float)
        return isinstance(v, allowed) and not isinstance(v, bool)


_PRIMITIVES = ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"))  # bool before its base int
_ACCEPTS = {"float": FLOAT_TYPES, "int": INT_TYPES, "bool": frozenset({"BOOL"}), "str": frozenset({"BYTES"})}
_ANSWER = {"int": "INT64", "bool": "BOOL", "str": "BYTES"}
"""The datatype each kind is answered with; floats take the model's float datatype."""


def _element(tp: Any) -> tuple[str, int] | None:
    """(element kind, list depth) of a type annotation, or None when it has no tensor form."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _element(args[0])
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _element(rest[0]) if len(rest) == 1 else None
    if origin is list:
        inner = _element(args[0]) if args else None
        return (inner[0], inner[1] + 1) if inner else None
    if origin is Literal:
        kinds = {_element(type(a)) for a in args}
        return kinds.pop() if len(kinds) == 1 else None
    for base, label in _PRIMITIVES:
        if isinstance(tp, type) and issubclass(tp, base):
            return label, 0
    return None


def _flatten(data: Any) -> list[Any]:
    """Nested lists in row-major order as one flat list."""
    if not isinstance(data, list):
        return [data]
    return [v for item in data for v in _flatten(item)]


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    """A flat row-major list as nested lists of `shape`."""
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@dataclass(frozen=True)
class TensorSpec:
    """One field as a named tensor: its kind, rank (0 for a scalar) and whether a request needs it."""

    name: str
    kind: _Kind
    ndim: int
    required: bool

    def metadata(self) -> dict[str, Any]:
        """The protocol's tensor metadata; variable dimensions are -1."""
        return {"name": self.name, "datatype": self.kind.datatype, "shape": [-1] * self.ndim or [1]}

    def decode(self, t: Tensor) -> Any:
        """The field's value from a request tensor; TensorError naming it when it does not fit."""
        what = f"tensor {t.name!r}"
        if t.data is None:
            raise TensorError(t.name, f"{what} has no data: give `data` or `parameters.binary_data_size`")
        if t.datatype not in self.kind.accepts:
            raise TensorError(t.name, f"{what} has datatype {t.datatype}, expected {self.kind.datatype}")
        scalar = self.ndim == 0 and len(t.shape) <= 1 and math.prod(t.shape) == 1
        if not scalar and len(t.shape) != self.ndim:
            raise TensorError(t.name, f"{what} has shape {t.shape}, expected {self.metadata()['shape']}")
        flat, size = _flatten(t.data), math.prod(t.shape)
        if len(flat) != size:
            raise TensorError(t.name, f"{what} of shape {t.shape} needs {size} elements, got {len(flat)}")
        for i, v in enumerate(flat):
            if not self.kind.holds(v):
                raise TensorError(t.name, f"{what} ({t.datatype}): element {i} is {v!r}")
        return flat[0] if self.ndim == 0 else _nest(flat, t.shape)

    def encode(self, value: Any) -> Tensor:
        """A field's value as a tensor with flat data; ValueError when nested lists are ragged."""
        shape, level = [], value
        for _ in range(self.ndim):
            shape.append(len(level))
            level = level[0] if level else []
        flat = _flatten(value)
        if len(flat) != math.prod(shape):
            raise ValueError(f"output {self.name!r} is not a rectangular array")
        return Tensor(name=self.name, shape=shape or [1], datatype=self.kind.datatype, data=flat)


def _spec(schema: type[BaseModel], name: str, f: FieldInfo, float_type: str) -> TensorSpec:
    element = _element(f.annotation)
    if element is None:
        raise NoTensorForm(f"{schema.__name__}.{name}: {f.annotation}")
    label, ndim = element
    kind = _Kind(label, _ACCEPTS[label], _ANSWER.get(label, float_type))
    return TensorSpec(f.alias or name, kind, ndim, f.is_required())


class TensorMap:
    """The named tensors of one pydantic schema, one per field, in field order."""

    def __init__(self, schema: type[BaseModel], float_type: str = "FP32") -> None:
        self.specs = {
            s.name: s for s in (_spec(schema, n, f, float_type) for n, f in schema.model_fields.items())
        }

    def metadata(self) -> list[dict[str, Any]]:
        """Every tensor's name, datatype and shape."""
        return [s.metadata() for s in self.specs.values()]

    def to_dict(self, tensors: list[Tensor]) -> dict[str, Any]:
        """The schema's JSON input from request tensors; TensorError naming the tensor at fault."""
        values: dict[str, Any] = {}
        for t in tensors:
            if t.name not in self.specs:
                raise TensorError(t.name, f"unknown tensor {t.name!r}; expected {', '.join(self.specs)}")
            if t.name in values:
                raise TensorError(t.name, f"tensor {t.name!r} is given twice")
            values[t.name] = self.specs[t.name].decode(t)
        for name, spec in self.specs.items():
            if spec.required and name not in values:
                raise TensorError(name, f"missing tensor {name!r}")
        return values

    def to_tensors(self, values: dict[str, Any]) -> list[Tensor]:
        """The schema's JSON values (a decoded output) as tensors; absent and null fields are left out."""
        return [s.encode(values[n]) for n, s in self.specs.items() if values.get(n) is not None]
