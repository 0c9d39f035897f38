"""What a shipped kernel configuration is, for the fixed and autotuned launchers and the AOT check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

TRITON_TYPES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.bool: "i1",
}
"""Triton's name of each element type the kernels take."""


def ptr(dtype: torch.dtype) -> str:
    """Triton's signature string of a pointer to `dtype`."""
    return "*" + TRITON_TYPES[dtype]


@dataclass(frozen=True)
class Shipped:
    """One kernel configuration the launchers may pick: compiled ahead of time to check that it fits."""

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
