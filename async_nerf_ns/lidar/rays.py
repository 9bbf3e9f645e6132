"""One LiDAR scan as world rays, every point at the pose of its own time (deskewing).

A point p (LiDAR frame, metres) measured at time T lies at ``c2w(T) (L p / s)`` in the world, where L is
the LiDAR-to-camera extrinsic (metres), s the scene's metres per unit and c2w(T) the camera pose (scene
units) the pose function gives at T. Its ray starts at the LiDAR's position at T, ``c2w(T) (L 0 / s)``,
and its range is |p| / s. With ``deskew`` False every point is placed at the scan's stamp instead: what
a pipeline that treats a scan as instantaneous does (examples/bench_lidar.py measures the difference).

Poses are evaluated once per distinct point time (a spinning LiDAR fires all its beams of a column at
one time, so a scan has as many times as columns), in float64 numpy for the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

PoseFunction = Callable[[np.ndarray], torch.Tensor]
"""Times (M,) float64 seconds on the RGB clock -> camera-to-world poses (M, 3, 4), scene units."""

RECORD_VALUES = 8
"""Values per LiDAR ray in a shard record: origin (3), unit direction (3), range (scene units), dt (s)."""


@dataclass
class ScanRays:
    """The rays of one scan's returns (world frame, scene units), in the scan's row order."""

    origins: np.ndarray
    """(P, 3) float64: the LiDAR's position at each point's time."""
    directions: np.ndarray
    """(P, 3) float64, unit length."""
    ranges: np.ndarray
    """(P,) float64: distance to the return, scene units."""
    dt: np.ndarray
    """(P,) float64: the point's time after its scan's stamp, seconds (0 for all without deskewing)."""

    def __len__(self) -> int:
        return len(self.ranges)

    @property
    def points(self) -> np.ndarray:
        """(P, 3) the returns in the world."""
        return self.origins + self.directions * self.ranges[:, None]

    def records(self) -> np.ndarray:
        """(P, 8) float32 shard values: origin, direction, range, dt."""
        values = np.empty((len(self), RECORD_VALUES), dtype=np.float32)
        values[:, 0:3], values[:, 3:6], values[:, 6], values[:, 7] = self.origins, self.directions, self.ranges, self.dt
        return values


def scan_rays(
    points: np.ndarray,
    scan_time: float,
    lidar_to_camera: np.ndarray,
    poses_at: PoseFunction,
    pose_scale_factor: float,
    deskew: bool = True,
) -> ScanRays:
    """The world rays of a scan's returns.

    Args:
        points: (P, 4) x, y, z (LiDAR frame, metres), t (seconds after the stamp), returns only.
        scan_time: the scan's stamp on the RGB clock (its track's clock offset added), seconds.
        lidar_to_camera: (4, 4) metres.
        poses_at: the pose function (the stage-1 TPF at set-up).
        deskew: place each point at its own time (True) or every point at the stamp.
    """
    points = np.asarray(points, dtype=np.float64)
    dt = points[:, 3] if deskew else np.zeros(len(points))
    times, which = np.unique(dt, return_inverse=True)
    with torch.no_grad():
        poses = poses_at(scan_time + times).detach().cpu().double().numpy().reshape(-1, 3, 4)[which]  # (P, 3, 4)
    extrinsic = np.asarray(lidar_to_camera, dtype=np.float64)
    rotation = poses[:, :, :3]
    mount = extrinsic[:3, 3] / pose_scale_factor  # the LiDAR's origin in the camera frame, scene units
    origins = np.einsum("pab,b->pa", rotation, mount) + poses[:, :, 3]
    in_camera = points[:, :3] @ extrinsic[:3, :3].T  # metres, camera axes, relative to the LiDAR
    offsets = np.einsum("pab,pb->pa", rotation, in_camera)
    ranges = np.linalg.norm(offsets, axis=1)
    return ScanRays(origins, offsets / ranges[:, None], ranges / pose_scale_factor, dt.copy())
