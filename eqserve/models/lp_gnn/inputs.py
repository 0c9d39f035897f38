"""The lp-gnn request: an LP as arrays (A dense or sparse) or as MPS text, checked into an `LP`.

Every refusal is an InputError naming the field at fault (`input.A.3`, `input.l.7`, `input.mps`, …).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, TypeAdapter, ValidationError

from eqserve.models.base import FiniteFloat, InputError
from eqserve.models.lp_gnn.data import LP
from eqserve.models.lp_gnn.mps import read_mps

ARRAYS = ("A", "b", "c", "constraint_types", "l", "u")


class SparseMatrix(BaseModel):
    """A in coordinate form: shape [m, n], one [i, j] per value."""

    model_config = ConfigDict(extra="forbid")
    shape: tuple[NonNegativeInt, NonNegativeInt]
    indices: list[tuple[NonNegativeInt, NonNegativeInt]]
    values: list[FiniteFloat]


class LpInput(BaseModel):
    """min cᵀy s.t. A y ∘ b, l ≤ y ≤ u (any m × n), or `mps`: the text of an MPS file."""

    model_config = ConfigDict(extra="forbid")
    A: Any = Field(
        default=None,
        description="dense rows [[...], ...] or sparse "
        '{"shape": [m, n], "indices": [[i, j], ...], "values": [...]}',
    )
    b: list[FiniteFloat] | None = None
    c: list[FiniteFloat] | None = None
    constraint_types: list[Literal["<=", "="]] | None = None
    l: list[FiniteFloat] | None = None  # noqa: E741 - the LP's name for the lower bounds
    u: list[FiniteFloat] | None = None
    mps: str | None = None
    reference: bool = Field(
        default=False, description="also solve with HiGHS; return its solution and the error"
    )


_DENSE = TypeAdapter(list[list[FiniteFloat]])
_SPARSE = TypeAdapter(SparseMatrix)


def _parse(adapter: TypeAdapter, value: Any) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(["input.A", *(str(p) for p in first["loc"])])
        raise InputError(field, f"{field}: {first['msg']}") from None


def _matrix(a: Any, n: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(m, rows, cols, vals) of A, which must have n columns."""
    if isinstance(a, dict):
        sparse: SparseMatrix = _parse(_SPARSE, a)
        m, n_a = sparse.shape
        if n_a != n:
            raise InputError("input.A.shape", f"A has {n_a} columns but c has {n} entries")
        if len(sparse.indices) != len(sparse.values):
            raise InputError(
                "input.A.values", f"{len(sparse.values)} values for {len(sparse.indices)} indices"
            )
        seen: set[tuple[int, int]] = set()
        for k, (i, j) in enumerate(sparse.indices):
            if i >= m or j >= n:
                raise InputError(f"input.A.indices.{k}", f"index [{i}, {j}] outside the shape [{m}, {n}]")
            if (i, j) in seen:
                raise InputError(f"input.A.indices.{k}", f"index [{i}, {j}] appears twice")
            seen.add((i, j))
        idx = np.asarray(sparse.indices, dtype=np.int64).reshape(-1, 2)
        return m, idx[:, 0], idx[:, 1], np.asarray(sparse.values, dtype=np.float64)
    dense: list[list[float]] = _parse(_DENSE, a)
    for i, row in enumerate(dense):
        if len(row) != n:
            raise InputError(f"input.A.{i}", f"row {i} of A has {len(row)} entries but c has {n}")
    full = np.asarray(dense, dtype=np.float64).reshape(len(dense), n)
    rows, cols = np.nonzero(full)
    return len(dense), rows, cols, full[rows, cols]


def _length(name: str, values: list[Any], want: int, of: str) -> None:
    if len(values) != want:
        raise InputError(f"input.{name}", f"{name} has {len(values)} entries but {of} is {want}")


def from_lp(lp: LP) -> dict[str, Any]:
    """The JSON input of an LP (A in sparse form): what a client sends for it."""
    return {
        "A": {
            "shape": [lp.m, lp.n],
            "indices": np.stack([lp.rows, lp.cols], 1).tolist(),
            "values": lp.vals.tolist(),
        },
        "b": lp.b.tolist(),
        "c": lp.c.tolist(),
        "constraint_types": ["=" if e else "<=" for e in lp.eq],
        "l": lp.l.tolist(),
        "u": lp.u.tolist(),
    }


def to_lp(inp: LpInput) -> LP:
    """The checked LP of a request."""
    given = [name for name in ARRAYS if getattr(inp, name) is not None]
    if inp.mps is not None:
        if given:
            raise InputError(
                f"input.{given[0]}", "give either mps or the arrays A, b, c, constraint_types, l, u"
            )
        return read_mps(inp.mps)
    for name in ARRAYS:
        if getattr(inp, name) is None:
            raise InputError(f"input.{name}", f"{name} is required (or give mps)")
    assert inp.b is not None and inp.c is not None and inp.constraint_types is not None
    assert inp.l is not None and inp.u is not None
    n = len(inp.c)
    if n == 0:
        raise InputError("input.c", "the LP needs at least one variable")
    m, rows, cols, vals = _matrix(inp.A, n)
    _length("b", inp.b, m, "the number of rows of A")
    _length("constraint_types", inp.constraint_types, m, "the number of rows of A")
    _length("l", inp.l, n, "the number of variables")
    _length("u", inp.u, n, "the number of variables")
    for j, (lo, hi) in enumerate(zip(inp.l, inp.u, strict=True)):
        if lo > hi:
            raise InputError(f"input.l.{j}", f"l[{j}] = {lo} exceeds u[{j}] = {hi}")
    return LP(
        rows,
        cols,
        vals,
        np.asarray(inp.b, dtype=np.float64),
        np.asarray([t == "=" for t in inp.constraint_types], dtype=bool),
        np.asarray(inp.c, dtype=np.float64),
        np.asarray(inp.l, dtype=np.float64),
        np.asarray(inp.u, dtype=np.float64),
    )
