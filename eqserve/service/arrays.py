"""A state tensor in JSON: nested lists in the state's shape, or base64 bytes with dtype and shape.

Large states (a 64×64 field) are several times smaller and far cheaper to encode as base64 than as
nested lists of numbers, so `return.encoding = "base64"` sends the raw little-endian bytes.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Literal

import numpy as np
import torch

from eqserve.models.arrays import DTYPES, ArrayError, decode_base64, little
from eqserve.service.errors import ApiError

Encoding = Literal["list", "base64"]


def encode_state(y: torch.Tensor, encoding: Encoding = "list") -> Any:
    """One row's state y (1, *shape) as nested lists, or as {"encoding", "dtype", "shape", "data"}."""
    row = y[0]
    if encoding == "list":
        return row.float().tolist() if row.dtype != torch.float64 else row.tolist()
    dtype = row.dtype if row.dtype in DTYPES.values() else torch.float32
    name = str(dtype).removeprefix("torch.")
    raw = row.detach().to("cpu", dtype).contiguous().numpy().astype(little(name))
    return {
        "encoding": "base64",
        "dtype": name,
        "shape": list(row.shape),
        "data": base64.b64encode(raw.tobytes()).decode("ascii"),
    }


def decode_state(value: Any, shape: tuple[int, ...], like: torch.Tensor, field: str) -> torch.Tensor:
    """A client's state (nested lists, a flat list of every entry, or base64) as (1, *shape) in the dtype
    and device of `like`; 422 naming `field` when it does not fit."""
    if isinstance(value, dict):
        return _from_base64(value, shape, like, field)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise ApiError(422, "invalid_request", "must be numbers nested in the state's shape", field) from None
    if not np.isfinite(arr).all():
        where = ".".join(str(int(i)) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ApiError(422, "invalid_request", "must be finite numbers", f"{field}.{where}")
    if arr.shape != shape:
        if arr.ndim == 1 and arr.size == math.prod(shape):
            arr = arr.reshape(shape)
        else:
            want = f"shape {list(shape)} (or {math.prod(shape)} numbers)"
            raise ApiError(422, "invalid_request", f"needs {want}, got shape {list(arr.shape)}", field)
    return torch.as_tensor(arr, dtype=like.dtype, device=like.device).unsqueeze(0)


def _from_base64(value: dict, shape: tuple[int, ...], like: torch.Tensor, field: str) -> torch.Tensor:
    try:
        arr = decode_base64(value, shape)
    except ArrayError as exc:
        where = f"{field}.{exc.where}" if exc.where else field
        raise ApiError(422, "invalid_request", exc.message, where) from None
    return torch.as_tensor(arr, dtype=like.dtype, device=like.device).unsqueeze(0)
