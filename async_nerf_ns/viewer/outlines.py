"""The cells' regions on the ground plane as polylines, for drawing them in the viewer.

Cell k's region with boundary margin m is {p : |p - c_k| <= m * min_j |p - c_j|} (partition/masks.py);
m = 1 gives the nearest-centroid (Voronoi) regions the merged field routes by. Its outline is the
zero level of f_k(p) = |p - c_k|^2 - m^2 min_{j != k} |p - c_j|^2 on a grid, traced by contourpy
(matplotlib's contouring library) and clipped to a rectangle around the scene.
"""

from __future__ import annotations

from typing import List, Tuple

import contourpy
import numpy as np


def cell_outlines(
    centroids_xy: np.ndarray, margin: float, extent: Tuple[float, float, float, float], resolution: int = 256
) -> List[List[np.ndarray]]:
    """Per cell, its region's outline as polylines (each (P, 2), world x-y), within ``extent``
    (x_min, x_max, y_min, y_max); closed outlines repeat their first point."""
    centroids_xy = np.asarray(centroids_xy, dtype=np.float64)
    x = np.linspace(extent[0], extent[1], resolution)
    y = np.linspace(extent[2], extent[3], resolution)
    grid = np.stack(np.meshgrid(x, y, indexing="xy"), axis=-1)  # (ny, nx, 2)
    squared = ((grid[:, :, None, :] - centroids_xy[None, None]) ** 2).sum(axis=-1)  # (ny, nx, K)
    outlines = []
    for k in range(len(centroids_xy)):
        others = np.delete(squared, k, axis=-1)
        if others.shape[-1] == 0:  # one cell: its region is everything; draw the extent
            field = -np.ones(grid.shape[:2])
        else:
            field = squared[..., k] - margin**2 * others.min(axis=-1)
        # Pad with "outside" so that regions reaching the edge of the extent are closed along it.
        padded = np.pad(field, 1, constant_values=1.0)
        px = np.concatenate([[x[0] - (x[1] - x[0])], x, [x[-1] + (x[1] - x[0])]])
        py = np.concatenate([[y[0] - (y[1] - y[0])], y, [y[-1] + (y[1] - y[0])]])
        lines = contourpy.contour_generator(px, py, padded).lines(0.0)
        clipped = [np.clip(line, [extent[0], extent[2]], [extent[1], extent[3]]) for line in lines if len(line) > 1]
        outlines.append(clipped)
    return outlines


def scene_extent(points_xy: np.ndarray, centroids_xy: np.ndarray, pad: float = 0.15) -> Tuple[float, float, float, float]:
    """A rectangle around cameras and centroids, ``pad`` of its size wider on every side."""
    everything = np.concatenate([np.asarray(points_xy, dtype=np.float64), np.asarray(centroids_xy, dtype=np.float64)])
    lo, hi = everything.min(axis=0), everything.max(axis=0)
    size = np.maximum(hi - lo, 1e-3)
    return (lo[0] - pad * size[0], hi[0] + pad * size[0], lo[1] - pad * size[1], hi[1] + pad * size[1])
