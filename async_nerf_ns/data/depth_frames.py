"""The depth frames of a split, all tracks together, at the poses they are used with.

Where the poses come from (time-pose function, the metadata prior, or ground truth) is the
pipeline's choice; this module turns frames + poses into nerfstudio Cameras and turns measured
depth (metres, planar z or ray distance) into distance along the ray in scene units, which is
what the model's expected ray termination is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from torch import Tensor

from async_nerf_ns.layout.frame_files import load_ray_distance_metres
from async_nerf_ns.data.scene_metadata import AsyncNerfMetadata, DepthTrackData


def concat_tracks(meta: AsyncNerfMetadata) -> DepthTrackData:
    """All depth tracks of a split as one, tracks in name order, each in timestamp order."""
    tracks = [meta.depth_tracks[name] for name in sorted(meta.depth_tracks)]
    frames = [frame for track in tracks for frame in track.frames]
    return DepthTrackData.from_frames("+".join(sorted(meta.depth_tracks)), frames)


def frame_time_offsets(track: DepthTrackData, offsets: Optional[Mapping[str, float]]) -> np.ndarray:
    """Per frame of a (combined) track, its track's clock offset in seconds (0 for tracks not named)."""
    offsets = offsets or {}
    return np.array([float(offsets.get(frame.track, 0.0)) for frame in track.frames], dtype=np.float64)


def ray_distance(track: DepthTrackData, index: int, pose_scale_factor: float) -> Float[Tensor, "H W"]:
    """Measured distance along each pixel's ray of frame ``index``, scene units; 0 where there is no measurement."""
    return load_ray_distance_metres(track.frames[index]) / pose_scale_factor


@dataclass
class DepthFrameSet:
    """Depth frames (one combined track) with one pose each, in the world frame."""

    track: DepthTrackData
    c2w: Float[Tensor, "num 3 4"]
    pose_scale_factor: float

    def __post_init__(self) -> None:
        assert self.c2w.shape == (len(self.track), 3, 4), "one pose per depth frame"
        if not torch.isfinite(self.c2w).all():
            raise ValueError(f"depth track '{self.track.name}': some frames have no pose from the chosen source")

    @property
    def timestamps(self) -> Tensor:
        return self.track.timestamps

    def __len__(self) -> int:
        return len(self.track)

    @property
    def cameras(self) -> Cameras:
        k = self.track.intrinsics
        return Cameras(
            camera_to_worlds=self.c2w.float(),
            fx=k[:, 0:1],
            fy=k[:, 1:2],
            cx=k[:, 2:3],
            cy=k[:, 3:4],
            width=self.track.widths[:, None],
            height=self.track.heights[:, None],
            camera_type=CameraType.PERSPECTIVE,
        )

    def ray_distance(self, index: int) -> Float[Tensor, "H W"]:
        """Measured distance along each pixel's ray, scene units; 0 where there is no measurement."""
        return ray_distance(self.track, index, self.pose_scale_factor)
