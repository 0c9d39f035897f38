"""The v2 protocol's binary tensor data extension: tensors as raw bytes after the JSON header.

Such a body is the JSON header followed by the bytes of each binary tensor, in tensor order; the
`Inference-Header-Content-Length` HTTP header gives the JSON header's length and each tensor's
`parameters.binary_data_size` its byte count. Elements are little-endian, row-major: BOOL one byte,
BF16 the upper half of an FP32, BYTES a 4-byte length and the bytes. Triton's clients send tensors
this way by default (JSON of a large tensor is several times its bytes, and slow to parse).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from eqserve.models.tensors import Tensor
from eqserve.service.errors import ApiError

HEADER = "Inference-Header-Content-Length"
"""The HTTP header that says where the JSON ends and the tensors' bytes begin."""

SIZE = "binary_data_size"
"""The tensor parameter that gives a binary tensor's byte count."""

_NUMPY = {
    "BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip
"""The numpy dtype of each fixed-size datatype's elements on the wire."""


def _bad(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_tensor", f"{field}: {message}", field)


def split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, the bytes after it) of a request body; all JSON without the HTTP header."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 <= n <= len(body):
        raise _bad(HEADER, f"{header_length!r} is not a length within the body's {len(body)} bytes")
    return body[:n], body[n:]


def _elements(datatype: str, raw: bytes, field: str) -> list[Any]:
    """The flat elements of one tensor's bytes."""
    if datatype == "BYTES":
        out, i = [], 0
        while i < len(raw):
            if i + 4 > len(raw):
                raise _bad(field, f"BYTES element at byte {i} has a truncated length")
            (n,) = struct.unpack_from("<I", raw, i)
            if i + 4 + n > len(raw):
                raise _bad(field, f"BYTES element at byte {i} runs past the tensor's end")
            try:
                out.append(raw[i + 4 : i + 4 + n].decode())
            except UnicodeDecodeError:
                raise _bad(field, f"BYTES element at byte {i} is not UTF-8 text") from None
            i += 4 + n
        return out
    width = 2 if datatype == "BF16" else np.dtype(_NUMPY[datatype]).itemsize
    if len(raw) % width:
        raise _bad(field, f"{len(raw)} bytes is not a whole number of {datatype} elements")
    if datatype == "BF16":
        return (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4").tolist()
    return np.frombuffer(raw, _NUMPY[datatype]).tolist()


def read_inputs(inputs: list[Tensor], tail: bytes) -> None:
    """Fill the `data` of every binary input from `tail`, the bytes after the JSON header; a 400
    naming the input whose declared size, datatype or element count does not fit."""
    offset = 0
    for i, t in enumerate(inputs):
        size = (t.parameters or {}).get(SIZE)
        if size is None:
            continue
        field = f"inputs.{i}.parameters.{SIZE}"
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(field, f"{size!r} is not a byte count")
        if t.data is not None:
            raise _bad(f"inputs.{i}.data", f"tensor {t.name!r} has both `data` and binary data")
        if offset + size > len(tail):
            left = len(tail) - offset
            raise _bad(field, f"tensor {t.name!r} needs {size} bytes; {left} follow the JSON ({HEADER})")
        t.data = _elements(t.datatype, tail[offset : offset + size], field)
        offset += size
    if offset != len(tail):
        raise _bad(HEADER, f"{len(tail) - offset} bytes after the JSON header belong to no input")


def _bytes(datatype: str, flat: list[Any]) -> bytes:
    """One tensor's flat elements as bytes."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (str(s).encode() for s in flat))
    return np.asarray(flat, _NUMPY[datatype]).tobytes()


def encode(header: dict[str, Any], outputs: list[Tensor], binary: list[bool]) -> tuple[bytes, int]:
    """(body, JSON header length) of a response whose outputs flagged in `binary` travel as bytes."""
    parts, listed = [], []
    for t, raw in zip(outputs, binary, strict=True):
        if raw:
            data = _bytes(t.datatype, t.data or [])
            parts.append(data)
            t = t.model_copy(update={"data": None, "parameters": {**(t.parameters or {}), SIZE: len(data)}})
        listed.append(t.model_dump(exclude_none=True))
    head = json.dumps({**header, "outputs": listed}, allow_nan=False, separators=(",", ":")).encode()
    return head + b"".join(parts), len(head)
