"""The partition in world units: centroids, altitude band and ray length resolved from a config.

`PartitionConfig` speaks the user's language (metres of layout altitude, fractions of the
camera extent); everything downstream (masks, routing) works in the dataparser's world frame.
This module is the one place that converts between the two (see `config.py` for the frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

from async_nerf_ns.layout.frames import DRB_TO_WORLD, WORLD_UP_IN_DRB
from async_nerf_ns.partition.centroids import grid_centroids
from async_nerf_ns.partition.config import PartitionConfig



def altitude_to_world_z(altitude_m: float, origin_drb: Tensor, pose_scale_factor: float) -> float:
    """Layout altitude in metres (absolute -x_drb) -> world z in scene units."""
    return (altitude_m + float(origin_drb[0])) / pose_scale_factor


def world_z_to_altitude(z_world: float, origin_drb: Tensor, pose_scale_factor: float) -> float:
    """World z in scene units -> layout altitude in metres (absolute -x_drb)."""
    return z_world * pose_scale_factor - float(origin_drb[0])


@dataclass(frozen=True)
class PartitionGeometry:
    """A partition resolved in world units (z up, normalised scene units)."""

    grid_dim: Tuple[int, int]
    """Cells along world x and world y, row-major numbering."""
    centroids: Float[Tensor, "num_cells 3"]
    """Cell centroids in the world frame (z = centroid altitude)."""
    z_range: Tuple[float, float]
    """(lowest, highest) world z of the altitude band."""
    max_ray_length: float
    """Longest ray segment considered, in world units."""
    origin_drb: Tensor
    """Layout origin in metres, DRB (float64), from coordinates.pt."""
    pose_scale_factor: float
    """Metres per scene unit."""
    drb_to_world: Tensor
    """(3, 3) rotation from the layout's normalised DRB frame to the world frame."""

    @property
    def num_cells(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def altitude_range_m(self) -> Tuple[float, float]:
        """The altitude band in metres of layout altitude."""
        lo, hi = self.z_range
        return (
            world_z_to_altitude(lo, self.origin_drb, self.pose_scale_factor),
            world_z_to_altitude(hi, self.origin_drb, self.pose_scale_factor),
        )

    def centroids_drb(self) -> Float[Tensor, "num_cells 3"]:
        """Centroids in the layout's normalised DRB frame (p_drb = M^T p_world)."""
        return self.centroids.to(torch.float64) @ self.drb_to_world.to(torch.float64)


def resolve_geometry(
    config: PartitionConfig,
    camera_positions_world: Float[Tensor, "num_cameras 3"],
    origin_drb: Tensor,
    pose_scale_factor: float,
    drb_to_world: Optional[Tensor] = None,
) -> PartitionGeometry:
    """Centroids, altitude band and ray length in world units for the cameras of a scene.

    Args:
        config: the partition parameters.
        camera_positions_world: centres of the cameras whose extent the grid covers (world frame).
        origin_drb: layout origin in metres (coordinates.pt).
        pose_scale_factor: metres per scene unit (coordinates.pt).
        drb_to_world: rotation the dataparser applied to DRB poses; its third row must be the
            layout's up axis (-x). None: the standard one, [[0,1,0],[0,0,-1],[-1,0,0]].

    Raises:
        ValueError: a non-positive scale, a world frame whose z is not the layout's up axis, or a
            default altitude band that would have no thickness.
    """
    if not (pose_scale_factor > 0 and math.isfinite(pose_scale_factor)):
        raise ValueError(f"pose_scale_factor must be a positive number of metres per unit, got {pose_scale_factor}")
    if drb_to_world is None:
        drb_to_world = torch.from_numpy(DRB_TO_WORLD)
    drb_to_world = torch.as_tensor(drb_to_world, dtype=torch.float64)
    if not torch.allclose(drb_to_world[2], torch.tensor(WORLD_UP_IN_DRB, dtype=torch.float64)):
        raise ValueError(
            f"the partition needs world z = layout up (-x of DRB), but the DRB -> world rotation's third row is "
            f"{drb_to_world[2].tolist()}"
        )
    origin_drb = torch.as_tensor(origin_drb, dtype=torch.float64).reshape(3)
    positions = camera_positions_world.detach().to("cpu", torch.float64)
    extent_xy = positions[:, :2].max(dim=0).values - positions[:, :2].min(dim=0).values
    ground_extent = float(extent_xy.max())

    if config.ray_altitude_range is not None:
        lo = altitude_to_world_z(config.ray_altitude_range[0], origin_drb, pose_scale_factor)
        hi = altitude_to_world_z(config.ray_altitude_range[1], origin_drb, pose_scale_factor)
    else:
        lo = float(positions[:, 2].min()) - config.default_band_below * ground_extent
        hi = float(positions[:, 2].max()) + config.default_band_above * ground_extent
        if not hi > lo:
            raise ValueError(
                "cannot derive a default altitude band: the cameras have no ground-plane extent and no altitude "
                "spread, so the band would have no thickness; set ray_altitude_range (metres)"
            )

    if config.max_ray_length is not None:
        max_ray_length = config.max_ray_length / pose_scale_factor
    else:
        max_ray_length = math.sqrt(float(extent_xy.square().sum()) + (hi - lo) ** 2)

    if config.centroid_altitude is not None:
        centroid_z = altitude_to_world_z(config.centroid_altitude, origin_drb, pose_scale_factor)
    else:
        centroid_z = 0.5 * (lo + hi)
    centroids = grid_centroids(positions, config.grid_dim, altitude=centroid_z).to(torch.float32)
    return PartitionGeometry(
        grid_dim=(int(config.grid_dim[0]), int(config.grid_dim[1])),
        centroids=centroids,
        z_range=(lo, hi),
        max_ray_length=max_ray_length,
        origin_drb=origin_drb,
        pose_scale_factor=float(pose_scale_factor),
        drb_to_world=drb_to_world,
    )
