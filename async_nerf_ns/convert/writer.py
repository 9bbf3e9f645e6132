"""Writing checked streams into the layout, then validating the result and moving it into place.

Every source (a frame folder, a ROS bag) ends as one `OutStream` of RGB frames with their poses
(DRB world, OpenGL camera, metres) and one per depth track (and a bag one `OutLidarTrack` per LiDAR
track), each frame able to write its own file (`OutFrame.write`: a copy of a user's file, a re-encode,
or a move of a file the converter staged).
`write_dataset` writes coordinates.pt, the split folders, the metadata and true poses;
`publish` writes conversion.json, validates with `read_layout`, and moves the folder to OUT.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float

from async_nerf_ns.convert.errors import RawDataError
from async_nerf_ns.convert.output_folder import move_into_place, write_manifest
from async_nerf_ns.convert.poses import normalise_c2w, scene_normalisation
from async_nerf_ns.layout import LayoutError, read_layout
from async_nerf_ns.trajectory.timed_poses import nearest_in_time

TOOL_NAME = "async-nerf-convert"
RGB_STREAM = "rgb"


@dataclass
class ConversionSummary:
    """What a conversion wrote."""

    out: Path
    origin_drb: Float[np.ndarray, " 3"]
    """Centre of the RGB camera positions (midpoint of their bounding box), DRB metres."""
    pose_scale_factor: float
    """Largest distance of an RGB camera from origin_drb, metres."""
    counts: Dict[str, Dict[str, int]]
    """split -> stream ('rgb', a track, or 'masks' where RGB frames have them) -> number of frames."""
    pose_gt_counts: Dict[str, int]
    """track -> number of depth frames with a true pose."""
    notes: List[str] = field(default_factory=list)
    """Lines for the user: where poses came from, how many were interpolated, clock offsets applied."""


@dataclass
class OutFrame:
    """One frame to write."""

    stem: str
    time: float
    """The layout's timestamp, seconds on the RGB clock."""
    write: Callable[[Path], Path]
    """Writes the frame's file at the given path without suffix (it adds its own); returns the file."""
    pose_gt_drb: Optional[np.ndarray] = None
    """True pose (depth frames, evaluation only), DRB metres (3, 4)."""
    write_mask: Optional[Callable[[Path], Path]] = None
    """RGB frames with a mask: writes masks/STEM.png as `write` writes the frame."""


@dataclass
class OutStream:
    """One stream to write: the RGB camera or a depth track, frames in time order."""

    name: str
    size: Tuple[int, int]
    """(W, H) of every frame."""
    intrinsics: np.ndarray
    """fx, fy, cx, cy (4,)."""
    frames: List[OutFrame]
    depth_scale: Optional[float] = None
    """Metres per stored unit, written into depth metadata when set."""

    @property
    def times(self) -> np.ndarray:
        return np.array([frame.time for frame in self.frames], dtype=np.float64)


@dataclass
class OutLidarTrack:
    """One LiDAR track to write: scans in time order (their `time`: the scan's stamp) and its extrinsic."""

    name: str
    frames: List[OutFrame]
    lidar_to_camera: np.ndarray
    """4x4 rigid transform LiDAR frame -> RGB camera frame (OpenGL camera axes), metres."""


def split_of(index: int, val_every: int) -> str:
    """'val' for frames val_every//2, val_every//2 + val_every, ... of a stream, else 'train'."""
    return "val" if index % val_every == val_every // 2 else "train"


def write_dataset(
    folder: Path,
    rgb: OutStream,
    rgb_poses_drb: np.ndarray,
    depth: Mapping[str, OutStream],
    val_every: int,
    show_progress: bool,
    poses_where: Path,
    lidar: Optional[Mapping[str, OutLidarTrack]] = None,
) -> ConversionSummary:
    """Writes the layout into `folder`; `rgb_poses_drb` (N, 3, 4) are the RGB frames' poses in metres,
    `poses_where` what an error about them names. LiDAR scans are split like depth frames; each split
    with scans of a track gets the track's lidar_to_camera_TRACK.txt."""
    lidar = lidar or {}
    origin, scale = scene_normalisation(rgb_poses_drb[:, :, 3])
    if not scale > 0:
        raise RawDataError(poses_where, "all RGB cameras are at one position")
    torch.save({"origin_drb": torch.tensor(origin, dtype=torch.float64), "pose_scale_factor": scale},
               folder / "coordinates.pt")
    counts: Dict[str, Dict[str, int]] = {"train": {}, "val": {}}

    def target(split: str, sub: str, stem: str) -> Path:
        (folder / split / sub).mkdir(parents=True, exist_ok=True)
        counts[split][sub] = counts[split].get(sub, 0) + 1
        return folder / split / sub / stem

    streams = [(None, rgb), *depth.items()]
    steps = [(track, index) for track, stream in streams for index in range(len(stream.frames))]
    if show_progress:
        from rich.progress import track as progress

        steps = progress(steps, description="Writing frames", transient=True)
    rgb_c2w = [normalise_c2w(pose, origin, scale) for pose in rgb_poses_drb]
    rgb_times = rgb.times
    for track, index in steps:
        stream = rgb if track is None else depth[track]
        frame = stream.frames[index]
        split = split_of(index, val_every)
        meta: Dict[str, Any] = {
            "W": stream.size[0],
            "H": stream.size[1],
            "intrinsics": torch.tensor(stream.intrinsics, dtype=torch.float64),
            "timestamp": float(frame.time),
        }
        if track is None:
            frame.write(target(split, "rgbs", frame.stem))
            if frame.write_mask is not None:
                frame.write_mask(target(split, "masks", frame.stem))
            meta["c2w"] = torch.tensor(rgb_c2w[index], dtype=torch.float64)
            torch.save(meta, target(split, "metadata", frame.stem + ".pt"))
            continue
        frame.write(target(split, f"depth_{track}", frame.stem))
        prior = int(nearest_in_time(np.array([frame.time]), rgb_times)[0])
        meta["c2w"] = torch.tensor(rgb_c2w[prior], dtype=torch.float64)
        if stream.depth_scale is not None:
            meta["depth_scale"] = stream.depth_scale
        torch.save(meta, target(split, f"metadata_depth_{track}", frame.stem + ".pt"))
        if frame.pose_gt_drb is not None:
            pose = normalise_c2w(frame.pose_gt_drb, origin, scale)
            np.savetxt(target(split, f"pose_gt_{track}", frame.stem + ".txt"), pose, fmt="%.17g")

    for track, scans in lidar.items():
        for index, frame in enumerate(scans.frames):
            split = split_of(index, val_every)
            frame.write(target(split, f"lidar_{track}", frame.stem))
            torch.save({"timestamp": float(frame.time)}, target(split, f"metadata_lidar_{track}", frame.stem + ".pt"))
        for split in counts:
            if counts[split].get(f"lidar_{track}"):
                np.savetxt(folder / split / f"lidar_to_camera_{track}.txt", scans.lidar_to_camera, fmt="%.17g")

    names = {"rgbs": RGB_STREAM, "masks": "masks", **{f"depth_{t}": t for t in depth}, **{f"lidar_{t}": t for t in lidar}}
    return ConversionSummary(
        out=folder,
        origin_drb=origin,
        pose_scale_factor=scale,
        counts={split: {names[sub]: n for sub, n in c.items() if sub in names} for split, c in counts.items()},
        pose_gt_counts={t: sum(f.pose_gt_drb is not None for f in depth[t].frames) for t in depth},
    )


def summary_record(summary: ConversionSummary) -> Dict[str, Any]:
    """What conversion.json says about the result of every source."""
    return {
        "origin_drb": summary.origin_drb.tolist(),
        "pose_scale_factor": summary.pose_scale_factor,
        "counts": summary.counts,
        "depth_prior": "c2w of each depth frame = pose of the RGB frame nearest in time",
        "notes": summary.notes,
    }


def publish(staged: Path, out: Path, overwrite: bool, record: Mapping[str, Any]) -> None:
    """conversion.json into `staged`, `read_layout` on it, then `staged` moved to `out`; the layout's
    warnings are re-issued once the dataset is in place, where the folders they name exist."""
    write_manifest(staged, TOOL_NAME, record)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            read_layout(staged)
        except LayoutError as error:  # a converter bug: everything it reads was checked before
            where = out / error.path.relative_to(staged) if error.path.is_relative_to(staged) else error.path
            raise RawDataError(where, f"the converted dataset fails validation: {error.problem}") from error
    move_into_place(staged, out, overwrite, TOOL_NAME)
    for warning in caught:
        message = str(warning.message).replace(str(staged), str(out))
        warnings.warn_explicit(type(warning.message)(message), warning.category, warning.filename, warning.lineno)
