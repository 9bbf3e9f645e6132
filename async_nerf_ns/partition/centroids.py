"""Cell centroids: a regular grid over the ground-plane extent of the cameras (Mega-NeRF)."""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float
from torch import Tensor


def grid_centroids(
    camera_positions_world: Float[Tensor, "num_cameras 3"],
    grid_dim: Tuple[int, int],
    altitude: float = 0.0,
) -> Float[Tensor, "num_cells 3"]:
    """Centres of a ``grid_dim[0] x grid_dim[1]`` grid laid over the cameras' ground-plane extent.

    The grid covers the world x-y bounding box of the camera centres, split into equal cells;
    each centroid is the centre of its cell. Order is row-major: centroid ``k = i * grid_dim[1] + j``
    is the i-th cell along world x and the j-th along world y, both from the smallest coordinate.

    Args:
        camera_positions_world: camera centres in the world frame (z up).
        grid_dim: cells along world x and world y.
        altitude: world z given to every centroid (routing ignores it; it places them in plots).

    Raises:
        ValueError: no cameras, non-finite positions, or more than one cell along an axis over
            which the cameras do not spread (the cells would coincide).
    """
    if camera_positions_world.ndim != 2 or camera_positions_world.shape[-1] != 3:
        raise ValueError(f"camera positions must have shape (N, 3), got {tuple(camera_positions_world.shape)}")
    if camera_positions_world.shape[0] == 0:
        raise ValueError("cannot lay a cell grid over zero cameras")
    if not torch.isfinite(camera_positions_world).all():
        raise ValueError("camera positions contain non-finite values; cannot lay a cell grid over them")
    positions = camera_positions_world.to(torch.float64)
    lo = positions[:, :2].min(dim=0).values
    hi = positions[:, :2].max(dim=0).values
    axis_centres = []
    for axis, (n, name) in enumerate(zip(grid_dim, ("x", "y"))):
        extent = float(hi[axis] - lo[axis])
        if n > 1 and extent <= 0.0:
            raise ValueError(
                f"the cameras do not spread along world {name} (extent {extent}), so {n} cells along it would "
                f"coincide; use grid_dim[{axis}] = 1"
            )
        step = extent / n
        axis_centres.append(lo[axis] + (torch.arange(n, dtype=torch.float64) + 0.5) * step)
    cx, cy = torch.meshgrid(axis_centres[0], axis_centres[1], indexing="ij")  # (n0, n1): row-major over (i, j)
    centroids = torch.stack([cx.reshape(-1), cy.reshape(-1), torch.full_like(cx.reshape(-1), altitude)], dim=-1)
    return centroids.to(camera_positions_world.dtype)
