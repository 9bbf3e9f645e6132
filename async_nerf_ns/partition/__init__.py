"""Mega-NeRF spatial partition: cell centroids, point -> cell routing, per-pixel cell masks.

- `config.PartitionConfig`: the user's parameters (grid, altitude band in metres, margin, ...);
- `geometry.resolve_geometry`: those parameters in world units for a scene's cameras;
- `centroids.grid_centroids`: the cell grid over the cameras' ground-plane extent;
- `routing.route_to_cells`: nearest centroid of 3-D points (merged field);
- `masks.compute_cluster_masks` / `masks.ray_cell_membership`: which cells each pixel's ray crosses;
- `cache.cached_cluster_masks`, `storage`: masks on disk, bit-packed, keyed by their inputs;
- `plot.plot_partition`: the top-view figure.
"""

from async_nerf_ns.partition.cache import cached_cluster_masks
from async_nerf_ns.partition.centroids import grid_centroids
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry, resolve_geometry
from async_nerf_ns.partition.masks import compute_cluster_masks, ray_cell_membership
from async_nerf_ns.partition.routing import route_to_cells

__all__ = [
    "PartitionConfig",
    "PartitionGeometry",
    "cached_cluster_masks",
    "compute_cluster_masks",
    "grid_centroids",
    "ray_cell_membership",
    "resolve_geometry",
    "route_to_cells",
]
