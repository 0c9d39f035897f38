"""Where the kernel tests run: under TRITON_INTERPRET=1 on the CPU, compiled on CUDA when present.

Triton decides when a kernel is decorated whether it is interpreted, so the variable is set here,
before any kernel module is imported (kernels.dispatch imports them lazily). Where CUDA is present
the kernels compile and the CPU cases skip; bf16 runs on CUDA only (the interpreter has no bf16 math).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from eqserve.kernels.dispatch import interpreting

INTERPRET = interpreting()
CUDA = torch.cuda.is_available() and not INTERPRET

_math = sys.modules.get("eqserve.kernels.triton_math")
if INTERPRET and _math is not None and type(_math.tanh).__name__ != "InterpretedFunction":
    raise pytest.UsageError("a Triton kernel module was imported before TRITON_INTERPRET=1 was set")

_ON_CPU = pytest.mark.skipif(
    not INTERPRET, reason="the CPU runs Triton kernels only under TRITON_INTERPRET=1"
)
_ON_CUDA = pytest.mark.skipif(
    not CUDA,
    reason="no CUDA device"
    if not torch.cuda.is_available()
    else "TRITON_INTERPRET=1 runs kernels on the CPU",
)
CASES = [
    pytest.param(("cpu", torch.float32), id="cpu-fp32", marks=_ON_CPU),
    pytest.param(("cuda", torch.float32), id="cuda-fp32", marks=_ON_CUDA),
    pytest.param(("cuda", torch.bfloat16), id="cuda-bf16", marks=_ON_CUDA),
]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[str, torch.dtype]:
    """(device, dtype) of one kernel run: cpu-fp32 interpreted; cuda-fp32 and cuda-bf16 compiled."""
    return request.param


@pytest.fixture(params=[pytest.param("cpu", marks=_ON_CPU), pytest.param("cuda", marks=_ON_CUDA)])
def device(request: pytest.FixtureRequest) -> str:
    """The device of a kernel run whose dtype is fixed (fp32)."""
    return request.param
