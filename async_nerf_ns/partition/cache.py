"""The key of a set of cluster masks: a hash of everything that decides them.

It hashes the cameras (poses, intrinsics, sizes, camera model, distortion) and the partition
(centroids, altitude band, ray limits, boundary margin, samples per ray), so a changed pose or
parameter gives a new key and never stale data. Parameters that do not change the result
(``chunk_rays``) are left out. The ray shards (async_nerf_ns/shards) are keyed by it.
"""

from __future__ import annotations

import hashlib
import math
from typing import Tuple

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from async_nerf_ns.partition.config import PartitionConfig

CACHE_FORMAT_VERSION = "cluster-masks-v1"
"""Part of the key: bump it when the mask rule or the file format changes."""


def cluster_mask_cache_key(
    cameras: Cameras,
    centroids: Float[Tensor, "num_cells 3"],
    config: PartitionConfig,
    z_range: Tuple[float, float],
    max_ray_length: float = math.inf,
    near: float = 0.0,
) -> str:
    """Hex digest identifying the masks `compute_cluster_masks` would produce for these inputs."""
    digest = hashlib.sha256(CACHE_FORMAT_VERSION.encode())

    def add_tensor(name: str, value: Tensor) -> None:
        array = np.ascontiguousarray(value.detach().cpu().to(torch.float64).numpy())
        digest.update(f"{name}{array.shape}".encode())
        digest.update(array.tobytes())

    add_tensor("camera_to_worlds", cameras.camera_to_worlds)
    for name in ("fx", "fy", "cx", "cy", "width", "height", "camera_type"):
        add_tensor(name, getattr(cameras, name))
    if cameras.distortion_params is not None:
        add_tensor("distortion_params", cameras.distortion_params)
    add_tensor("centroids", centroids)
    scalars = (
        ("z_range", tuple(float(z) for z in z_range)),
        ("max_ray_length", float(max_ray_length)),
        ("near", float(near)),
        ("boundary_margin", float(config.boundary_margin)),
        ("samples_per_ray", int(config.samples_per_ray)),
    )
    digest.update(repr(scalars).encode())
    return digest.hexdigest()[:24]
