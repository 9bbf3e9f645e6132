"""The training pixels of a split as per-cell ray shards: what is written, under which key.

RGB: every training image's pixels, each with the cells its ray crosses (the partition's cluster
masks), as (image, pixel, RGB) records; pixels a user's mask (masks/STEM.png) sets to 0 are left out. Depth: every depth frame's measured pixels at the poses the
depth frames are trained at (the TPF's by default), as (frame, pixel, distance along the ray). LiDAR:
every return of every scan as a world ray at the poses of its points' own times (`lidar/rays.py`).
A set's key hashes everything that decides its content (cameras and poses, image files, partition,
shard sizes), so a rerun with the same inputs reuses it and any change gives a new set.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras

from async_nerf_ns.files.keys import content_key, file_identity
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry
from async_nerf_ns.partition.key import MEMBERSHIP_RULE_VERSION, membership_key
from async_nerf_ns.partition.masks import DeviceLike, ImageCellMembership, membership_device, ray_cell_membership
from async_nerf_ns.shards.config import ShardConfig
from async_nerf_ns.shards.format import FORMAT, IMAGE_COUNTS, is_complete
from async_nerf_ns.shards.writer import ShardLayout, chunks_for, write_shard_set


def shard_set_key(
    kind: str,
    cameras: Cameras,
    geometry: PartitionGeometry,
    partition: PartitionConfig,
    files: Sequence[Path],
    shards: ShardConfig,
    extra: str = "",
) -> str:
    """The key of a shard set: format, kind, the cell membership's key, the input files, the shard sizes."""
    return content_key(
        f"{FORMAT}|{kind}|{extra}",
        membership_key(cameras, geometry, partition),
        file_identity(files),
        f"{shards.chunk_records}|{shards.shuffle_buffer_records}|{shards.seed}",
    )


def _membership_fn(
    cameras: Cameras, geometry: PartitionGeometry, partition: PartitionConfig, device: DeviceLike
) -> Callable[[int], np.ndarray]:
    """image index -> (cells, pixels) bool membership on the CPU, computed on ``device``
    (`membership_device`: CUDA when present, else the cameras' device), several images at a time
    (`ImageCellMembership.next_batch`) and handed out one by one: the writer asks in order."""
    if geometry.num_cells == 1:
        sizes = (cameras.height * cameras.width).reshape(-1).tolist()
        return lambda index: np.ones((1, int(sizes[index])), dtype=bool)
    cells = ImageCellMembership(cameras, geometry, partition, device=device)
    ready: Dict[int, np.ndarray] = {}

    def membership(index: int) -> np.ndarray:
        if index not in ready:
            ready.clear()
            batch = cells.next_batch(index)
            ready.update(zip(batch, cells.images(batch).cpu().numpy()))
        return ready.pop(index)

    return membership


class _Prefetched:
    """``load(i)`` for the images the writer asks for, loaded up to ``ahead`` images in advance by a
    background thread: decoding image files (PIL releases the GIL) overlaps the cell membership and
    the writing, on another core. Memory: ``ahead`` decoded images."""

    def __init__(self, load: Callable[[int], np.ndarray], count: int, ahead: int = 4) -> None:
        self.load = load
        self.count = count
        self.ahead = ahead
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-loader")
        self.pending: Dict[int, Future] = {}

    def __call__(self, index: int) -> np.ndarray:
        for stale in [i for i in self.pending if i < index]:  # not asked for (the writer resumed later)
            self.pending.pop(stale).cancel()
        for upcoming in range(index, min(self.count, index + self.ahead + 1)):
            if upcoming not in self.pending:
                self.pending[upcoming] = self.pool.submit(self.load, upcoming)
        return self.pending.pop(index).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()


@contextlib.contextmanager
def _one_torch_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, torch runs single-threaded while a set is written (restored after): the writer
    already keeps the cores busy with its own threads (decoding, membership, dealing, file I/O), and
    torch's intra-op threads on top of them mostly spin (measured on 2 shared cores: a third more
    CPU time in all and a slower writer with 2 torch threads than with 1). No effect on other devices."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    existing_only: bool = False,
    device: DeviceLike = None,
    masks: Optional[Sequence[Path]] = None,
    load_mask: Optional[Callable[[int], np.ndarray]] = None,
) -> Optional[Path]:
    """The RGB shard set of these images (written unless already complete); returns its folder.
    With ``existing_only``: the folder if the set is complete, else None (nothing is written).
    The rays and their cells are computed on ``device`` (default: CUDA when present, else the
    cameras' device); images are decoded on the CPU in a background thread. With ``masks`` (a file
    per image, part of the key) ``load_mask(i)`` gives image i's pixels to keep (bool, any shape
    with H x W elements): the others are left out of every cell."""
    if (masks is None) != (load_mask is None):
        raise ValueError("write_rgb_shards: masks and load_mask go together")
    key = shard_set_key("rgb", cameras, geometry, partition, [*files, *(masks or [])], shards)
    target = Path(root) / f"rgb-{key}"
    if existing_only or is_complete(target):
        return target if is_complete(target) else None
    device = membership_device(device, cameras)
    membership = _membership_fn(cameras, geometry, partition, device)
    colours = _Prefetched(lambda index: load_uint8(index)[..., :3].reshape(-1, 3).numpy(), len(cameras))

    def image_pixels(index: int):
        cells = membership(index)
        if load_mask is not None:
            cells = cells & np.asarray(load_mask(index), dtype=bool).reshape(1, -1)
        return cells, colours(index)

    try:
        with _one_torch_thread(device):
            return write_shard_set(
                target, "rgb", _layout(cameras, geometry, shards), image_pixels, shards.seed, "RGB ray shards",
                extra={**_partition_extra(geometry, partition), "inputs": input_files([*files, *(masks or [])])},
            )
    finally:
        colours.close()


def write_depth_shards(
    root: Path,
    cameras: Cameras,
    files: Sequence[Path],
    ray_distance: Callable[[int], torch.Tensor],
    pose_scale_factor: float,
    geometry: PartitionGeometry,
    partition: PartitionConfig,
    shards: ShardConfig,
    device: DeviceLike = None,
) -> Path:
    """The depth shard set of these depth frames at these poses (``cameras``); returns its folder.
    Rays and cells on ``device`` as in `write_rgb_shards`."""
    key = shard_set_key("depth", cameras, geometry, partition, files, shards, extra=f"{pose_scale_factor!r}")
    target = Path(root) / f"depth-{key}"
    if is_complete(target):
        return target
    device = membership_device(device, cameras)
    membership = _membership_fn(cameras, geometry, partition, device)
    distances = _Prefetched(lambda index: ray_distance(index).reshape(-1).numpy().astype(np.float32), len(cameras))

    def image_pixels(index: int):
        distance = distances(index)
        valid = np.isfinite(distance) & (distance > 0)
        return membership(index) & valid, distance

    try:
        with _one_torch_thread(device):
            return write_shard_set(
                target, "depth", _layout(cameras, geometry, shards), image_pixels, shards.seed, "depth ray shards",
                extra={**_partition_extra(geometry, partition), "inputs": input_files(files)},
            )
    finally:
        distances.close()


def write_lidar_shards(
    root: Path,
    num_scans: int,
    scan_rays: Callable[[int], np.ndarray],
    total_returns: int,
    key_parts: Sequence[Any],
    files: Sequence[Path],
    geometry: PartitionGeometry,
    partition: PartitionConfig,
    shards: ShardConfig,
    device: DeviceLike = None,
) -> Path:
    """The LiDAR shard set of these scans at these poses; returns its folder.

    ``scan_rays(i)``: scan i's rays as (P, 8) float32 values (`lidar/rays.py` ScanRays.records: world origin,
    unit direction, range, dt); every return is one record. A ray's cells are those its line crosses within
    the altitude band (the rule RGB and depth pixels follow, `partition.masks.ray_cell_membership`).
    ``key_parts`` identify the poses the rays were placed with (the TPF's state, the clock offsets, deskewing)."""
    key = content_key(
        f"{FORMAT}|lidar|{MEMBERSHIP_RULE_VERSION}|{tuple(float(z) for z in geometry.z_range)}|{float(geometry.max_ray_length)}|"
        f"{float(partition.boundary_margin)}|{partition.membership}|"
        f"{partition.samples_per_ray if partition.membership == 'sampled' else ''}",
        geometry.centroids, *key_parts, file_identity(files),
        f"{shards.chunk_records}|{shards.shuffle_buffer_records}|{shards.seed}",
    )
    target = Path(root) / f"lidar-{key}"
    if is_complete(target):
        return target
    device = torch.device("cuda") if device is None and torch.cuda.is_available() else torch.device(device or "cpu")

    def image_pixels(index: int):
        values = scan_rays(index)
        if geometry.num_cells == 1:
            return np.ones((1, len(values)), dtype=bool), values
        rays = torch.from_numpy(values[:, :6].astype(np.float32)).to(device)
        cells = ray_cell_membership(
            rays[:, :3], rays[:, 3:6], geometry.centroids.to(device), geometry.z_range, partition.boundary_margin,
            partition.samples_per_ray, far=float(geometry.max_ray_length), chunk_rays=partition.chunk_rays,
            membership=partition.membership,
        )
        return cells.T.cpu().numpy(), values

    layout = ShardLayout(geometry.num_cells, num_scans, chunks_for(total_returns, shards.chunk_records), shards.shuffle_buffer_records)
    with _one_torch_thread(device):
        return write_shard_set(
            target, "lidar", layout, image_pixels, shards.seed, "LiDAR ray shards",
            extra={**_partition_extra(geometry, partition), "inputs": input_files(files)},
        )


def _partition_extra(geometry: PartitionGeometry, partition: PartitionConfig) -> Dict[str, Any]:
    """What the manifest records of the partition the set was cut with."""
    extra: Dict[str, Any] = {
        "grid_dim": list(geometry.grid_dim), "membership": partition.membership,
        "centroids": geometry.centroids.detach().cpu().double().tolist(),
    }
    if partition.membership == "sampled":
        extra["samples_per_ray"] = partition.samples_per_ray
    return extra


def input_files(files: Sequence[Path]) -> List[List[Any]]:
    """What the manifest records of the files a set was written from ([absolute path, bytes,
    modification time in ns] each, as its key hashes them): `async-nerf-check` tells a stale set by it."""
    rows: List[List[Any]] = []
    for path in files:
        stat = Path(path).stat()
        rows.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return rows


def image_counts(shard_set: Path) -> np.ndarray:
    """(images, cells) uint32: how many records each image gave each cell (written with the set)."""
    return np.load(Path(shard_set) / IMAGE_COUNTS)
