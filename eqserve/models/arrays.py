"""Raw arrays in JSON as base64 bytes with dtype and shape: the pure decoder, shared by the server's
state encoding (`eqserve.service.arrays`) and by models whose inputs are large fields."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}
"""The dtypes a base64 array may carry."""


class ArrayError(ValueError):
    """An encoded array that does not decode; `where` is the key at fault ("" for the whole value)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


def little(name: str) -> np.dtype:
    """The little-endian numpy dtype of a dtype's name."""
    return np.dtype(name).newbyteorder("<")


def decode_base64(value: dict[str, Any], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """{"encoding": "base64", "dtype", "shape", "data"} as a finite numpy array (little-endian bytes,
    row-major); `shape`, when given, is the one it must have."""
    if value.get("encoding") != "base64" or not isinstance(value.get("data"), str):
        raise ArrayError("", 'an encoded array needs "encoding": "base64" and "data"')
    name = str(value.get("dtype", ""))
    dtype = DTYPES.get(name)
    if dtype is None:
        raise ArrayError("dtype", f"dtype must be one of {', '.join(DTYPES)}")
    try:
        got = tuple(int(n) for n in value.get("shape", []))
    except (TypeError, ValueError):
        raise ArrayError("shape", "shape must be a list of integers") from None
    if shape is not None and got != tuple(shape):
        raise ArrayError("shape", f"shape must be {list(shape)}")
    if any(n < 0 for n in got):
        raise ArrayError("shape", "shape must not be negative")
    try:
        raw = base64.b64decode(value["data"], validate=True)
    except ValueError:
        raise ArrayError("data", "data is not valid base64") from None
    width = torch.empty((), dtype=dtype).element_size()
    if len(raw) != width * math.prod(got):
        raise ArrayError("data", f"data holds {len(raw)} bytes, not {width * math.prod(got)}")
    arr = np.frombuffer(raw, dtype=little(name)).reshape(got)
    if not np.isfinite(arr).all():
        raise ArrayError("data", "must be finite numbers")
    return arr.copy()
