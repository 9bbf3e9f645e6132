"""Point -> cell routing: each 3-D point goes to the cell of its nearest centroid on the ground plane.

The merged field calls this on every sample of every ray, so there are two implementations that
agree on every point (the tests check it):

- `route_to_cells`: any centroids; one broadcast of squared ground-plane distances, O(K) per point.
- `GridRouter`: centroids on a regular grid (as `grid_centroids` makes them); per axis the nearest
  grid centre is found by one division, O(1) per point and no (points x cells) temporary.

Ties (a point exactly as far from two centroids) go to the lower cell index in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from jaxtyping import Float, Int
from torch import Tensor


def route_to_cells(
    points: Float[Tensor, "*batch 3"], centroids: Float[Tensor, "num_cells 3"]
) -> Int[Tensor, "*batch"]:
    """Index of the centroid nearest to each point by ground-plane (world x-y) distance.

    Squared distances are compared directly (no square root and no matrix-product expansion, so
    equal distances stay exactly equal); ties go to the lowest index, as `torch.argmin` returns
    the first minimum.
    """
    ground = points[..., :2].reshape(-1, 1, 2)
    squared = (ground - centroids[:, :2].to(points)).square().sum(dim=-1)  # (P, K)
    return squared.argmin(dim=-1).reshape(points.shape[:-1])


@dataclass(frozen=True)
class GridRouter:
    """Nearest-centroid routing for centroids on a regular ground-plane grid, O(1) per point.

    Squared ground-plane distance to a grid centre is a sum of an x term and a y term, so the
    nearest centre is the nearest one along x combined with the nearest one along y, and along
    one axis the nearest of equally spaced centres is found by a division.
    """

    grid_dim: Tuple[int, int]
    """Cells along world x and world y; cell ``i * grid_dim[1] + j`` (row-major)."""
    lower_corner: Tuple[float, float]
    """World (x, y) of the grid's lower corner (half a cell before the first centroid)."""
    cell_size: Tuple[float, float]
    """Cell size along world x and world y (1.0 along an axis with one cell: unused there)."""

    @classmethod
    def from_centroids(cls, centroids: Float[Tensor, "num_cells 3"], grid_dim: Tuple[int, int]) -> "GridRouter":
        """Recovers the grid from centroids laid out as `grid_centroids` lays them.

        Raises:
            ValueError: the centroids are not a row-major regular grid of that size.
        """
        n0, n1 = grid_dim
        if centroids.shape != (n0 * n1, 3):
            raise ValueError(
                f"expected {n0 * n1} centroids for grid_dim {grid_dim}, got shape {tuple(centroids.shape)}"
            )
        grid = centroids[:, :2].detach().to("cpu", torch.float64).reshape(n0, n1, 2)
        xs, ys = grid[:, 0, 0], grid[0, :, 1]
        step_x = float(xs[1] - xs[0]) if n0 > 1 else 1.0
        step_y = float(ys[1] - ys[0]) if n1 > 1 else 1.0
        expected_x = xs[0] + step_x * torch.arange(n0, dtype=torch.float64)
        expected_y = ys[0] + step_y * torch.arange(n1, dtype=torch.float64)
        scale = max(abs(step_x), abs(step_y), float(grid.abs().max()), 1e-12)
        tolerance = 1e-5 * scale  # centroids may have been stored in float32
        if (
            step_x <= 0
            or step_y <= 0
            or (grid[..., 0] - expected_x[:, None]).abs().max() > tolerance
            or (grid[..., 1] - expected_y[None, :]).abs().max() > tolerance
        ):
            raise ValueError(f"centroids do not form a row-major regular {n0}x{n1} grid increasing along x and y")
        return cls(
            grid_dim=(n0, n1),
            lower_corner=(float(xs[0]) - 0.5 * step_x, float(ys[0]) - 0.5 * step_y),
            cell_size=(step_x, step_y),
        )

    def __call__(self, points: Float[Tensor, "*batch 3"]) -> Int[Tensor, "*batch"]:
        """Cell index of each point; a point on a cell border goes to the lower index."""
        indices = []
        for axis in range(2):
            n = self.grid_dim[axis]
            if n == 1:
                indices.append(torch.zeros(points.shape[:-1], dtype=torch.long, device=points.device))
                continue
            # Continuous cell coordinate u: cell m spans (m, m + 1]. ceil(u) - 1 picks the lower cell on a
            # border (u integer), like argmin's first-minimum rule; clamping in float keeps +-inf valid.
            u = (points[..., axis] - self.lower_corner[axis]) / self.cell_size[axis]
            indices.append(torch.clamp(torch.ceil(u) - 1.0, 0.0, float(n - 1)).long())
        return indices[0] * self.grid_dim[1] + indices[1]
