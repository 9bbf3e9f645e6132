"""The dataset layout's vocabulary: its error type, folder and file names, and the frame records.

`layout.read_layout` fills these records; `frame_files` decodes the images and depth maps they
name; `metadata_values` checks the numbers in their metadata. docs/DATA_LAYOUT.md is the
contract they implement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

RGB_EXTENSIONS = (".jpg", ".jpeg", ".png")
"""Image types of RGB frames (compared case-insensitively)."""
DEPTH_EXTENSIONS = (".npy", ".pt", ".png", ".tif", ".tiff", ".jpg", ".jpeg")
"""Depth map types (compared case-insensitively)."""
MASK_DIR = "masks"
"""Folder of per-pixel masks beside rgbs/ (nerfstudio's convention: 0 = ignore the pixel)."""
MASK_EXTENSIONS = (".png",)
"""Mask file types: lossless, so a mask's zeros stay zeros."""
MASK_MODES = ("1", "L")
"""PIL modes of a mask file: one channel, binary or 8-bit (any non-zero value keeps the pixel)."""
RGB_METADATA_DIRS = ("metadata", "metadata_rgb")
"""Folder of RGB metadata and its alias."""
DEPTH_DIR_PREFIXES = ("depth_", "depthvis_")
"""Folder prefixes of a depth track (`depthvis_` is upstream Async-NeRF's name for 8-bit maps)."""
LIDAR_DIR_PREFIX = "lidar_"
"""Folder prefix of a LiDAR track (`lidar_TRACK/STEM.npy`, (N, 4) points x, y, z, t)."""
LIDAR_EXTENSIONS = (".npy",)
"""LiDAR scan file types."""
RGB_POSE_GT_TRACK = "rgb"
"""`pose_gt_rgb/` holds true RGB poses, so no depth track may be called `rgb`."""


class LayoutError(ValueError):
    """Something in the dataset does not follow the layout; `path` is the offending file or folder."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):
        # ValueError pickles with its args; ours takes two (multiprocessing needs this).
        return (LayoutError, (self.path, self.problem))


class LayoutWarning(UserWarning):
    """A layout that works but deserves the user's attention (e.g. extrapolated depth times)."""


@dataclass
class Coordinates:
    """Contents of `coordinates.pt`."""

    origin_drb: np.ndarray
    """Scene origin in metres, DRB frame, float64 (3,)."""
    pose_scale_factor: float
    """Metres per scene unit."""


@dataclass
class RgbFrame:
    """One RGB frame: image, metadata and optional true pose."""

    stem: str
    image_path: Path
    metadata_path: Path
    width: int
    """Width W from the metadata; the image is used at this size."""
    height: int
    """Height H from the metadata."""
    intrinsics: np.ndarray
    """fx, fy, cx, cy for W x H, float64 (4,)."""
    c2w: np.ndarray
    """Camera-to-world, normalised DRB world, OpenGL camera axes, float64 (3, 4)."""
    timestamp: Optional[float]
    """Capture time in seconds, or None if neither the metadata nor the stem gives one."""
    pose_gt: Optional[np.ndarray] = None
    """True pose from `pose_gt_rgb/`, same convention as `c2w`, float64 (3, 4)."""
    pose_gt_path: Optional[Path] = None
    file_size: Tuple[int, int] = (0, 0)
    """(width, height) of the image file on disk; differs from (W, H) when it must be resized."""
    file_mode: str = "RGB"
    """PIL mode of the image file (RGB, RGBA, L, P, ...)."""
    mask_path: Optional[Path] = None
    """`masks/STEM.png`: pixels where it is 0 are never trained on nor evaluated; None: every pixel counts."""


@dataclass
class DepthFrame:
    """One frame of a depth track."""

    track: str
    stem: str
    depth_path: Path
    metadata_path: Path
    width: int
    height: int
    intrinsics: np.ndarray
    """fx, fy, cx, cy for W x H, float64 (4,)."""
    timestamp: float
    """Capture time in seconds (the depth sensor's clock, same time base as the RGB frames)."""
    c2w_prior: Optional[np.ndarray]
    """Prior pose from the metadata (may be wrong), normalised DRB, float64 (3, 4)."""
    depth_scale: float
    """Metres per stored unit."""
    depth_is_ray: bool
    """True: values are distances along the ray; False: planar z-depth."""
    pose_gt: Optional[np.ndarray] = None
    """True pose from `pose_gt_TRACK/`, for evaluation only, float64 (3, 4)."""
    pose_gt_path: Optional[Path] = None


@dataclass
class LidarScan:
    """One scan of a LiDAR track: points with their own times (docs/DATA_LAYOUT.md, LiDAR tracks)."""

    track: str
    stem: str
    points_path: Path
    metadata_path: Path
    timestamp: float
    """The scan's stamp, seconds, on the LiDAR's clock; each point's time is this plus its ``t``."""
    num_rows: int
    """Rows in the file (returns and beams without a return)."""
    lidar_to_camera: np.ndarray
    """(4, 4) float64: LiDAR frame -> RGB camera frame (OpenGL axes), metres."""
    min_range: float = 0.0
    """Returns closer than this (metres) are ignored."""
    max_range: float = float("inf")
    """Returns farther than this (metres) are ignored."""
    pose_gt: Optional[np.ndarray] = None
    """True camera pose at ``timestamp`` from `pose_gt_lidar_TRACK/`, normalised DRB, float64 (3, 4)."""
    pose_gt_path: Optional[Path] = None


@dataclass
class SplitLayout:
    """The frames of one split (train/ or val/)."""

    name: str
    rgb: List[RgbFrame] = field(default_factory=list)
    depth: Dict[str, List[DepthFrame]] = field(default_factory=dict)
    """Depth frames per track name, sorted by timestamp."""
    lidar: Dict[str, List[LidarScan]] = field(default_factory=dict)
    """LiDAR scans per track name, sorted by timestamp."""

    @property
    def rgb_timestamps(self) -> Optional[np.ndarray]:
        """float64 (N,) times of the RGB frames in list order, or None unless every frame has one."""
        if not self.rgb or any(frame.timestamp is None for frame in self.rgb):
            return None
        return np.array([frame.timestamp for frame in self.rgb], dtype=np.float64)


@dataclass
class DatasetLayout:
    """A whole dataset: coordinates and the train/val splits (a missing val/ is an empty split)."""

    root: Path
    coordinates: Coordinates
    splits: Dict[str, SplitLayout]

