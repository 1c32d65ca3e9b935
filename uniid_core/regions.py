"""Region masks over a window of the image: the part of a whole-image mask a cropped UNet call sees.

A sampler may run the UNet on a window of the latent (ComfyUI crops the latent to a conditioning
entry's area); the identity's region mask must then be the matching window of the whole-image mask,
at every level's token grid. The mask is sampled bilinearly at the centres of each grid cell, in the
whole image's coordinates: for a window that is the whole image this is exactly
``F.interpolate(mask, size=grid, mode="bilinear", align_corners=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Window(NamedTuple):
    """Where one batch row's UNet input lies in the whole latent (latent pixels) and which mask it uses."""

    latent: int
    top: int
    left: int
    full_height: int
    full_width: int


def _centres(start: int, length: int, cells: int, full: int) -> Tensor:
    """Centres of ``cells`` equal cells over [start, start + length), in grid_sample's coordinates of
    [0, full] (-1 to 1)."""
    centres = start + (torch.arange(cells, dtype=torch.float64) + 0.5) * (length / cells)
    return centres * (2.0 / full) - 1.0


def window_masks(
    mask: Tensor, windows: Sequence[Window], height: int, width: int, levels: int
) -> tuple[Tensor, ...]:
    """The whole-image ``mask`` (n, H, W) over each row's ``height`` x ``width`` window, per level.

    Level l is the token grid of the window halved l times (rounding up, like the UNet's strided
    convolutions); row i uses mask ``windows[i].latent % n``. Returns one (rows, grid cells, 1) float32
    tensor per level, on the mask's device.
    """
    source = mask.float().reshape(-1, 1, *mask.shape[-2:])
    picked = source[[w.latent % source.shape[0] for w in windows]]
    grids = []
    for level in range(levels):
        rows, cols = -(-height // 2**level), -(-width // 2**level)
        ys = torch.stack([_centres(w.top, height, rows, w.full_height) for w in windows])
        xs = torch.stack([_centres(w.left, width, cols, w.full_width) for w in windows])
        points = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
        sampled = F.grid_sample(
            picked,
            points.to(picked.device, torch.float32),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        grids.append(sampled.flatten(2).transpose(1, 2))
    return tuple(grids)
