"""All training pixels of a set of images, flat, with the pixels each partition cell trains on.

nerfstudio's PixelSampler draws from a few cached images per step and takes one mask per image;
a cell needs to draw from *its* pixels of *every* image, so we keep per-cell index lists into one
flat pixel array and draw uniformly from them (what Mega-NeRF does with its per-cell ray files).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from jaxtyping import Bool, Int
from torch import Tensor


class PixelStore:
    """Pixels of images of possibly different sizes, addressed by a flat index.

    Args:
        widths, heights: size of each image.
        values: (P, C) per-pixel values (colour, depth), images concatenated in row-major order.
        cell_masks: per image (H, W, K) membership, or None for one cell holding every pixel.
        valid: (P,) pixels that may be trained on at all (e.g. depth > 0), or None for all.
    """

    def __init__(
        self,
        widths: Sequence[int],
        heights: Sequence[int],
        values: Tensor,
        cell_masks: Optional[List[Bool[Tensor, "H W K"]]] = None,
        valid: Optional[Bool[Tensor, "P"]] = None,
        num_cells: int = 1,
    ) -> None:
        self.widths = torch.as_tensor(list(widths), dtype=torch.long)
        sizes = self.widths * torch.as_tensor(list(heights), dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)])
        assert values.shape[0] == int(self.offsets[-1]), "values must hold every pixel of every image"
        self.values = values
        if cell_masks is None:
            membership = torch.ones(values.shape[0], num_cells, dtype=torch.bool)
        else:
            membership = torch.cat([m.reshape(-1, m.shape[-1]) for m in cell_masks], dim=0)
        if valid is not None:
            membership &= valid[:, None]
        self.cell_indices: List[Int[Tensor, "n"]] = [
            torch.nonzero(membership[:, k], as_tuple=True)[0] for k in range(membership.shape[1])
        ]

    def count(self, cell: int) -> int:
        return int(self.cell_indices[cell].numel())

    def locate(self, flat: Int[Tensor, "n"]) -> Int[Tensor, "n 3"]:
        """Flat pixel indices -> (image, row, column), nerfstudio's ray_indices layout."""
        image = torch.searchsorted(self.offsets, flat, right=True) - 1
        local = flat - self.offsets[image]
        width = self.widths[image]
        return torch.stack([image, local // width, local % width], dim=-1)

    def sample(self, cell: int, num: int, generator: torch.Generator) -> Tuple[Int[Tensor, "n 3"], Tensor]:
        """``num`` pixels drawn uniformly (with replacement) from ``cell``'s pixels."""
        pool = self.cell_indices[cell]
        if pool.numel() == 0 or num <= 0:
            return torch.zeros(0, 3, dtype=torch.long), self.values[:0]
        flat = pool[torch.randint(pool.numel(), (num,), generator=generator)]
        return self.locate(flat), self.values[flat]
