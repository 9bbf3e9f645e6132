"""Mega-NeRF spatial partition: cell centroids, point -> cell routing, per-pixel cell masks.

- `config.PartitionConfig`: the user's parameters (grid, altitude band in metres, margin, ...);
- `geometry.resolve_geometry`: those parameters in world units for a scene's cameras;
- `centroids.grid_centroids`: the cell grid over the cameras' ground-plane extent;
- `routing.route_to_cells`: nearest centroid of 3-D points (merged field);
- `masks.compute_cluster_masks` / `masks.ray_cell_membership`: which cells each pixel's ray crosses;
- `masks.ImageCellMembership`: every image's masks, a few images at a time, as the ray shards are written
  (async_nerf_ns/shards); `masks.membership_device`: where that runs (CUDA when present);
- `masks.image_cell_mask`: one image's masks;
- `key.membership_key`: the hash of everything that decides the masks (part of a shard set's key);
- `plot.plot_partition`: the top-view figure.
"""

from async_nerf_ns.partition.centroids import grid_centroids
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry, resolve_geometry
from async_nerf_ns.partition.key import membership_key
from async_nerf_ns.partition.masks import (
    ImageCellMembership,
    compute_cluster_masks,
    image_cell_mask,
    membership_device,
    ray_cell_membership,
)
from async_nerf_ns.partition.routing import route_to_cells

__all__ = [
    "ImageCellMembership",
    "PartitionConfig",
    "PartitionGeometry",
    "compute_cluster_masks",
    "grid_centroids",
    "image_cell_mask",
    "membership_device",
    "membership_key",
    "ray_cell_membership",
    "resolve_geometry",
    "route_to_cells",
]
