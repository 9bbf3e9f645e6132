"""Cluster masks cached on disk, keyed by everything that decides them.

The key hashes the cameras (poses, intrinsics, sizes, camera model, distortion) and the
partition (centroids, altitude band, ray limits, boundary margin, samples per ray), so a changed
pose or parameter gives a new file and never a stale mask. Parameters that do not change the
result (``chunk_rays``) are left out, so changing them reuses the cache.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from async_nerf_ns.partition import masks as masks_module
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.storage import load_masks, save_masks

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


def cached_cluster_masks(
    cache_dir: Path,
    cameras: Cameras,
    centroids: Float[Tensor, "num_cells 3"],
    config: PartitionConfig,
    z_range: Tuple[float, float],
    max_ray_length: float = math.inf,
    near: float = 0.0,
    show_progress: bool = True,
) -> List[Bool[Tensor, "H W num_cells"]]:
    """`compute_cluster_masks`, stored in ``cache_dir/cluster_masks-KEY.npz`` and reused when the key matches.

    A cache file that cannot be read (e.g. from another version) is recomputed and replaced.
    """
    key = cluster_mask_cache_key(cameras, centroids, config, z_range, max_ray_length, near)
    path = Path(cache_dir) / f"cluster_masks-{key}.npz"
    if path.exists():
        try:
            masks = load_masks(path)
        except ValueError as error:
            CONSOLE.print(f"[yellow]Recomputing cluster masks: {error}")
        else:
            if len(masks) == len(cameras):
                CONSOLE.print(f"Loaded cluster masks from {path}")
                return masks
            CONSOLE.print(
                f"[yellow]Recomputing cluster masks: {path} holds {len(masks)} images, expected {len(cameras)}"
            )
    masks = masks_module.compute_cluster_masks(
        cameras, centroids, config, z_range, max_ray_length=max_ray_length, near=near, show_progress=show_progress
    )
    save_masks(path, masks)
    CONSOLE.print(f"Saved cluster masks to {path}")
    return masks
