"""Grayscale PNG in and out with zlib alone (no imaging library among eqserve's dependencies).

Writes 8-bit grayscale; reads 8-bit, non-interlaced grayscale, grey+alpha, RGB and RGBA (colour is
turned to luma, ITU-R BT.601; alpha is dropped), which covers what clients and browsers produce.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}
"""PNG colour type → samples per pixel."""
LUMA = np.array([0.299, 0.587, 0.114])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """An (H, W) array of intensities in [0, 1] (clipped) as an 8-bit grayscale PNG."""
    pixels = np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    h, w = pixels.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), pixels], axis=1).tobytes()  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def decode_png(data: bytes) -> np.ndarray:
    """An (H, W) float64 array in [0, 1] from PNG bytes; ValueError says what is not supported."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG (bad signature)")
    pos, header, idat = len(SIGNATURE), None, bytearray()
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG has no IHDR chunk")
    w, h, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in CHANNELS or interlace:
        raise ValueError("only 8-bit, non-interlaced grey, grey+alpha, RGB or RGBA PNGs are read")
    n = CHANNELS[colour]
    try:
        raw = np.frombuffer(zlib.decompress(bytes(idat)), np.uint8)
    except zlib.error as exc:
        raise ValueError(f"PNG image data is corrupt: {exc}") from None
    stride = w * n
    if raw.size != h * (stride + 1):
        raise ValueError(f"PNG image data holds {raw.size} bytes, not {h * (stride + 1)}")
    rows = raw.reshape(h, stride + 1)
    out = np.zeros((h, stride), np.int64)
    prev = np.zeros(stride, np.int64)
    for i in range(h):
        out[i] = prev = _unfilter(int(rows[i, 0]), rows[i, 1:].astype(np.int64), prev, n)
    pixels = out.reshape(h, w, n).astype(np.float64) / 255
    if n >= 3:
        return pixels[..., :3] @ LUMA
    return pixels[..., 0]


def _unfilter(kind: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """One scanline with its PNG filter (0 none, 1 sub, 2 up, 3 average, 4 Paeth) undone."""
    if kind == 0:
        return line
    if kind == 2:
        return (line + prev) % 256
    if kind not in (1, 3, 4):
        raise ValueError(f"unknown PNG filter type {kind}")
    out = line.copy()
    for j in range(len(line)):
        left = int(out[j - bpp]) if j >= bpp else 0
        if kind == 1:
            out[j] = (out[j] + left) % 256
        elif kind == 3:
            out[j] = (out[j] + (left + int(prev[j])) // 2) % 256
        else:
            up, corner = int(prev[j]), int(prev[j - bpp]) if j >= bpp else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            out[j] = (out[j] + pred) % 256
    return out
