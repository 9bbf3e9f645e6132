"""Writes tiny datasets in the layout of DATA_LAYOUT.md, with numbers tests can check exactly.

The scene: RGB cameras fly along DRB +y (right) at DRB x = -0.5 (0.5 units up), looking
straight down, one frame every 0.5 s from t = 10 s. Depth frames fall halfway between RGB
frames (t = 10.25, 10.75, ...); their prior pose is the preceding RGB pose, their true pose
the interpolated one. Every depth map is a constant `depth_m` metres with pixel (0, 0) set to
"no measurement" (0; not in JPEG, which is lossy) and, for float formats, pixel (0, 1) set to NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from PIL import Image

LOOK_DOWN_DRB = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
"""Camera-to-world rotation of a camera looking straight down (DRB +x) with image right = DRB +y:
columns are the camera's x (right) = DRB y, y (up) = -DRB z, z (back) = -DRB x."""

DEPTH_FORMATS = ("npy", "pt", "png16", "tif16", "png8", "jpg8", "tif_float")
"""Depth file types the factory can write."""


@dataclass
class TinyLayout:
    """What was written, for assertions."""

    root: Path
    rgb_times: Dict[str, np.ndarray]
    """split -> float64 (N,) RGB timestamps in seconds."""
    rgb_c2w: Dict[str, np.ndarray]
    """split -> float64 (N, 3, 4) normalised DRB poses (also written as pose_gt_rgb)."""
    depth_times: Dict[str, np.ndarray]
    """split -> float64 (M,) depth timestamps."""
    depth_gt_c2w: Dict[str, np.ndarray]
    """split -> float64 (M, 3, 4) true depth poses (pose_gt_TRACK)."""
    track: str
    depth_m: float


def rgb_pose(t: float) -> np.ndarray:
    """Normalised DRB camera-to-world (3, 4) of the tiny scene's camera at time t (seconds)."""
    pose = np.zeros((3, 4))
    pose[:, :3] = LOOK_DOWN_DRB
    pose[:, 3] = [-0.5, -0.6 + 0.4 * (t - 10.0), 0.1]
    return pose


def stem_for(t: float) -> str:
    """File stem that encodes a timestamp, as upstream Async-NeRF names files."""
    return f"{t:.3f}"


def write_metadata(path: Path, **fields) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fields, path)


def write_depth_file(path_without_suffix: Path, depth_m: np.ndarray, depth_format: str) -> Path:
    """Write `depth_m` (metres, float) in `depth_format`; returns the path written."""
    folder = path_without_suffix.parent
    folder.mkdir(parents=True, exist_ok=True)
    name = path_without_suffix.name
    if depth_format == "npy":
        path = folder / f"{name}.npy"
        np.save(path, depth_m.astype(np.float32))
    elif depth_format == "pt":
        path = folder / f"{name}.pt"
        torch.save(torch.from_numpy(depth_m.astype(np.float32)), path)
    elif depth_format in ("png16", "tif16"):
        path = folder / f"{name}.{depth_format[:3]}"
        millimetres = np.nan_to_num(depth_m * 1000.0, nan=0.0)
        Image.fromarray(np.round(millimetres).astype(np.uint16)).save(path)
    elif depth_format in ("png8", "jpg8"):
        path = folder / f"{name}.{depth_format[:3]}"
        Image.fromarray(np.round(np.nan_to_num(depth_m, nan=0.0)).astype(np.uint8)).save(path, quality=100)
    elif depth_format == "tif_float":
        path = folder / f"{name}.tif"
        Image.fromarray(depth_m.astype(np.float32)).save(path)
    else:
        raise ValueError(f"unknown depth format {depth_format}; expected one of {DEPTH_FORMATS}")
    return path


def write_tiny_layout(
    root: Path,
    num_rgb: int = 6,
    num_depth: int = 3,
    num_val_rgb: int = 2,
    num_val_depth: int = 1,
    width: int = 8,
    height: int = 6,
    depth_width: int = 4,
    depth_height: int = 3,
    depth_format: str = "npy",
    depth_m: float = 2.0,
    track: str = "lidar",
    timestamps: str = "metadata",
    rgb_metadata_dir: str = "metadata",
    depth_dir_prefix: str = "depth",
    with_pose_gt: bool = True,
    origin_drb: Sequence[float] = (100.0, -20.0, 5.0),
    pose_scale_factor: float = 50.0,
    rgb_extension: str = "png",
) -> TinyLayout:
    """Write a tiny dataset under `root` (created if needed).

    timestamps: "metadata" (a 'timestamp' key, stems f"frame_{i:04d}"), "stem" (stems are the
    times, no key) or "none" (neither; only valid with num_depth = num_val_depth = 0).
    Train times start at 10 s, val times at 10.1 s; both step by 0.5 s.
    """
    assert timestamps in ("metadata", "stem", "none")
    assert depth_format in DEPTH_FORMATS
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "origin_drb": torch.tensor(origin_drb, dtype=torch.float64),
            "pose_scale_factor": float(pose_scale_factor),
        },
        root / "coordinates.pt",
    )
    intrinsics = torch.tensor([10.0, 11.0, width / 2, height / 2], dtype=torch.float64)
    depth_intrinsics = torch.tensor([5.0, 5.5, depth_width / 2, depth_height / 2], dtype=torch.float64)
    layout = TinyLayout(root, {}, {}, {}, {}, track, depth_m)
    for split, n_rgb, n_depth, t0 in (("train", num_rgb, num_depth, 10.0), ("val", num_val_rgb, num_val_depth, 10.1)):
        if n_rgb == 0 and n_depth == 0:
            continue
        split_dir = root / split
        (split_dir / "rgbs").mkdir(parents=True, exist_ok=True)
        rgb_times = t0 + 0.5 * np.arange(n_rgb)
        for i, t in enumerate(rgb_times):
            stem = stem_for(t) if timestamps == "stem" else f"frame_{i:04d}"
            pixels = np.zeros((height, width, 3), dtype=np.uint8)
            pixels[..., 0] = 20 * i  # a per-frame colour so tests can tell frames apart
            pixels[..., 1] = np.arange(width, dtype=np.uint8)[None, :] * 10
            Image.fromarray(pixels).save(split_dir / "rgbs" / f"{stem}.{rgb_extension}")
            fields = dict(W=width, H=height, intrinsics=intrinsics, c2w=torch.from_numpy(rgb_pose(t)))
            if timestamps == "metadata":
                fields["timestamp"] = float(t)
            write_metadata(split_dir / rgb_metadata_dir / f"{stem}.pt", **fields)
            if with_pose_gt:
                (split_dir / "pose_gt_rgb").mkdir(exist_ok=True)
                np.savetxt(split_dir / "pose_gt_rgb" / f"{stem}.txt", rgb_pose(t))

        depth_times = t0 + 0.25 + 0.5 * np.arange(n_depth)
        depth = np.full((depth_height, depth_width), depth_m, dtype=np.float64)
        if depth_format != "jpg8":  # JPEG is lossy: a lone 0 would blur into its neighbours
            depth[0, 0] = 0.0
        if depth_format in ("npy", "pt", "tif_float"):
            depth[0, 1] = np.nan
        for j, t in enumerate(depth_times):
            stem = stem_for(t) if timestamps == "stem" else f"depth_{j:04d}"
            write_depth_file(split_dir / f"{depth_dir_prefix}_{track}" / stem, depth, depth_format)
            prior = rgb_pose(t - 0.25)
            fields = dict(W=depth_width, H=depth_height, intrinsics=depth_intrinsics, c2w=torch.from_numpy(prior))
            if timestamps == "metadata":
                fields["timestamp"] = float(t)
            write_metadata(split_dir / f"metadata_depth_{track}" / f"{stem}.pt", **fields)
            if with_pose_gt:
                (split_dir / f"pose_gt_{track}").mkdir(exist_ok=True)
                np.savetxt(split_dir / f"pose_gt_{track}" / f"{stem}.txt", rgb_pose(t))
        layout.rgb_times[split] = rgb_times
        layout.rgb_c2w[split] = np.stack([rgb_pose(t) for t in rgb_times]) if n_rgb else np.zeros((0, 3, 4))
        layout.depth_times[split] = depth_times
        layout.depth_gt_c2w[split] = np.stack([rgb_pose(t) for t in depth_times]) if n_depth else np.zeros((0, 3, 4))
    return layout


def metadata_path(root: Path, split: str = "train", index: int = 0, folder: str = "metadata") -> Path:
    """The index-th metadata file (sorted by name) of `folder` in `split`."""
    return sorted((Path(root) / split / folder).glob("*.pt"))[index]


def rewrite_metadata(path: Path, drop: Sequence[str] = (), **changes) -> None:
    """Load a metadata .pt, drop keys, set others, save it back."""
    fields = torch.load(path, weights_only=True)
    for key in drop:
        fields.pop(key)
    fields.update(changes)
    torch.save(fields, path)


def first_file(folder: Path, pattern: str = "*") -> Path:
    return sorted(p for p in Path(folder).glob(pattern) if p.is_file())[0]


LIDAR_TO_CAMERA = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.05], [0.0, -1.0, 0.0, -0.1], [0.0, 0.0, 0.0, 1.0]])
"""The tiny layout's LiDAR mount: 5 cm above, 10 cm in front of the camera, the LiDAR's z axis along the camera's y."""


def write_lidar_track(
    root: Path,
    split: str = "train",
    track: str = "top",
    times: Sequence[float] = (10.2, 10.7, 11.2),
    points_per_scan: int = 20,
    sweep_s: float = 0.1,
    extrinsic: str = "file",
    with_pose_gt: bool = True,
) -> List[Path]:
    """A LiDAR track in a tiny layout: per scan, points on a 2 m sphere around the sensor with times
    spread over the sweep (t in [-sweep_s, 0]); the last row is a beam without a return (zeros).
    extrinsic: "file" (lidar_to_camera_TRACK.txt) or "metadata" (in each scan's metadata)."""
    split_dir = Path(root) / split
    rng = np.random.default_rng(0)
    paths = []
    if extrinsic == "file":
        np.savetxt(split_dir / f"lidar_to_camera_{track}.txt", LIDAR_TO_CAMERA)
    for j, t in enumerate(times):
        stem = f"scan_{j:04d}"
        directions = rng.normal(size=(points_per_scan, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        points = np.zeros((points_per_scan + 1, 4), dtype=np.float32)
        points[:-1, :3] = 2.0 * directions
        points[:-1, 3] = np.linspace(-sweep_s, 0.0, points_per_scan)
        path = split_dir / f"lidar_{track}" / f"{stem}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, points)
        fields = dict(timestamp=float(t))
        if extrinsic == "metadata":
            fields["lidar_to_camera"] = torch.from_numpy(LIDAR_TO_CAMERA)
        write_metadata(split_dir / f"metadata_lidar_{track}" / f"{stem}.pt", **fields)
        if with_pose_gt:
            (split_dir / f"pose_gt_lidar_{track}").mkdir(exist_ok=True)
            np.savetxt(split_dir / f"pose_gt_lidar_{track}" / f"{stem}.txt", rgb_pose(t))
        paths.append(path)
    return paths
