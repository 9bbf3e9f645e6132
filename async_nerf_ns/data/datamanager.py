"""Training data for async-nerf: the partition, stage 1 (depth-frame poses) and per-cell ray shards.

Subclasses nerfstudio's VanillaDataManager and keeps its evaluation side (eval images, fixed-index
eval dataloader); training differs, all of it set up once in ``setup_train``:
- the partition of the training cameras, and (training only) stage 1: the time-pose function
  (fitted once per dataset and cached, `trajectory/fit_cache.py`) gives every depth frame its pose;
- every cell's RGB pixels and depth pixels live on disk as shuffled per-cell ray shards
  (`async_nerf_ns/shards`), written here (or beforehand by ``async-nerf-partition``) in bounded
  memory, and read a chunk at a time: RAM does not grow with the number of frames, and a run
  restricted to some cells reads only their chunks;
- each step draws ONE cell (round-robin) and a batch of its RGB and depth records, as a pure
  function of (seed, step) (`shards/sampler.py`), so a resumed run continues exactly.
Depth rays follow the RGB rays in the bundle (`data/ray_keys.py`): ``batch["depth_frame"]`` names
their depth frames (for pose refinement), ``batch["depth"]`` holds the measured distance along the ray
(scene units) and ``batch["cell"]`` the batch's cell (a Python int).

A step moves its records to the device as one pinned host buffer, copied without blocking, and
builds the rays there: nothing in it waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type, Union

import numpy as np
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.utils.data_utils import get_image_mask_tensor_from_path
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from async_nerf_ns.data.dataparser import METADATA_KEY, AsyncNerfDataParserConfig
from async_nerf_ns.data.depth_frames import DepthFrameSet, concat_tracks
from async_nerf_ns.data.ray_generator import PinholeRayGenerator, training_ray_generator
from async_nerf_ns.data.ray_keys import (
    CELL_BATCH_KEY,
    DEPTH_BATCH_KEY,
    DEPTH_FRAME_KEY,
    LIDAR_DT_KEY,
    LIDAR_RANGE_KEY,
    LIDAR_SCAN_KEY,
)
from async_nerf_ns.data.scene_metadata import DepthTrackData
from async_nerf_ns.data.stage1 import DepthPoseSource, Stage1Fit, frame_poses
from async_nerf_ns.files.cache_dir import cache_dir
from async_nerf_ns.lidar.poses import cpu_pose_function, lidar_poses_key
from async_nerf_ns.lidar.rays import scan_rays
from async_nerf_ns.lidar.scans import LidarScanSet
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry, resolve_geometry
from async_nerf_ns.shards.config import ShardConfig
from async_nerf_ns.shards.sampler import CellRaySampler
from async_nerf_ns.shards.sets import image_counts, write_depth_shards, write_lidar_shards, write_rgb_shards
from async_nerf_ns.trajectory.fit_cache import cached_fit, fit_key
from async_nerf_ns.trajectory.time_offset import TimeOffsetConfig, TimeOffsetEstimate
from async_nerf_ns.trajectory.timed_poses import nearest_in_time
from async_nerf_ns.trajectory.tpf import FittedTPF, TimePoseFunctionConfig
from async_nerf_ns.trajectory.lidar_offset import lidar_track_time_offsets
from async_nerf_ns.trajectory.track_offsets import track_time_offsets

POSE_TOLERANCE = 1e-6
"""Depth-frame poses that differ from the ones in use by at most this (scene units, and rotation matrix
entries) are the same poses: a TPF evaluated on another device, or rebuilt from a checkpoint, differs by
float rounding (~1e-7), which must not rebuild the rays or rewrite the depth shards."""

LIDAR_PIXEL_AREA = 1e-5
"""The ray footprint nerfstudio's RayBundle asks for, for LiDAR rays: a beam of ~3 mrad divergence (its square).
nerfacto's fields sample points and do not use it."""

UNUSED_OPTIONS = ("train_num_images_to_sample_from", "train_num_times_to_repeat_images", "patch_size")
"""VanillaDataManagerConfig options that training here does not use (it samples per-cell shards,
not cached images): setting one is an error rather than silently ignored."""


@dataclass
class AsyncNerfDataManagerConfig(VanillaDataManagerConfig):
    """Per-cell ray shards of RGB and depth-frame pixels, one cell per step.

    Of nerfstudio's options, train_num_images_to_sample_from, train_num_times_to_repeat_images and
    patch_size do not apply (training samples whole cells from shards) and are rejected when changed;
    the eval_* options and pixel_sampler (used for eval batches) keep their nerfstudio meaning."""

    _target: Type = field(default_factory=lambda: AsyncNerfDataManager)
    dataparser: AsyncNerfDataParserConfig = field(default_factory=AsyncNerfDataParserConfig)
    train_num_rays_per_batch: int = 4096
    """RGB rays per training step (all from the cell trained at that step)."""
    eval_num_images_to_sample_from: int = 16
    """Val images held in memory for the training-time eval batches (nerfstudio caches all of them by
    default, which grows with the capture); ns-eval's full evaluation reads every val image anyway."""
    eval_num_times_to_repeat_images: int = 50
    """Eval batches drawn from those images before another set is loaded."""
    train_num_depth_rays_per_batch: int = 1024
    """Rays from depth frames per training step, same cell (0: no depth supervision)."""
    train_num_lidar_rays_per_batch: int = 1024
    """Rays from LiDAR returns per training step, same cell (0: no LiDAR supervision)."""
    lidar_deskew: bool = True
    """Place every LiDAR point at the pose of its own time (True), or every point of a scan at the scan's
    stamp (False: a scan treated as instantaneous, as for sensors without per-point times)."""
    sampling_seed: int = 0
    """Seed of the training batches: batch s of cell k is a function of (seed, k, s)."""
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    """How the scene is cut into cells (Mega-NeRF)."""
    cells: Optional[Tuple[int, ...]] = None
    """Train only these cells (cluster runs: one cell per task); None: all. Only their shards are read."""
    depth_poses: DepthPoseSource = "tpf"
    """Where depth frames get their poses: tpf (time-pose function), prior (metadata c2w), gt."""
    tpf: TimePoseFunctionConfig = field(default_factory=TimePoseFunctionConfig)
    """The time-pose function fitted in stage 1."""
    depth_time_offset: Optional[Dict[str, float]] = None
    """TRACK SECONDS [TRACK SECONDS ...]: the clock offset of each depth or LiDAR track to the RGB clock, added
    to its stamps: a depth frame's pose is TPF(stamp + offset), a LiDAR point's TPF(stamp + t + offset).
    Tracks not named: 0. With time_offset.estimate,
    the search is centred on it and it is kept unless the data determines another value."""
    time_offset: TimeOffsetConfig = TimeOffsetConfig()
    """Estimating each depth track's (depth_poses=tpf) and LiDAR track's clock offset in stage 1."""
    shards: ShardConfig = field(default_factory=ShardConfig)
    """The per-cell ray shards on disk."""


def validated_cells(cells: Optional[Tuple[int, ...]], num_cells: int) -> List[int]:
    if cells is None:
        return list(range(num_cells))
    bad = [c for c in cells if not 0 <= c < num_cells]
    if bad or not cells:
        raise ValueError(f"--pipeline.datamanager.cells {list(cells or [])}: cells are numbered 0..{num_cells - 1}")
    return sorted(set(cells))


def _pack_records(rgb: np.ndarray, depth: Optional[np.ndarray], pin: bool) -> Tensor:
    """RGB and depth records as one int32 (N, 3) host tensor: image, pixel, value bits (RGB as
    r | g << 8 | b << 16, depth as its float32 bits); pinned when the device is a GPU."""
    count = len(rgb) + (0 if depth is None else len(depth))
    packed = torch.empty((count, 3), dtype=torch.int32, pin_memory=pin)
    view = packed.numpy()
    n = len(rgb)
    view[:n, 0], view[:n, 1] = rgb["image"], rgb["pixel"]
    colours = rgb["rgb"].astype(np.int32)
    view[:n, 2] = colours[:, 0] | (colours[:, 1] << 8) | (colours[:, 2] << 16)
    if depth is not None:
        view[n:, 0], view[n:, 1] = depth["image"], depth["pixel"]
        view[n:, 2] = depth["depth"].astype(np.float32).view(np.int32)
    return packed


def ray_indices(packed: Tensor, widths: Tensor) -> Tensor:
    """Packed (image, pixel, value) rows -> nerfstudio's ray indices (N, 3): image, row, column."""
    image, pixel = packed[:, 0].long(), packed[:, 1].long()
    width = widths[image]
    return torch.stack([image, pixel // width, pixel % width], dim=-1)


class AsyncNerfDataManager(VanillaDataManager):
    config: AsyncNerfDataManagerConfig

    def __init__(
        self,
        config: AsyncNerfDataManagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        defaults = AsyncNerfDataManagerConfig()
        changed = [f.name for f in fields(config) if f.name in UNUSED_OPTIONS and getattr(config, f.name) != getattr(defaults, f.name)]
        if changed:
            raise ValueError(
                f"--pipeline.datamanager.{changed[0].replace('_', '-')} does not apply to async-nerf: training samples "
                "each cell's pixels from its ray shards (see --pipeline.datamanager.shards.*)"
            )
        self.geometry: Optional[PartitionGeometry] = None
        self.stage1 = Stage1Fit()
        """What stage 1 fitted at set-up (training, depth_poses=tpf): the pipeline's ``Stage1`` holds it."""
        self.depth_frames: Optional[DepthFrameSet] = None
        """The training depth frames at the poses they are trained at (training only)."""
        self._lidar_poses_key: Optional[str] = None
        """What identifies the poses the training LiDAR rays were placed with (training only)."""
        self.train_pixel_sampler: Optional[CellRaySampler] = None  # type: ignore[assignment]
        """The training batches (nerfstudio's name: ns-export sets its num_rays_per_batch)."""
        self._last_draw = -1
        super().__init__(config, device, test_mode, world_size, local_rank, **kwargs)  # calls setup_train
        if self.geometry is None:  # inference: no training set-up, but the model needs the partition
            self._set_up_partition()

    # --- set-up ------------------------------------------------------------------------------------
    def _set_up_partition(self) -> None:
        scene = self.scene
        self.geometry = resolve_geometry(
            self.config.partition, self.train_dataset.cameras.camera_to_worlds[:, :, 3], scene.origin_drb,
            scene.pose_scale_factor, scene.drb_to_world,
        )
        self.trained_cells = validated_cells(self.config.cells, self.geometry.num_cells)
        self.depth_track: Optional[DepthTrackData] = concat_tracks(scene) if scene.depth_tracks else None
        self.lidar_scans: Optional[LidarScanSet] = (
            LidarScanSet.from_tracks(scene.lidar_tracks, scene.pose_scale_factor) if scene.lidar_tracks else None
        )

    def setup_train(self) -> None:
        """The partition, the ray generator and the training batches; for training (val mode) also
        stage 1 and the depth rays. ns-eval and ns-export (test mode) get the RGB batches only."""
        self._set_up_partition()
        self.train_ray_generator = training_ray_generator(self.train_dataset.cameras.to(self.device))
        self._widths = self.train_dataset.cameras.width[:, 0].to(self.device)
        self._colour_shifts = torch.tensor([0, 8, 16], dtype=torch.int32, device=self.device)
        if self.test_mode == "val" and (self.depth_track is not None or self.lidar_scans is not None):
            if self.config.depth_poses == "tpf" or self.lidar_scans is not None:  # LiDAR points: always the TPF
                self.stage1.tpf = self._stage1_tpf()
                self.stage1.time_offsets = self._time_offsets(self.stage1.tpf)
            elif self.config.depth_time_offset:
                CONSOLE.print(f"[yellow]--pipeline.datamanager.depth-time-offset applies to TPF poses only, not to depth_poses={self.config.depth_poses}")
            if self.depth_track is not None:
                poses = frame_poses(self.depth_track, self.config.depth_poses, self.stage1.tpf, self.stage1.applied_offsets())
                self.set_depth_poses(poses)
            if self.lidar_scans is not None:
                assert self.stage1.tpf is not None
                self.set_lidar_poses(self.stage1.tpf, self.stage1.applied_offsets())
        shard_sets = self.write_shards(existing_only=self.test_mode != "val")
        if shard_sets["rgb"] is None:
            CONSOLE.print(
                "The training ray shards of this run's data are not on disk: commands that sample training rays "
                "(ns-export) need them; write them with async-nerf-partition and the run's ns-train options."
            )
            return
        sampler = CellRaySampler(
            shard_sets["rgb"], self.trained_cells, self.config.train_num_rays_per_batch,
            self.config.sampling_seed, prefetch=self.config.shards.prefetch,
        )
        if sampler.empty_cells:
            CONSOLE.print(f"[yellow]Cells {sampler.empty_cells} have no RGB pixels: they stay empty (untrained).")
        sampler.set_depth(shard_sets["depth"], self.config.train_num_depth_rays_per_batch)
        sampler.set_lidar(shard_sets["lidar"], self.config.train_num_lidar_rays_per_batch)
        self.train_pixel_sampler = sampler

    def _stage1_tpf(self) -> FittedTPF:
        scene = self.scene
        if scene.rgb_timestamps is None or len(scene.rgb_timestamps) < 2:
            raise ValueError("depth_poses=tpf needs RGB timestamps (metadata 'timestamp' or numeric file names)")
        return cached_fit(
            self.cache_folder("stage1"), scene.rgb_timestamps.numpy(), self.train_dataset.cameras.camera_to_worlds.cpu(),
            self.config.tpf,
        )

    def _time_offsets(self, tpf: FittedTPF) -> Dict[str, TimeOffsetEstimate]:
        """Every training depth track's (depth_poses=tpf) and LiDAR track's clock offset: the given one, or
        estimated (cached with stage 1)."""
        scene = self.scene
        given = dict(self.config.depth_time_offset or {})
        known = sorted({*scene.depth_tracks, *scene.lidar_tracks})
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(
                f"--pipeline.datamanager.depth-time-offset names {unknown}, but the training split's depth and LiDAR "
                f"tracks are {known}"
            )
        fit = fit_key(scene.rgb_timestamps.numpy(), self.train_dataset.cameras.camera_to_worlds.cpu(), self.config.tpf)
        cache = (self.cache_folder("stage1"), fit)
        estimates: Dict[str, TimeOffsetEstimate] = {}
        if self.config.depth_poses == "tpf":
            tracks = {name: scene.depth_tracks[name].frames for name in sorted(scene.depth_tracks)}
            estimates.update(track_time_offsets(
                tracks, scene.pose_scale_factor, tpf.poses, self.config.time_offset, given, cache=cache, label="Stage 1: ",
            ))
        if scene.lidar_tracks:
            lidar = {name: scene.lidar_tracks[name] for name in sorted(scene.lidar_tracks)}
            estimates.update(lidar_track_time_offsets(
                lidar, scene.pose_scale_factor, tpf.poses, self.config.time_offset, given, cache=cache, label="Stage 1: ",
            ))
        return estimates

    @property
    def scene(self):
        """AsyncNerfMetadata of the training split."""
        return self.train_dataparser_outputs.metadata[METADATA_KEY]

    def cache_folder(self, sub: str) -> Path:
        parser = self.config.dataparser
        return cache_dir(Path(parser.data), parser.cache_dir, sub)

    @property
    def shard_root(self) -> Path:
        configured = self.config.shards.shard_dir
        if configured is not None:
            Path(configured).mkdir(parents=True, exist_ok=True)
            return Path(configured)
        return self.cache_folder("shards")

    def cell_training_pixels(self) -> Optional[Tensor]:
        """(cells, 3): each cell's RGB rays, depth rays and RGB images in its shards; None without shards."""
        sampler = self.train_pixel_sampler
        if sampler is None:
            return None
        rgb = image_counts(sampler.rgb_set).astype(np.int64)
        depth = image_counts(sampler.depth_set).astype(np.int64).sum(axis=0) if sampler.depth_set is not None else 0
        pixels = np.zeros((rgb.shape[1], 3), dtype=np.int64)
        pixels[:, 0], pixels[:, 1], pixels[:, 2] = rgb.sum(axis=0), depth, (rgb > 0).sum(axis=0)
        return torch.from_numpy(pixels)

    # --- depth frames and their poses ------------------------------------------------------------
    def set_depth_poses(self, c2w: Tensor) -> None:
        """The poses the training depth frames are used at (stage 1's); a change (beyond POSE_TOLERANCE)
        moves their rays and re-selects their shards. Set-up time: compares on the host."""
        assert self.depth_track is not None
        c2w = c2w.detach().cpu()
        if self.depth_frames is not None and torch.allclose(self.depth_frames.c2w, c2w, rtol=0.0, atol=POSE_TOLERANCE):
            return
        frames = DepthFrameSet(self.depth_track, c2w, self.scene.pose_scale_factor)
        self.depth_frames = frames
        generator = getattr(self, "_depth_ray_generator", None)
        if isinstance(generator, PinholeRayGenerator):
            generator.set_poses(frames.c2w.to(generator.c2w.device))  # stays on the device it was moved to
        else:
            self._depth_ray_generator = training_ray_generator(frames.cameras).to(self.device)
        self._depth_widths = frames.track.widths.to(self.device)
        nearest = nearest_in_time(frames.timestamps.numpy(), self.scene.rgb_timestamps.numpy())
        self._depth_appearance_index = torch.from_numpy(nearest).long().to(self.device)
        """Per depth frame, the nearest RGB frame in time: its appearance embedding renders the depth rays."""
        if self.train_pixel_sampler is not None:
            self.train_pixel_sampler.set_depth(self.write_shards()["depth"], self.config.train_num_depth_rays_per_batch)

    def set_lidar_poses(self, tpf: FittedTPF, offsets: Dict[str, float]) -> None:
        """The poses the training LiDAR rays are placed with: ``tpf`` (stage 1's) at each point's time plus its
        track's clock offset. New poses write (or find) the LiDAR shards of their rays. Set-up time."""
        assert self.lidar_scans is not None
        scans = self.lidar_scans
        track_offsets = {name: float(offsets.get(name, 0.0)) for name in scans.track_names}
        pose_fn = cpu_pose_function(tpf)
        key = lidar_poses_key(pose_fn.tpf, track_offsets, self.config.lidar_deskew)
        if key == self._lidar_poses_key:
            return
        self._lidar_poses_key = key
        self._lidar_pose_fn = pose_fn
        self._lidar_scan_times = scans.scan_times(track_offsets)
        nearest = nearest_in_time(self._lidar_scan_times, self.scene.rgb_timestamps.numpy())
        self._lidar_appearance_index = torch.from_numpy(nearest).long().to(self.device)
        """Per scan, the nearest RGB frame in time: its appearance embedding renders the LiDAR rays."""
        if self.train_pixel_sampler is not None:
            self.train_pixel_sampler.set_lidar(self.write_shards()["lidar"], self.config.train_num_lidar_rays_per_batch)

    def lidar_scan_rays(self, index: int) -> np.ndarray:
        """Training scan ``index``'s rays as LiDAR shard values (P, 8) at the poses set by `set_lidar_poses`."""
        assert self.lidar_scans is not None
        scans = self.lidar_scans
        rays = scan_rays(
            scans.points(index), float(self._lidar_scan_times[index]), scans.scans[index].lidar_to_camera,
            self._lidar_pose_fn, scans.pose_scale_factor, deskew=self.config.lidar_deskew,
        )
        return rays.records()

    # --- shards ----------------------------------------------------------------------------------
    def write_shards(self, existing_only: bool = False) -> Dict[str, Optional[Path]]:
        """Writes (or finds) the RGB and depth shard sets of every cell; returns their folders
        (with ``existing_only``, only finds complete ones: None where there is none)."""
        assert self.geometry is not None
        dataset = self.train_dataset
        masks = dataset._dataparser_outputs.mask_filenames  # nerfstudio keeps them there only
        rgb = write_rgb_shards(
            self.shard_root, dataset.cameras, dataset.image_filenames,
            lambda i: dataset.get_image_uint8(i), self.geometry, self.config.partition, self.config.shards,
            existing_only=existing_only, masks=masks,
            load_mask=None if masks is None else lambda i: get_image_mask_tensor_from_path(masks[i]).numpy(),
        )
        depth = None
        if self.depth_frames is not None and self.config.train_num_depth_rays_per_batch > 0:
            frames = self.depth_frames
            depth = write_depth_shards(
                self.shard_root, frames.cameras, [p for f in frames.track.frames for p in (f.depth_path, f.metadata_path)],
                frames.ray_distance, frames.pose_scale_factor, self.geometry, self.config.partition, self.config.shards,
            )
        lidar = None
        if self._lidar_poses_key is not None and self.config.train_num_lidar_rays_per_batch > 0:
            scans = self.lidar_scans
            assert scans is not None
            lidar = write_lidar_shards(
                self.shard_root, len(scans), self.lidar_scan_rays, scans.total_rows,
                [self._lidar_poses_key], scans.files(), self.geometry, self.config.partition, self.config.shards,
            )
        return {"rgb": rgb, "depth": depth, "lidar": lidar}

    def rgb_rays_for(self, records: np.ndarray) -> RayBundle:
        """RGB shard records (``image``, ``pixel`` fields) as rays of the train cameras, on the device."""
        image = torch.from_numpy(records["image"].astype(np.int64)).to(self.device)
        pixel = torch.from_numpy(records["pixel"].astype(np.int64)).to(self.device)
        width = self._widths[image]
        return self.train_ray_generator(torch.stack([image, pixel // width, pixel % width], dim=-1))

    # --- batches ---------------------------------------------------------------------------------
    def _draw(self, step: int) -> int:
        """The draw of training step ``step``: the step itself; the next draw after it for a repeated step."""
        return step if step > self._last_draw else self._last_draw + 1

    def cell_of_step(self, step: int) -> int:
        """The cell whose batch ``next_train(step)`` draws (the model's schedules run on that cell's clock)."""
        assert self.train_pixel_sampler is not None, "no training batches in inference mode"
        return self.train_pixel_sampler.cell_of(self._draw(step))

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        """The batch of training step ``step`` (a repeated step, as ns-export asks for, draws the next one)."""
        assert self.train_pixel_sampler is not None, "no training batches in inference mode"
        self.train_count += 1
        draw = self._draw(step)
        self._last_draw = draw
        cell, rgb, depth = self.train_pixel_sampler.sample(draw)
        device = torch.device(self.device)
        packed = _pack_records(rgb, depth, pin=device.type == "cuda").to(device, non_blocking=True)
        n = len(rgb)
        with torch.autocast(device_type=device.type, enabled=False):  # ray geometry stays float32
            indices = ray_indices(packed[:n], self._widths)
            bundle = self.train_ray_generator(indices)
            colours = ((packed[:n, 2:3] >> self._colour_shifts) & 255).float() / 255.0
            batch: Dict = {"image": colours, "indices": indices, CELL_BATCH_KEY: cell}
            if depth is not None:
                d_indices = ray_indices(packed[n:], self._depth_widths)
                depth_bundle = self._depth_ray_generator(d_indices)
                depth_bundle.camera_indices = self._depth_appearance_index[d_indices[:, 0]][:, None]  # appearance only
                bundle = concat_bundles(bundle, depth_bundle)
                batch[DEPTH_FRAME_KEY] = d_indices[:, 0]
                batch[DEPTH_BATCH_KEY] = packed[n:, 2:3].view(torch.float32)
            lidar = self.train_pixel_sampler.sample_lidar(draw)
            if lidar is not None and len(lidar):
                bundle = concat_bundles(bundle, self._lidar_rays(lidar, device, batch))
        return bundle, batch

    def _lidar_rays(self, records: np.ndarray, device: torch.device, batch: Dict) -> RayBundle:
        """LiDAR shard records as rays on the device (one pinned copy, not waited for); fills the batch's
        LiDAR keys (`data/ray_keys.py`)."""
        host = torch.from_numpy(np.ascontiguousarray(records).view(np.int32).reshape(len(records), -1))
        if device.type == "cuda":
            host = host.pin_memory()
        packed = host.to(device, non_blocking=True)
        scan, values = packed[:, 0].long(), packed[:, 2:].view(torch.float32)
        count = len(records)
        batch[LIDAR_SCAN_KEY], batch[LIDAR_DT_KEY], batch[LIDAR_RANGE_KEY] = scan, values[:, 7], values[:, 6:7]
        ones = torch.ones((count, 1), device=device)
        return RayBundle(
            origins=values[:, 0:3], directions=values[:, 3:6], pixel_area=ones * LIDAR_PIXEL_AREA,
            camera_indices=self._lidar_appearance_index[scan][:, None], metadata={"directions_norm": ones},
        )


def concat_bundles(first: RayBundle, second: RayBundle) -> RayBundle:
    """Rays of ``first`` followed by those of ``second`` (flat bundles, same metadata keys)."""
    keys = set(first.metadata) & set(second.metadata)
    return RayBundle(
        origins=torch.cat([first.origins, second.origins]),
        directions=torch.cat([first.directions, second.directions]),
        pixel_area=torch.cat([first.pixel_area, second.pixel_area]),
        camera_indices=torch.cat([first.camera_indices, second.camera_indices]),
        metadata={k: torch.cat([first.metadata[k], second.metadata[k]]) for k in keys},
    )
