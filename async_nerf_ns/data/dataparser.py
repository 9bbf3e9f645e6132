"""nerfstudio DataParser for the async-nerf layout (`async-nerf-data`).

Usable by any nerfstudio method: `ns-train nerfacto --data D async-nerf-data` trains on the RGB
frames alone. RGB frames become nerfstudio `Cameras` in a z-up world; depth tracks, timestamps
and the metric frame travel in `DataparserOutputs.metadata["async_nerf"]`.

This module is the target of a `nerfstudio.dataparser_configs` entry point, which nerfstudio
loads while `nerfstudio.configs.dataparser_configs` is itself being imported: it may import
nerfstudio's dataparser base, cameras and scene box, and our layout, nothing that imports a
datamanager, model or method config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Type

import numpy as np
import torch
from PIL import Image

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.files.cache_dir import cache_dir
from async_nerf_ns.layout import DatasetLayout, LayoutError, RgbFrame, load_mask, load_rgb, read_layout
from async_nerf_ns.data.scene_metadata import AsyncNerfMetadata, DepthTrackData
from async_nerf_ns.layout.frames import DRB_TO_WORLD, drb_c2w_to_world, stack_poses_world

METADATA_KEY = "async_nerf"
"""Key of AsyncNerfMetadata in DataparserOutputs.metadata."""
SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "val"}
"""nerfstudio split name -> layout folder: evaluation and test both use val/."""
NERFSTUDIO_IMAGE_MODES = ("RGB", "RGBA", "L")
"""PIL modes nerfstudio's InputDataset reads correctly; other files get a converted copy."""


@dataclass
class AsyncNerfDataParserConfig(DataParserConfig):
    """Reads an async-nerf dataset (Mega-NeRF layout plus asynchronous depth tracks)."""

    _target: Type = field(default_factory=lambda: AsyncNerfDataParser)
    data: Path = Path("example_data")
    """Dataset root: the folder holding coordinates.pt, train/ and val/."""
    scene_scale: float = 1.5
    """Half the edge of the axis-aligned scene box, in scene units. The layout normalises camera
    positions to about [-1, 1], so the default leaves half a unit of room around them."""
    cache_dir: Optional[Path] = None
    """Where derived files go: resized or converted copies of RGB files, the stage-1 time-pose function
    and (unless --pipeline.datamanager.shards.shard-dir says otherwise) the ray shards; the dataset is
    never modified. Default: DATA/.async_nerf_cache, or a temporary folder when DATA is read-only."""


class AsyncNerfDataParser(DataParser):
    """Turns the layout of one split into nerfstudio DataparserOutputs."""

    config: AsyncNerfDataParserConfig

    def __init__(self, config: AsyncNerfDataParserConfig):
        super().__init__(config=config)
        self._layout: Optional[DatasetLayout] = None

    @property
    def layout(self) -> DatasetLayout:
        """The parsed dataset, read once: nerfstudio asks for each split separately."""
        if self._layout is None:
            self._layout = read_layout(self.config.data)
        return self._layout

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"unknown split '{split}'; expected one of {sorted(SPLIT_FOLDERS)}")
        layout = self.layout
        folder = SPLIT_FOLDERS[split]
        frames = layout.splits[folder].rgb
        if not frames:
            raise LayoutError(
                layout.root / folder / "rgbs",
                f"no RGB frames for the '{split}' split: nerfstudio evaluates on val/ frames, so add a val/ split",
            )

        c2w_world = drb_c2w_to_world(np.stack([frame.c2w for frame in frames]))
        intrinsics = torch.tensor(np.stack([frame.intrinsics for frame in frames])).float()
        cameras = Cameras(
            camera_to_worlds=torch.from_numpy(c2w_world).float(),
            fx=intrinsics[:, 0:1],
            fy=intrinsics[:, 1:2],
            cx=intrinsics[:, 2:3],
            cy=intrinsics[:, 3:4],
            width=torch.tensor([[frame.width] for frame in frames], dtype=torch.long),
            height=torch.tensor([[frame.height] for frame in frames], dtype=torch.long),
            camera_type=CameraType.PERSPECTIVE,
        )
        timestamps = layout.splits[folder].rgb_timestamps
        metadata = AsyncNerfMetadata(
            split=folder,
            rgb_timestamps=None if timestamps is None else torch.from_numpy(timestamps),
            rgb_gt_c2w=stack_poses_world([frame.pose_gt for frame in frames]),
            depth_tracks={
                name: DepthTrackData.from_frames(name, track) for name, track in layout.splits[folder].depth.items()
            },
            origin_drb=torch.from_numpy(layout.coordinates.origin_drb.copy()),
            pose_scale_factor=layout.coordinates.pose_scale_factor,
            lidar_tracks={name: list(scans) for name, scans in layout.splits[folder].lidar.items()},
        )
        s = self.config.scene_scale
        return DataparserOutputs(
            image_filenames=self._nerfstudio_images(frames, folder),
            mask_filenames=self._nerfstudio_masks(frames, folder),
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-s, -s, -s], [s, s, s]], dtype=torch.float32)),
            metadata={METADATA_KEY: metadata},
            dataparser_transform=torch.cat([torch.from_numpy(DRB_TO_WORLD).float(), torch.zeros(3, 1)], dim=1),
            dataparser_scale=1.0,
        )

    def _nerfstudio_images(self, frames: List[RgbFrame], folder: str) -> List[Path]:
        """Files nerfstudio can read as-is: the user's, or a copy resized to W x H / converted to RGB."""
        needs_copy = [
            frame
            for frame in frames
            if frame.file_size != (frame.width, frame.height) or frame.file_mode not in NERFSTUDIO_IMAGE_MODES
        ]
        if not needs_copy:
            return [frame.image_path for frame in frames]
        cache = self._cache_dir() / folder
        CONSOLE.print(
            f"async-nerf-data: {len(needs_copy)} RGB files differ from their metadata W x H or are not RGB; "
            f"using copies in {cache}"
        )
        copies: Dict[Path, Path] = {}
        for frame in needs_copy:
            copies[frame.image_path] = _resized_copy(frame, cache)
        return [copies.get(frame.image_path, frame.image_path) for frame in frames]

    def _nerfstudio_masks(self, frames: List[RgbFrame], folder: str) -> Optional[List[Path]]:
        """None when no frame of the split has a mask; else a mask per frame that nerfstudio reads at the
        size it reads the image (W x H): the user's where it already is, else a copy (resized, or all
        ones for a frame without a mask: nerfstudio needs a mask for every image or for none)."""
        if not any(frame.mask_path is not None for frame in frames):
            return None
        cache = self._cache_dir() / folder
        return [
            frame.mask_path if frame.mask_path is not None and frame.file_size == (frame.width, frame.height)
            else _mask_copy(frame, cache)
            for frame in frames
        ]

    def _cache_dir(self) -> Path:
        return cache_dir(Path(self.config.data), self.config.cache_dir, "rgb_resized")


def _resized_copy(frame: RgbFrame, cache: Path) -> Path:
    """PNG copy of `frame` at W x H (lossless, so no second compression); reused while newer than the source."""
    target = cache / f"{frame.stem}_{frame.width}x{frame.height}.png"
    return _png_copy(target, frame.image_path, lambda: load_rgb(frame))


def _mask_copy(frame: RgbFrame, cache: Path) -> Path:
    """PNG mask of `frame` at W x H (0 / 255): its mask resized, or every pixel kept where it has none."""
    source = frame.mask_path if frame.mask_path is not None else frame.image_path
    target = cache / f"{frame.stem}_{frame.width}x{frame.height}_{'mask' if frame.mask_path else 'nomask'}.png"
    return _png_copy(target, source, lambda: load_mask(frame).astype(np.uint8) * 255)


def _png_copy(target: Path, source: Path, pixels) -> Path:
    """`target` written from `pixels()` unless it is newer than `source`; atomic (a concurrent reader never
    sees half a file)."""
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    Image.fromarray(pixels()).save(partial, format="PNG")
    os.replace(partial, target)
    return target


async_nerf_dataparser = DataParserSpecification(
    config=AsyncNerfDataParserConfig(),
    description="Async-NeRF / Mega-NeRF layout: RGB frames with metadata plus asynchronous depth tracks",
)
