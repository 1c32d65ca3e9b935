"""Region masks over a window: the whole image gives F.interpolate's grids, a window its part of the mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uniid_core.regions import Window, window_masks


@pytest.mark.parametrize("height,width", [(16, 16), (13, 21), (8, 12)])
def test_whole_image_window_is_bilinear_resize(height, width):
    mask = torch.rand(2, 37, 53, generator=torch.Generator().manual_seed(0))
    rows = [Window(1, 0, 0, height, width), Window(0, 0, 0, height, width), Window(3, 0, 0, height, width)]
    grids = window_masks(mask, rows, height, width, 3)
    for level, grid in enumerate(grids):
        size = (-(-height // 2**level), -(-width // 2**level))
        want = F.interpolate(mask[[1, 0, 1], None], size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(grid, want.flatten(2).transpose(1, 2), rtol=0, atol=1e-5)


def test_window_takes_its_part_of_the_mask():
    """Same-size windows at different places get different masks: the left and right halves of a mask
    that is 1 on the left, and a window straddling the edge gets its left part 1, its right part 0."""
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1.0
    left, right, middle = Window(0, 0, 0, 16, 16), Window(0, 0, 8, 16, 16), Window(0, 0, 4, 16, 16)
    for level, grid in enumerate(window_masks(mask, [left, right, middle], 16, 8, 3)):
        rows, cols = -(-16 // 2**level), -(-8 // 2**level)
        assert grid.shape == (3, rows * cols, 1)
        cells = grid.reshape(3, rows, cols)
        assert torch.equal(cells[0], torch.ones(rows, cols))
        assert torch.equal(cells[1], torch.zeros(rows, cols))
        assert torch.equal(cells[2, :, : cols // 2], torch.ones(rows, cols // 2))
        assert torch.equal(cells[2, :, cols // 2 :], torch.zeros(rows, cols - cols // 2))
