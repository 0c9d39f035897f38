"""Zero-padding of per-request rows of different widths into one batch."""

from __future__ import annotations

import torch


def stack_rows(rows: list[torch.Tensor], width: int | None = None) -> torch.Tensor:
    """Stack (1, n_i) rows into (B, width) with zeros past each n_i."""
    width = width or max(r.shape[1] for r in rows)
    if all(r.shape[1] == width for r in rows):
        return torch.cat(rows, dim=0)
    batch = rows[0].new_zeros(len(rows), width)
    for i, r in enumerate(rows):
        batch[i, : r.shape[1]] = r[0]
    return batch


def pad_rows(rows: list[torch.Tensor], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`stack_rows` and the mask of the entries that belong to a row (False in the padding)."""
    width = width or max(r.shape[1] for r in rows)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=rows[0].device)
    for i, r in enumerate(rows):
        mask[i, : r.shape[1]] = True
    return stack_rows(rows, width), mask
