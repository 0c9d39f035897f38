"""Per-axis zero padding: rows of different state shapes in one flat batch and back."""

from __future__ import annotations

import pytest
import torch

from eqserve.models.padding import bound, fits, pack, pad_mask, refit, unpack


def test_rows_of_different_shapes_pack_per_axis_and_unpack_to_themselves() -> None:
    rows = [torch.arange(6.0).view(1, 2, 3), torch.arange(4.0).view(1, 4, 1)]
    shape = bound([(2, 3), (4, 1)])
    assert shape == (4, 3)
    flat = pack(rows, shape)
    assert flat.shape == (2, 12)
    grid = flat.view(2, 4, 3)
    assert torch.equal(grid[0, :2, :3], rows[0][0]) and grid[0, 2:].abs().sum() == 0
    assert torch.equal(grid[1, :, :1], rows[1][0]) and grid[1, :, 1:].abs().sum() == 0
    for i, r in enumerate(rows):
        assert torch.equal(unpack(flat[i : i + 1], shape, tuple(r.shape[1:])), r)
    mask = pad_mask([(2, 3), (4, 1)], shape, torch.device("cpu"))
    assert mask.sum(1).tolist() == [6, 4]
    assert torch.equal(flat * mask, flat)


def test_refit_moves_a_layout_to_larger_and_back() -> None:
    row = torch.arange(6.0).view(1, 2, 3)
    small = pack([row], (2, 3))
    big = refit(small, (2, 3), (3, 5))
    assert torch.equal(unpack(big, (3, 5), (2, 3)), row)
    assert torch.equal(refit(big, (3, 5), (2, 3)), small)
    hist = torch.stack([small, 2 * small], 1)  # (B, slots, entries): only the last dim is laid out
    assert torch.equal(refit(hist, (2, 3), (3, 5))[:, 1], 2 * big)


def test_shapes_of_different_ranks_cannot_share_a_batch() -> None:
    with pytest.raises(ValueError, match="ranks"):
        bound([(3,), (3, 3)])
    assert fits((2, 3), (2, 3)) and not fits((3, 3), (2, 4)) and not fits((3,), (3, 1))
