"""Training batches for async-nerf: one cell per step, its RGB pixels and its depth-frame pixels.

Subclasses nerfstudio's VanillaDataManager and keeps its evaluation side (eval images, fixed-index
eval dataloader) unchanged; only training sampling differs:
- every step draws from ONE cell (round-robin over the cells being trained): RGB pixels whose
  ray crosses the cell (cluster masks from ``async_nerf_ns.partition``) and, once the pipeline
  has given depth frames their poses, depth pixels of that cell;
- rays of depth frames follow the RGB rays in the bundle; their ``metadata["depth_frame"]``
  names the depth frame (for pose refinement) and ``batch["depth"]`` holds the measured distance
  along the ray in scene units.
Pixels are loaded lazily on the first training step, so ns-eval/ns-render pay nothing for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from async_nerf_ns.data.dataparser import METADATA_KEY, AsyncNerfDataParserConfig
from async_nerf_ns.data.depth_frames import DepthFrameSet
from async_nerf_ns.data.pixel_store import PixelStore
from async_nerf_ns.data.ray_keys import CELL_KEY, DEPTH_FRAME_KEY
from async_nerf_ns.partition.cache import cached_cluster_masks
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry



@dataclass
class AsyncNerfDataManagerConfig(VanillaDataManagerConfig):
    """Cell-wise ray sampling of RGB and depth-frame pixels."""

    _target: Type = field(default_factory=lambda: AsyncNerfDataManager)
    dataparser: AsyncNerfDataParserConfig = field(default_factory=AsyncNerfDataParserConfig)
    train_num_rays_per_batch: int = 4096
    """RGB rays per training step (all from the cell trained at that step)."""
    train_num_depth_rays_per_batch: int = 1024
    """Rays from depth frames per training step, same cell (0: no depth supervision)."""
    sampling_seed: int = 0
    """Seed of the training pixel sampler."""


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
        super().__init__(config, device, test_mode, world_size, local_rank, **kwargs)
        self._generator = torch.Generator().manual_seed(config.sampling_seed)
        self.geometry: Optional[PartitionGeometry] = None
        self.partition_config: Optional[PartitionConfig] = None
        self.trained_cells: List[int] = [0]
        self._rgb_store: Optional[PixelStore] = None
        self._depth_store: Optional[PixelStore] = None
        self.depth_frames: Optional[DepthFrameSet] = None
        self._depth_ray_generator: Optional[RayGenerator] = None
        self._depth_appearance_index: Optional[Tensor] = None
        self._cursor = 0

    @property
    def scene(self):
        """AsyncNerfMetadata of the training split."""
        return self.train_dataparser_outputs.metadata[METADATA_KEY]

    @property
    def cache_dir(self) -> Path:
        parser = self.config.dataparser
        return Path(parser.cache_dir or Path(parser.data) / ".async_nerf_cache")

    def setup_train(self) -> None:
        """Only the ray generator: pixels and cluster masks are built on the first training step."""
        self.train_ray_generator = RayGenerator(self.train_dataset.cameras.to(self.device))

    # --- set by the pipeline -------------------------------------------------------------------
    def use_partition(self, geometry: PartitionGeometry, config: PartitionConfig, cells: List[int]) -> None:
        """Train ``cells`` of ``geometry``; masks are computed (or read from the cache) lazily."""
        self.geometry, self.partition_config = geometry, config
        self.trained_cells = list(cells)
        self._rgb_store = self._depth_store = None

    def set_depth_frames(self, frames: DepthFrameSet) -> None:
        """Depth frames with the poses they are trained at (TPF, prior or GT: the pipeline decides)."""
        self.depth_frames = frames
        self._depth_store = None
        self._depth_ray_generator = RayGenerator(frames.cameras.to(self.device))
        rgb_times = self.scene.rgb_timestamps
        # Depth rays need *some* RGB frame index for the appearance embedding: the nearest in time.
        nearest = torch.searchsorted(rgb_times, frames.timestamps.clamp(rgb_times[0], rgb_times[-1]))
        nearest = nearest.clamp(max=len(rgb_times) - 1)
        previous = (nearest - 1).clamp(min=0)
        closer_previous = (frames.timestamps - rgb_times[previous]).abs() < (rgb_times[nearest] - frames.timestamps).abs()
        self._depth_appearance_index = torch.where(closer_previous, previous, nearest)

    # --- pixels ----------------------------------------------------------------------------------
    def _cell_masks(self, cameras: Cameras, what: str) -> Optional[List[Tensor]]:
        if self.geometry is None or self.geometry.num_cells == 1:
            return None
        assert self.partition_config is not None
        CONSOLE.print(f"Cluster masks for {len(cameras)} {what} ({self.geometry.num_cells} cells)")
        return cached_cluster_masks(
            self.cache_dir,
            cameras,
            self.geometry.centroids,
            self.partition_config,
            self.geometry.z_range,
            max_ray_length=self.geometry.max_ray_length,
        )

    def _num_cells(self) -> int:
        return 1 if self.geometry is None else self.geometry.num_cells

    def rgb_store(self) -> PixelStore:
        if self._rgb_store is None:
            cameras = self.train_dataset.cameras
            images = [self.train_dataset.get_image_uint8(i)[..., :3].reshape(-1, 3) for i in range(len(cameras))]
            self._rgb_store = PixelStore(
                cameras.width[:, 0].tolist(),
                cameras.height[:, 0].tolist(),
                torch.cat(images, dim=0),
                self._cell_masks(cameras, "RGB frames"),
                num_cells=self._num_cells(),
            )
            self._report("RGB", self._rgb_store)
        return self._rgb_store

    def depth_store(self) -> Optional[PixelStore]:
        if self.depth_frames is None or self.config.train_num_depth_rays_per_batch <= 0:
            return None
        if self._depth_store is None:
            frames = self.depth_frames
            distances = frames.load_ray_distances()  # list of (H, W) scene units, 0 = invalid
            flat = torch.cat([d.reshape(-1, 1) for d in distances], dim=0)
            self._depth_store = PixelStore(
                frames.cameras.width[:, 0].tolist(),
                frames.cameras.height[:, 0].tolist(),
                flat,
                self._cell_masks(frames.cameras, "depth frames"),
                valid=flat[:, 0] > 0,
                num_cells=self._num_cells(),
            )
            self._report("depth", self._depth_store)
        return self._depth_store

    def _report(self, what: str, store: PixelStore) -> None:
        counts = [store.count(k) for k in range(len(store.cell_indices))]
        CONSOLE.print(f"{what} training pixels per cell: {counts}")

    def cells_with_pixels(self) -> List[int]:
        """The trained cells that have RGB pixels; empty ones are reported and skipped."""
        store = self.rgb_store()
        kept = [k for k in self.trained_cells if store.count(k) > 0]
        empty = sorted(set(self.trained_cells) - set(kept))
        if empty:
            CONSOLE.print(f"[yellow]Cells {empty} have no RGB pixels: they stay empty (untrained).")
        if not kept:
            raise RuntimeError(f"none of the cells {self.trained_cells} sees any training pixel")
        return kept

    # --- batches ---------------------------------------------------------------------------------
    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        self.train_count += 1
        if self._cursor == 0:
            self._active = self.cells_with_pixels()
        # Round-robin: every cell gets the same number of steps, as when cells train in separate
        # processes (Mega-NeRF trains each submodule for the same number of iterations).
        cell = self._active[self._cursor % len(self._active)]
        self._cursor += 1

        indices, colours = self.rgb_store().sample(cell, self.config.train_num_rays_per_batch, self._generator)
        indices = indices.to(self.device)
        bundle = self.train_ray_generator(indices)
        bundle.metadata[DEPTH_FRAME_KEY] = torch.full((len(indices), 1), -1, dtype=torch.long, device=self.device)
        batch: Dict = {"image": colours.float().to(self.device) / 255.0, "indices": indices, "cell": cell}

        depth_store = self.depth_store()
        if depth_store is not None:
            assert self._depth_ray_generator is not None and self._depth_appearance_index is not None
            d_indices, distances = depth_store.sample(cell, self.config.train_num_depth_rays_per_batch, self._generator)
            d_indices = d_indices.to(self.device)
            depth_bundle = self._depth_ray_generator(d_indices)
            depth_bundle.metadata[DEPTH_FRAME_KEY] = d_indices[:, :1].clone()
            depth_bundle.camera_indices = self._depth_appearance_index.to(self.device)[d_indices[:, 0]][:, None]
            bundle = concat_bundles(bundle, depth_bundle)
            batch["depth"] = distances.to(self.device)
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
