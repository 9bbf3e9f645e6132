"""The key of a partition's cell membership: a hash of everything that decides which cells each pixel's
ray belongs to (`masks.py`). The ray shards (async_nerf_ns/shards) are keyed by it.

It hashes the cameras (poses, intrinsics, sizes, camera model, distortion) and the partition
(centroids, altitude band, ray limits, boundary margin, membership rule and, for the sampled rule,
its number of samples), so a changed pose or parameter gives a new key and never stale data.
Parameters that do not change the result (``chunk_rays``, the device, ``samples_per_ray`` under the
exact rule) are left out.
"""

from __future__ import annotations

from nerfstudio.cameras.cameras import Cameras

from async_nerf_ns.files.keys import content_key
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry

MEMBERSHIP_RULE_VERSION = "cluster-masks-v2"
"""Part of the key: bump it when the membership rule changes. v1: sampled at ``samples_per_ray``
points (the only rule); v2: ``PartitionConfig.membership``, exact by default (shard sets written
under v1 are not reused)."""


def membership_key(cameras: Cameras, geometry: PartitionGeometry, config: PartitionConfig, near: float = 0.0) -> str:
    """Hex digest identifying the cell membership `masks.image_cell_mask` gives these cameras."""
    parts = [MEMBERSHIP_RULE_VERSION, cameras.camera_to_worlds]
    parts += [getattr(cameras, name) for name in ("fx", "fy", "cx", "cy", "width", "height", "camera_type")]
    if cameras.distortion_params is not None:
        parts.append(cameras.distortion_params)
    scalars = (
        ("z_range", tuple(float(z) for z in geometry.z_range)),
        ("max_ray_length", float(geometry.max_ray_length)),
        ("near", float(near)),
        ("boundary_margin", float(config.boundary_margin)),
        ("membership", config.membership),
    )
    if config.membership == "sampled":
        scalars += (("samples_per_ray", int(config.samples_per_ray)),)
    return content_key(*parts, geometry.centroids, repr(scalars))
