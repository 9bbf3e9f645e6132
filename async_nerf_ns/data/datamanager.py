"""Training data for async-nerf: the partition, stage 1 (depth-frame poses) and per-cell ray shards.

Subclasses nerfstudio's VanillaDataManager and keeps its evaluation side (eval images, fixed-index
eval dataloader); training differs:
- set-up: the partition of the training cameras, and (training only) stage 1: the time-pose function
  (fitted once per dataset and cached, `trajectory/stage1.py`) gives every depth frame its pose;
- data: every cell's RGB pixels and depth pixels live on disk as shuffled per-cell ray shards
  (`async_nerf_ns/shards`), written on first use (or beforehand by ``async-nerf-partition``) in
  bounded memory, and read a chunk at a time: RAM does not grow with the number of frames, and a
  run restricted to some cells reads only their chunks;
- batches: each step draws ONE cell (round-robin) and a batch of its RGB and depth records, as a pure
  function of (seed, step) (`cell_sampler.py`), so a resumed run continues exactly.
Depth rays follow the RGB rays in the bundle; ``metadata["depth_frame"]`` names their depth frame
(for pose refinement) and ``batch["depth"]`` holds the measured distance along the ray (scene units).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type, Union

import numpy as np
import torch
import tyro
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from async_nerf_ns.data.cache_dir import cache_dir
from async_nerf_ns.data.cell_sampler import CellRaySampler
from async_nerf_ns.data.cell_shards import ShardConfig, pixel_rows_columns, write_depth_shards, write_rgb_shards
from async_nerf_ns.data.dataparser import METADATA_KEY, AsyncNerfDataParserConfig
from async_nerf_ns.data.depth_frames import DepthFrameSet, concat_tracks
from async_nerf_ns.data.ray_keys import CELL_KEY, DEPTH_FRAME_KEY, DATA_SETUP_KEY
from async_nerf_ns.data.scene_metadata import DepthTrackData
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry, resolve_geometry
from async_nerf_ns.trajectory.stage1 import fitted_tpf
from async_nerf_ns.trajectory.tpf import FittedTPF, TimePoseFunctionConfig

DepthPoseSource = Literal["tpf", "prior", "gt"]

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
    shards: ShardConfig = field(default_factory=ShardConfig)
    """The per-cell ray shards on disk."""
    resume_checkpoint: tyro.conf.Suppress[Optional[Path]] = None
    """Set by the trainer when it resumes a run: stage 1 is read from this checkpoint, not fitted."""


@dataclass
class Stage1:
    """What stage 1 produced for training. A plain holder, not a submodule: the pipeline registers the
    time-pose function (its checkpoint keys are ``tpf.*``)."""

    tpf: Optional[FittedTPF] = None
    """The time-pose function fitted to the training RGB frames (depth_poses=tpf)."""


def validated_cells(cells: Optional[Tuple[int, ...]], num_cells: int) -> List[int]:
    if cells is None:
        return list(range(num_cells))
    bad = [c for c in cells if not 0 <= c < num_cells]
    if bad or not cells:
        raise ValueError(f"--pipeline.datamanager.cells {list(cells or [])}: cells are numbered 0..{num_cells - 1}")
    return sorted(set(cells))


def nearest_in_time(rgb_times: Tensor, times: Tensor) -> Tensor:
    """Index of the nearest RGB frame in time (depth rays need one for the appearance embedding)."""
    nearest = torch.searchsorted(rgb_times, times.clamp(rgb_times[0], rgb_times[-1])).clamp(max=len(rgb_times) - 1)
    previous = (nearest - 1).clamp(min=0)
    closer_previous = (times - rgb_times[previous]).abs() < (rgb_times[nearest] - times).abs()
    return torch.where(closer_previous, previous, nearest)


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
        super().__init__(config, device, test_mode, world_size, local_rank, **kwargs)
        scene = self.scene
        cameras = self.train_dataset.cameras
        self.geometry: PartitionGeometry = resolve_geometry(
            config.partition, cameras.camera_to_worlds[:, :, 3], scene.origin_drb, scene.pose_scale_factor, scene.drb_to_world
        )
        self.trained_cells = validated_cells(config.cells, self.geometry.num_cells)
        self.depth_track: Optional[DepthTrackData] = concat_tracks(scene) if scene.depth_tracks else None
        self.stage1 = Stage1()
        self.depth_frames: Optional[DepthFrameSet] = None
        self._sampler: Optional[CellRaySampler] = None
        self._depth_ray_generator: Optional[RayGenerator] = None
        self._depth_appearance_index: Optional[Tensor] = None
        self._last_draw = -1
        if test_mode == "val" and self.depth_track is not None:  # training: stage 1
            if config.depth_poses == "tpf":
                if scene.rgb_timestamps is None or len(scene.rgb_timestamps) < 2:
                    raise ValueError("depth_poses=tpf needs RGB timestamps (metadata 'timestamp' or numeric file names)")
                self.stage1.tpf = self._saved_stage1_tpf() or fitted_tpf(
                    self.cache_folder("stage1"), scene.rgb_timestamps.numpy(), cameras.camera_to_worlds.cpu(), config.tpf
                )
            self.set_depth_poses(self.depth_poses(self.depth_track, config.depth_poses, self.stage1.tpf))
        self.train_dataset.metadata[DATA_SETUP_KEY] = {
            "centroids": self.geometry.centroids,
            "num_depth_frames": 0 if self.depth_track is None else len(self.depth_track),
            "depth_poses": config.depth_poses,
        }

    def _saved_stage1_tpf(self) -> Optional[FittedTPF]:
        """The stage-1 TPF of the checkpoint a resumed run continues (``stage1_tpf.*`` when it was
        fine-tuned, else ``tpf.*``); None when not resuming or the checkpoint has none."""
        if self.config.resume_checkpoint is None:
            return None
        state = torch.load(self.config.resume_checkpoint, map_location="cpu", weights_only=True)["pipeline"]
        for prefix in ("stage1_tpf.", "tpf."):
            tpf_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if tpf_state:
                CONSOLE.print(f"Stage 1: time-pose function from {self.config.resume_checkpoint}")
                return FittedTPF.from_state_dict(self.config.tpf, tpf_state)
        return None

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

    def setup_train(self) -> None:
        """Only the ray generator: shards are opened (or written) on the first training batch."""
        self.train_ray_generator = RayGenerator(self.train_dataset.cameras.to(self.device))

    # --- depth frames and their poses ------------------------------------------------------------
    def depth_poses(self, track: DepthTrackData, source: DepthPoseSource, tpf: Optional[FittedTPF]) -> Tensor:
        """World-frame poses (N,3,4) of a track's frames from ``source`` (for tpf: of the given TPF)."""
        if source == "tpf":
            assert tpf is not None, "depth_poses=tpf without a time-pose function"
            with torch.no_grad():
                return tpf.poses(track.timestamps.numpy()).cpu()
        poses = track.prior_c2w if source == "prior" else track.gt_c2w
        missing = (~torch.isfinite(poses).reshape(len(track), -1).all(dim=1)).nonzero()
        if len(missing):
            frame = track.frames[int(missing[0])]
            what = "a prior c2w in its metadata" if source == "prior" else "a pose_gt file"
            raise ValueError(f"depth_poses={source}: {frame.metadata_path} (and {len(missing) - 1} more) has no {what}")
        return poses

    def set_depth_poses(self, c2w: Tensor) -> None:
        """The poses the training depth frames are used at (stage 1's); a change re-selects their shards."""
        assert self.depth_track is not None
        if self.depth_frames is not None and torch.equal(self.depth_frames.c2w, c2w):
            return
        frames = DepthFrameSet(self.depth_track, c2w, self.scene.pose_scale_factor)
        self.depth_frames = frames
        self._depth_ray_generator = RayGenerator(frames.cameras.to(self.device))
        self._depth_appearance_index = nearest_in_time(self.scene.rgb_timestamps, frames.timestamps)
        if self._sampler is not None:
            self._sampler.set_depth(None, 0)
            self._attach_depth(self._sampler)

    # --- shards ----------------------------------------------------------------------------------
    def write_shards(self) -> Dict[str, Optional[Path]]:
        """Writes (or finds) the RGB and depth shard sets of every cell; returns their folders."""
        dataset = self.train_dataset
        rgb = write_rgb_shards(
            self.shard_root, dataset.cameras, dataset.image_filenames,
            lambda i: dataset.get_image_uint8(i), self.geometry, self.config.partition, self.config.shards,
        )
        depth = None
        if self.depth_frames is not None and self.config.train_num_depth_rays_per_batch > 0:
            frames = self.depth_frames
            depth = write_depth_shards(
                self.shard_root, frames.cameras, [p for f in frames.track.frames for p in (f.depth_path, f.metadata_path)], frames.ray_distance,
                frames.pose_scale_factor, self.geometry, self.config.partition, self.config.shards,
            )
        return {"rgb": rgb, "depth": depth}

    def _attach_depth(self, sampler: CellRaySampler) -> None:
        depth = self.write_shards()["depth"]
        sampler.set_depth(depth, self.config.train_num_depth_rays_per_batch)

    @property
    def train_pixel_sampler(self) -> CellRaySampler:  # type: ignore[override]
        """The training sampler (nerfstudio's name: ns-export sets its num_rays_per_batch)."""
        if self._sampler is None:
            shard_sets = self.write_shards()
            sampler = CellRaySampler(
                shard_sets["rgb"], self.trained_cells, self.config.train_num_rays_per_batch,
                self.config.sampling_seed, prefetch=self.config.shards.prefetch,
            )
            if sampler.empty_cells:
                CONSOLE.print(f"[yellow]Cells {sampler.empty_cells} have no RGB pixels: they stay empty (untrained).")
            if shard_sets["depth"] is not None:
                sampler.set_depth(shard_sets["depth"], self.config.train_num_depth_rays_per_batch)
            self._sampler = sampler
        return self._sampler

    def cells_with_pixels(self) -> List[int]:
        """The trained cells that have RGB pixels; empty ones are reported and skipped."""
        return list(self.train_pixel_sampler.cells)

    # --- batches ---------------------------------------------------------------------------------
    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        """The batch of training step ``step`` (a repeated step, as ns-export asks for, draws the next one)."""
        self.train_count += 1
        draw = step if step > self._last_draw else self._last_draw + 1
        self._last_draw = draw
        cell, rgb, depth = self.train_pixel_sampler.sample(draw)

        indices = pixel_rows_columns(rgb, self.train_dataset.cameras.width[:, 0]).to(self.device)
        bundle = self.train_ray_generator(indices)
        bundle.metadata[DEPTH_FRAME_KEY] = torch.full((len(indices), 1), -1, dtype=torch.long, device=self.device)
        colours = torch.from_numpy(rgb["rgb"].astype(np.float32) / 255.0)
        batch: Dict = {"image": colours.to(self.device), "indices": indices, "cell": cell}

        if depth is not None:
            assert self._depth_ray_generator is not None and self._depth_appearance_index is not None
            assert self.depth_frames is not None
            d_indices = pixel_rows_columns(depth, self.depth_frames.track.widths).to(self.device)
            depth_bundle = self._depth_ray_generator(d_indices)
            depth_bundle.metadata[DEPTH_FRAME_KEY] = d_indices[:, :1].clone()
            depth_bundle.camera_indices = self._depth_appearance_index.to(self.device)[d_indices[:, 0]][:, None]
            bundle = concat_bundles(bundle, depth_bundle)
            batch["depth"] = torch.from_numpy(depth["depth"].astype(np.float32))[:, None].to(self.device)
        bundle.metadata[CELL_KEY] = torch.full((len(bundle), 1), cell, dtype=torch.long, device=self.device)
        return bundle, batch


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
