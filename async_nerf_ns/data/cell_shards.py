"""The training pixels of a split as per-cell ray shards: what is written, under which key.

RGB: every training image's pixels, each with the cells its ray crosses (the partition's cluster
masks), as (image, pixel, RGB) records. Depth: every depth frame's measured pixels at the poses the
depth frames are trained at (the TPF's by default), as (frame, pixel, distance along the ray).
A set's key hashes everything that decides its content (cameras and poses, image files, partition,
shard sizes), so a rerun with the same inputs reuses it and any change gives a new set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras

from async_nerf_ns.partition.cache import cluster_mask_cache_key
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry
from async_nerf_ns.partition.masks import image_cell_mask
from async_nerf_ns.shards.format import FORMAT
from async_nerf_ns.shards.writer import ShardLayout, chunks_for, write_shard_set


@dataclass
class ShardConfig:
    """Where and how the per-cell ray shards are written."""

    shard_dir: Optional[Path] = None
    """Folder of the shard sets (one sub-folder per set, named by kind and key). Default: the
    dataset's cache folder (DATA/.async_nerf_cache/shards, or a temporary folder when DATA is
    read-only). On a cluster, put it on storage every node mounts at the same path."""
    chunk_records: int = 1 << 20
    """Largest chunk file, in records (11 bytes per RGB record, 12 per depth record): training holds
    the chunk being read plus the next one in memory per stream, so this bounds the data part of its
    RAM (default: ~12 MB per chunk)."""
    shuffle_buffer_records: int = 1 << 22
    """Records gathered before they are shuffled and dealt over all chunks while writing; bounds the
    writer's memory (~35 bytes per record with the shuffle's copies: ~150 MB by default). Each
    flush is spread over every chunk of a cell, and training shuffles each chunk again when reading."""
    prefetch: bool = True
    """Load the next chunk in a background thread while training reads the current one."""
    seed: int = 0
    """Seed of the write-time shuffle (part of the key)."""


def _file_identity(paths: Sequence[Path]) -> bytes:
    parts = []
    for path in paths:
        stat = Path(path).stat()
        parts.append(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return "\n".join(parts).encode()


def shard_set_key(
    kind: str,
    cameras: Cameras,
    geometry: PartitionGeometry,
    partition: PartitionConfig,
    files: Sequence[Path],
    shards: ShardConfig,
    extra: str = "",
) -> str:
    digest = hashlib.sha256(f"{FORMAT}|{kind}|{extra}".encode())
    digest.update(cluster_mask_cache_key(cameras, geometry.centroids, partition, geometry.z_range, geometry.max_ray_length).encode())
    digest.update(_file_identity(files))
    digest.update(f"{shards.chunk_records}|{shards.shuffle_buffer_records}|{shards.seed}".encode())
    return digest.hexdigest()[:24]


def _membership_fn(cameras: Cameras, geometry: PartitionGeometry, partition: PartitionConfig) -> Callable[[int], np.ndarray]:
    def membership(index: int) -> np.ndarray:
        if geometry.num_cells == 1:
            height, width = int(cameras.height[index]), int(cameras.width[index])
            return np.ones((height * width, 1), dtype=bool)
        mask = image_cell_mask(cameras, index, geometry.centroids, partition, geometry.z_range, geometry.max_ray_length)
        return mask.reshape(-1, mask.shape[-1]).cpu().numpy()

    return membership


def _layout(cameras: Cameras, geometry: PartitionGeometry, shards: ShardConfig) -> ShardLayout:
    total = int((cameras.width * cameras.height).sum())
    return ShardLayout(geometry.num_cells, len(cameras), chunks_for(total, shards.chunk_records), shards.shuffle_buffer_records)


def write_rgb_shards(
    root: Path,
    cameras: Cameras,
    files: Sequence[Path],
    load_uint8: Callable[[int], torch.Tensor],
    geometry: PartitionGeometry,
    partition: PartitionConfig,
    shards: ShardConfig,
) -> Path:
    """The RGB shard set of these images (written unless already complete); returns its folder."""
    key = shard_set_key("rgb", cameras, geometry, partition, files, shards)
    membership = _membership_fn(cameras, geometry, partition)

    def image_pixels(index: int):
        colours = load_uint8(index)[..., :3].reshape(-1, 3).numpy()
        return membership(index), colours

    return write_shard_set(
        Path(root) / f"rgb-{key}", "rgb", _layout(cameras, geometry, shards), image_pixels, shards.seed,
        "RGB ray shards", extra={"grid_dim": list(geometry.grid_dim), "samples_per_ray": partition.samples_per_ray},
    )


def write_depth_shards(
    root: Path,
    cameras: Cameras,
    files: Sequence[Path],
    ray_distance: Callable[[int], torch.Tensor],
    pose_scale_factor: float,
    geometry: PartitionGeometry,
    partition: PartitionConfig,
    shards: ShardConfig,
) -> Path:
    """The depth shard set of these depth frames at these poses (``cameras``); returns its folder."""
    key = shard_set_key("depth", cameras, geometry, partition, files, shards, extra=f"{pose_scale_factor!r}")
    membership = _membership_fn(cameras, geometry, partition)

    def image_pixels(index: int):
        distance = ray_distance(index).reshape(-1).numpy().astype(np.float32)
        valid = np.isfinite(distance) & (distance > 0)
        return membership(index) & valid[:, None], distance

    return write_shard_set(
        Path(root) / f"depth-{key}", "depth", _layout(cameras, geometry, shards), image_pixels, shards.seed,
        "depth ray shards", extra={"grid_dim": list(geometry.grid_dim), "samples_per_ray": partition.samples_per_ray},
    )


def pixel_rows_columns(records: np.ndarray, widths: torch.Tensor) -> torch.Tensor:
    """(image, pixel) records -> nerfstudio's ray indices (N, 3): image, row, column."""
    image = torch.from_numpy(records["image"].astype(np.int64))
    pixel = torch.from_numpy(records["pixel"].astype(np.int64))
    width = widths[image]
    return torch.stack([image, pixel // width, pixel % width], dim=-1)
