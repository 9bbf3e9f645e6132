"""What the DataParser hands on beyond RGB cameras: depth and LiDAR tracks, timestamps, frames.

Lives in `DataparserOutputs.metadata["async_nerf"]`. Kept free of nerfstudio imports and made
of plain dataclasses, tensors and paths, so nerfstudio can deep-copy it (InputDataset) and
pickle it (ParallelDataManager's spawned workers).

Poses are in nerfstudio's z-up world (`layout/frames.py` converts them from the layout's DRB world).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from async_nerf_ns.layout import DepthFrame, LidarScan
from async_nerf_ns.layout.frames import DRB_TO_WORLD, stack_poses_world

@dataclass
class DepthTrackData:
    """The frames of one depth track in one split, in timestamp order."""

    name: str
    filenames: List[Path]
    frames: List[DepthFrame]
    """Per frame, for `layout.load_depth_metres`."""
    timestamps: Float[Tensor, "num"]
    """float64 seconds."""
    intrinsics: Float[Tensor, "num 4"]
    """fx, fy, cx, cy (float32) for widths x heights."""
    widths: Tensor
    """long (N,)."""
    heights: Tensor
    """long (N,)."""
    prior_c2w: Float[Tensor, "num 3 4"]
    """Prior poses from the metadata, world frame, float32; NaN rows where a frame has none."""
    gt_c2w: Float[Tensor, "num 3 4"]
    """True poses (pose_gt_TRACK/), world frame, float32; NaN where missing. Evaluation only."""
    depth_is_ray: Tensor
    """bool (N,): True where values are ray distances, False for planar z-depth."""

    def __len__(self) -> int:
        return len(self.frames)

    @classmethod
    def from_frames(cls, name: str, frames: List[DepthFrame]) -> "DepthTrackData":
        return cls(
            name=name,
            filenames=[frame.depth_path for frame in frames],
            frames=list(frames),
            timestamps=torch.tensor([frame.timestamp for frame in frames], dtype=torch.float64),
            intrinsics=torch.tensor(np.array([frame.intrinsics for frame in frames]).reshape(-1, 4)).float(),
            widths=torch.tensor([frame.width for frame in frames], dtype=torch.long),
            heights=torch.tensor([frame.height for frame in frames], dtype=torch.long),
            prior_c2w=stack_poses_world([frame.c2w_prior for frame in frames]),
            gt_c2w=stack_poses_world([frame.pose_gt for frame in frames]),
            depth_is_ray=torch.tensor([frame.depth_is_ray for frame in frames], dtype=torch.bool),
        )


@dataclass
class AsyncNerfMetadata:
    """Everything of one split that nerfstudio's DataparserOutputs has no field for."""

    split: str
    """The layout split these frames come from ("train" or "val")."""
    rgb_timestamps: Optional[Float[Tensor, "num_rgb"]]
    """float64 seconds per RGB camera (same order as the Cameras), None unless every frame has one."""
    rgb_gt_c2w: Float[Tensor, "num_rgb 3 4"]
    """True RGB poses (pose_gt_rgb/), world frame, float32; NaN where missing."""
    depth_tracks: Dict[str, DepthTrackData]
    origin_drb: Float[Tensor, "3"]
    """Scene origin in metres, DRB frame, float64."""
    pose_scale_factor: float
    """Metres per scene unit."""
    drb_to_world: Float[Tensor, "3 3"] = field(default_factory=lambda: torch.from_numpy(DRB_TO_WORLD).float())
    """p_world = drb_to_world @ p_drb (normalised DRB to nerfstudio world)."""
    lidar_tracks: Dict[str, List[LidarScan]] = field(default_factory=dict)
    """The split's LiDAR scans per track, each in time order (`async_nerf_ns/lidar`)."""
