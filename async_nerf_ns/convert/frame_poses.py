"""RGB poses at the frames' times from a pose source sampled at other times.

A pose source (a bag's pose topic, a TF edge, a TUM file, a COLMAP model, a transforms.json) is a
`TimedPoses`: camera- (or body-) to-world 4x4 matrices at increasing times. `sample_at` evaluates it at
the frames' times with the project's interpolators (`trajectory.baselines`: linear + SLERP or cubic
spline), and says per frame how far apart the pose samples around it were; `select_frames` leaves
out frames outside the samples' span or whose samples are too far apart, and `PoseCoverage` says
what happened, in the words the converter prints.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy.spatial.transform import Rotation

from async_nerf_ns.layout import LayoutWarning
from async_nerf_ns.trajectory.baselines import CubicSplineInterp, LinearSlerp

AT_SAMPLE_S = 1e-5
"""A frame within this many seconds of a pose sample is "at a sample" (TUM files often keep 6
decimals; bag stamps are nanoseconds). Only the report uses it: interpolation at a sample returns it."""


class ConvertWarning(LayoutWarning):
    """The conversion went through but left something out or guessed (printed by async-nerf-convert)."""


@dataclass
class TimedPoses:
    """Poses of one source at increasing times."""

    source: str
    """What the poses come from (a file, a topic, a TF edge), for messages."""
    times: np.ndarray
    """Seconds, float64 (N,), strictly increasing."""
    c2w: np.ndarray
    """float64 (N, 4, 4), the source's own axes."""

    @classmethod
    def checked(cls, source: str, times, c2w, what: str = "pose") -> "TimedPoses":
        """Sorted by time; later duplicates of a time dropped and out-of-order samples reported (warnings)."""
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
        assert times.shape[0] == c2w.shape[0]
        backwards = int(np.count_nonzero(np.diff(times) < 0))
        if backwards:
            warnings.warn(ConvertWarning(
                f"{source}: {backwards} of {len(times)} {what}s come earlier than the one before them; sorted by time"
            ), stacklevel=2)
        order = np.argsort(times, kind="stable")
        times, c2w = times[order], c2w[order]
        repeated = np.concatenate([[False], np.diff(times) == 0])
        if repeated.any():
            warnings.warn(ConvertWarning(
                f"{source}: {int(repeated.sum())} {what}s repeat the time of an earlier one; kept the first"
            ), stacklevel=2)
            times, c2w = times[~repeated], c2w[~repeated]
        return cls(source=source, times=times, c2w=c2w)


def matrix_from_tq(translation: Sequence[float], quaternion_xyzw: Sequence[float]) -> np.ndarray:
    """4x4 from a translation and a unit quaternion (x, y, z, w: scipy's, ROS's and TUM's order)."""
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_quat(np.asarray(quaternion_xyzw, dtype=np.float64)).as_matrix()
    pose[:3, 3] = translation
    return pose


def sample_at(poses: TimedPoses, query: np.ndarray, method: str) -> Tuple[np.ndarray, np.ndarray]:
    """(poses (M, 4, 4), gap (M,)) at the query times: gap is 0 at a sample, the distance between the
    two samples around the frame when it is interpolated, and inf outside the samples' span (where
    the pose returned is the nearest end's and must not be used)."""
    query = np.asarray(query, dtype=np.float64).reshape(-1)
    times = poses.times
    out = np.repeat(np.eye(4)[None], len(query), axis=0)
    gap = np.full(len(query), np.inf)
    if len(times) == 0:
        return out, gap
    nearest = np.clip(np.searchsorted(times, query), 0, len(times) - 1)
    before = np.clip(nearest - 1, 0, len(times) - 1)
    closer = np.where(np.abs(times[before] - query) < np.abs(times[nearest] - query), before, nearest)
    at_sample = np.abs(times[closer] - query) <= AT_SAMPLE_S
    inside = (query >= times[0]) & (query <= times[-1])
    right = np.clip(np.searchsorted(times, query, side="right"), 1, max(len(times) - 1, 1))
    if len(times) >= 2:
        gap = np.where(inside, times[right] - times[right - 1], np.inf)
    gap[at_sample] = 0.0
    if len(times) >= 2 and inside.any():
        interpolator = (LinearSlerp() if method == "linear" else CubicSplineInterp()).fit(times, poses.c2w[:, :3])
        out[inside, :3] = interpolator(np.clip(query[inside], times[0], times[-1]))
    out[at_sample] = poses.c2w[closer[at_sample]]  # exactly the sample (within AT_SAMPLE_S of it)
    return out, gap


@dataclass
class PoseCoverage:
    """How the frames of a stream got their poses from a pose source."""

    source: str
    frames: int
    at_sample: int
    interpolated: int
    max_gap: float
    """Largest distance between the two samples around an interpolated frame, seconds (0 if none)."""
    before: int
    """Frames earlier than the first sample (left out)."""
    after: int
    """Frames later than the last sample (left out)."""
    too_far: int
    """Frames inside the span whose samples are more than max_pose_gap apart (left out)."""

    @property
    def left_out(self) -> int:
        return self.before + self.after + self.too_far

    def describe(self) -> str:
        """One line for the summary: where the poses came from and how many were interpolated."""
        line = (f"RGB poses from {self.source}: {self.at_sample} of {self.frames} frames at a pose sample, "
                f"{self.interpolated} interpolated")
        if self.interpolated:
            line += f" (max {self.max_gap * 1e3:.1f} ms between the samples around a frame)"
        if self.left_out:
            line += f"; {self.left_out} left out without a pose"
        return line


def select_frames(
    gap: np.ndarray, frame_times: np.ndarray, span: Tuple[float, float], source: str, max_gap: float, where: str
) -> Tuple[np.ndarray, PoseCoverage]:
    """(mask of frames that keep a pose, coverage); warns about the frames left out, naming `where`.
    `span`: (first, last) time the source has poses for."""
    inside = np.isfinite(gap)
    keep = inside & (gap <= max_gap)
    coverage = PoseCoverage(
        source=source,
        frames=len(gap),
        at_sample=int(np.count_nonzero(keep & (gap == 0))),
        interpolated=int(np.count_nonzero(keep & (gap > 0))),
        max_gap=float(gap[keep].max()) if keep.any() else 0.0,
        before=int(np.count_nonzero(~inside & (frame_times < span[0]))),
        after=int(np.count_nonzero(~inside & (frame_times >= span[0]))),
        too_far=int(np.count_nonzero(inside & ~keep)),
    )
    problems: List[str] = []
    if coverage.before:
        problems.append(f"{coverage.before} before its first pose")
    if coverage.after:
        problems.append(f"{coverage.after} after its last pose")
    if coverage.too_far:
        problems.append(f"{coverage.too_far} between poses more than --max-pose-gap {max_gap:g} s apart")
    if problems and keep.any():
        warnings.warn(ConvertWarning(
            f"{source} covers {int(keep.sum())} of the {len(gap)} frames of {where}; left out "
            f"{coverage.left_out} frames without a pose: {', '.join(problems)}"
        ), stacklevel=2)
    return keep, coverage


def camera_poses(
    body_poses: np.ndarray, camera_to_body: Optional[Sequence[float]]
) -> np.ndarray:
    """pose @ camera_to_body for each (M, 4, 4) pose; the poses unchanged without an extrinsic."""
    if camera_to_body is None:
        return body_poses
    extrinsic = matrix_from_tq(camera_to_body[:3], camera_to_body[3:])
    return body_poses @ extrinsic


def poses_for_frames(
    poses: TimedPoses, frame_times: np.ndarray, method: str, max_gap: float,
    camera_to_body: Optional[Sequence[float]], where: str,
) -> Tuple[np.ndarray, np.ndarray, PoseCoverage]:
    """(camera poses (M, 4, 4) in the source's axes, mask of frames that have one, coverage)."""
    sampled, gap = sample_at(poses, frame_times, method)
    span = (poses.times[0], poses.times[-1]) if len(poses.times) else (np.inf, -np.inf)
    keep, coverage = select_frames(gap, frame_times, span, poses.source, max_gap, where)
    return camera_poses(sampled, camera_to_body), keep, coverage
