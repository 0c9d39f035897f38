"""Zero-padding of per-request rows of different widths into one batch."""

from __future__ import annotations

import torch


def pad_rows(rows: list[torch.Tensor], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (1, n_i) rows into (B, width) with zeros past each n_i; returns (batch, mask)."""
    width = width or max(r.shape[1] for r in rows)
    if all(r.shape[1] == width for r in rows):
        batch = torch.cat(rows, dim=0)
        return batch, torch.ones_like(batch, dtype=torch.bool)
    batch = rows[0].new_zeros(len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=batch.device)
    for i, r in enumerate(rows):
        batch[i, : r.shape[1]] = r[0]
        mask[i, : r.shape[1]] = True
    return batch, mask
