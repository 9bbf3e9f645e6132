"""Pose text files: one camera-to-world matrix per file, and upstream Async-NeRF's pose folders.

Upstream Async-NeRF (github.com/wuzirui/async-nerf) keeps a raw sequence as
`DATA/rgb/{timestamp}.jpg` with a pose `DATA/rgb/{timestamp}.txt` next to each image: 16
whitespace-separated numbers read with `np.loadtxt(...).reshape(4, 4)` (a 4x4 camera-to-world,
in the simulator's world frame, metres), the file stem being the capture time in seconds.
Depth tracks sit in `DATA/depth_{TRACK}/` with `{timestamp}.pfm` maps and, where known,
`{timestamp}.txt` poses of the same form (its conversion script `scripts/async_to_mega_nerf.py`
reads those as the depth frames' true poses). Its time-pose trainer (`time2pose/`) reads only
`DATA/rgb/*.txt` and holds out a fixed fraction of them for validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np

from async_nerf_ns.layout.types import LayoutError
from async_nerf_ns.layout.values import read_pose_txt


class PoseFileError(LayoutError):
    """A pose file or folder that cannot be read; the message starts with its path."""

    def __reduce__(self):
        return (PoseFileError, (self.path, self.problem))


def write_pose_txt(path: Path, pose: np.ndarray, homogeneous: bool = False) -> None:
    """Writes a (3, 4) pose as text, 3 rows (or 4 with the [0 0 0 1] row if `homogeneous`)."""
    matrix = np.asarray(pose, dtype=np.float64)[:3, :4]
    if homogeneous:
        matrix = np.concatenate([matrix, [[0.0, 0.0, 0.0, 1.0]]], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, matrix, fmt="%.10g")


@dataclass
class TimedPoses:
    """Poses of one stream, sorted by time."""

    stems: List[str]
    timestamps: np.ndarray
    """float64 (N,) seconds."""
    c2w: np.ndarray
    """float64 (N, 3, 4)."""


@dataclass
class UpstreamSequence:
    """An upstream Async-NeRF raw sequence: RGB poses and, optionally, depth tracks' true poses."""

    root: Path
    rgb: TimedPoses
    depth: Dict[str, TimedPoses] = field(default_factory=dict)


def read_timed_pose_folder(folder: Path) -> TimedPoses:
    """All `{timestamp}.txt` pose files of a folder, sorted by time."""
    files = sorted(folder.glob("*.txt"))
    stems, times, poses = [], [], []
    for path in files:
        try:
            times.append(float(path.stem))
        except ValueError:
            raise PoseFileError(path, "the file name must be the capture time in seconds, e.g. 1667117650.123.txt")
        stems.append(path.stem)
        poses.append(read_pose_txt(path))
    if not files:
        raise PoseFileError(folder, "no {timestamp}.txt pose files")
    order = np.argsort(times, kind="stable")
    sorted_times = np.asarray(times, dtype=np.float64)[order]
    repeated = np.flatnonzero(np.diff(sorted_times) == 0)
    if repeated.size:
        raise PoseFileError(folder, f"two pose files have the same time {sorted_times[repeated[0]]!r}")
    return TimedPoses([stems[i] for i in order], sorted_times, np.stack(poses)[order])


def is_upstream_sequence(root: Path) -> bool:
    """True if `root` is an upstream raw sequence (`rgb/*.txt`) or a folder of `*.txt` poses."""
    return any((root / "rgb").glob("*.txt")) or any(root.glob("*.txt"))


def read_upstream_sequence(root: Path) -> UpstreamSequence:
    """Reads `root/rgb/*.txt` (+ `root/depth_TRACK/*.txt`), or a bare folder of `{timestamp}.txt`."""
    root = Path(root)
    if (root / "rgb").is_dir():
        depth = {
            folder.name[len("depth_") :]: read_timed_pose_folder(folder)
            for folder in sorted(root.glob("depth_*"))
            if folder.is_dir() and any(folder.glob("*.txt"))
        }
        return UpstreamSequence(root, read_timed_pose_folder(root / "rgb"), depth)
    return UpstreamSequence(root, read_timed_pose_folder(root))
