"""Zero-padding per axis: rows of different state shapes share one flat batch.

A batch of rows with shapes s_i is held flat as (B, prod(S)), where S is the per-axis maximum of
the s_i and each row is its own state zero-padded per axis to S and flattened. One-dimensional
states reduce to padding the tail of each row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Shape = tuple[int, ...]


def bound(shapes: list[Shape]) -> Shape:
    """The per-axis maximum of `shapes` (all of one rank)."""
    ranks = {len(s) for s in shapes}
    if len(ranks) != 1:
        raise ValueError(f"state shapes of different ranks cannot share a batch: {sorted(set(shapes))}")
    return tuple(max(axis) for axis in zip(*shapes, strict=True))


def fits(shape: Shape, bounds: Shape) -> bool:
    """Whether `shape` lies within `bounds` on every axis."""
    return len(shape) == len(bounds) and all(a <= b for a, b in zip(shape, bounds, strict=True))


def pad_to(t: torch.Tensor, shape: Shape) -> torch.Tensor:
    """(B, *s) zero-padded per axis to (B, *shape), or cut where s is larger."""
    if tuple(t.shape[1:]) == shape:
        return t
    t = t[(slice(None), *(slice(0, n) for n in shape))]
    pairs = zip(reversed(t.shape[1:]), reversed(shape), strict=True)
    return F.pad(t, [p for have, want in pairs for p in (0, want - have)])


def refit(flat: torch.Tensor, old: Shape, new: Shape) -> torch.Tensor:
    """(..., prod(old)) laid out per `old` → (..., prod(new)) laid out per `new`."""
    if old == new:
        return flat
    lead = flat.shape[:-1]
    t = flat.reshape(-1, *old)
    return pad_to(t, new).reshape(*lead, math.prod(new))


def pack(rows: list[torch.Tensor], shape: Shape) -> torch.Tensor:
    """Rows (1, *s_i) into one flat (B, prod(shape)) batch."""
    if all(tuple(r.shape[1:]) == shape for r in rows):
        return torch.cat(rows).reshape(len(rows), -1)
    return torch.cat([pad_to(r, shape) for r in rows]).reshape(len(rows), -1)


def unpack(flat: torch.Tensor, bounds: Shape, shape: Shape) -> torch.Tensor:
    """A row (1, prod(bounds)) of a flat batch as its own (1, *shape) state (a view where it can be)."""
    if len(shape) == 1 and shape == bounds:  # a full 1-D row is its own state already
        return flat
    t = flat.reshape(1, *bounds)
    return t if shape == bounds else t[(slice(None), *(slice(0, n) for n in shape))]


def pad_mask(shapes: list[Shape], bounds: Shape, device: torch.device) -> torch.Tensor:
    """(B, prod(bounds)) bool: True on the entries that belong to each row's own shape."""
    ones = [torch.ones(1, *s, dtype=torch.bool, device=device) for s in shapes]
    return pack(ones, bounds)


def pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, n_i) rows stacked into (B, max n_i) with zeros past each n_i, and the mask of the entries
    that belong to a row (False in the padding)."""
    shapes = [(r.shape[1],) for r in rows]
    width = bound(shapes)
    return pack(rows, width), pad_mask(shapes, width, rows[0].device)
