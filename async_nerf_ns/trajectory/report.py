"""The time-pose function on a dataset: fit it, pose every depth frame and LiDAR scan, measure it and the baselines.

What ``async-nerf-tpf`` does (the command is a thin front end): a dataset in the layout (train RGB
frames fitted; train/val depth frames and LiDAR scans posed at their stamps and measured against
pose_gt; val RGB frames held out) or an upstream Async-NeRF pose folder (every ``hold_out_every``-th
RGB pose held out) becomes a `Problem`; `fit_and_report` fits the TPF, compares it with linear + SLERP,
the cubic spline and the metadata prior, estimates each depth track's and LiDAR track's clock offset
(`track_offsets.py`, `lidar_offset.py`) and writes the poses, ``pose_errors.json``, ``trajectory.png``
and ``time_offset.png``. Parts of the report that need layers above this one (the LiDAR deskew view,
`lidar/deskew.py`) are handed in by the command as ``extras``.

Poses are in the layout's own frame throughout (normalised DRB, as the layout's files): the TPF is
fitted to the train RGB ``c2w`` as read and every written pose is in that frame.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE
from rich.table import Table

from async_nerf_ns.files.atomic import write_json_atomic
from async_nerf_ns.layout import DatasetLayout, DepthFrame, LayoutError, LidarScan, read_layout
from async_nerf_ns.layout.frames import drb_points_to_world
from async_nerf_ns.layout.pose_files import PoseFileError, is_upstream_sequence, read_upstream_sequence, write_pose_txt
from async_nerf_ns.trajectory.baselines import CubicSplineInterp, LinearSlerp
from async_nerf_ns.trajectory.fit import fit_tpf
from async_nerf_ns.trajectory.lidar_offset import lidar_track_time_offsets
from async_nerf_ns.trajectory.metrics import pose_errors, summary_only
from async_nerf_ns.trajectory.plot import DepthStream, plot_offset_search, plot_trajectory
from async_nerf_ns.trajectory.time_offset import TimeOffsetConfig, TimeOffsetEstimate
from async_nerf_ns.trajectory.timed_poses import split_every
from async_nerf_ns.trajectory.tpf import FittedTPF, TimePoseFunctionConfig
from async_nerf_ns.trajectory.track_offsets import track_time_offsets

METHODS = ("tpf", "tpf_without_offset", "linear_slerp", "cubic_spline", "prior")
"""Keys of the per-method errors in pose_errors.json."""


@dataclass
class PoseSet:
    """Frames to pose: where they come from, their times and (optional) true and prior poses."""

    name: str
    stems: List[str]
    timestamps: np.ndarray
    gt: List[Optional[np.ndarray]]
    prior: List[Optional[np.ndarray]]
    write_dir: Optional[str] = None
    """Folder under OUT for the predicted poses (None: not written)."""
    homogeneous: bool = False
    """Write 4x4 instead of 3x4."""
    track: Optional[str] = None
    """The depth or LiDAR track of these frames (their clock offset applies), None for RGB frames."""
    frames: Optional[List[DepthFrame]] = None
    """The layout's depth frames (train split: the clock offset is estimated from them)."""
    scans: Optional[List[LidarScan]] = None
    """The layout's LiDAR scans (train split: the clock offset is estimated from them; deskew view)."""


@dataclass
class Problem:
    """What to fit and what to predict, independent of the input format."""

    format: str
    train_timestamps: np.ndarray
    train_c2w: np.ndarray
    metres_per_unit: float
    sets: List[PoseSet]
    to_plot_frame: Callable[[np.ndarray], np.ndarray]
    """Positions (N, 3) in pose units -> metres in a (horizontal, horizontal, up) frame."""
    axis_names: tuple


def method_errors(
    pose_set: PoseSet, predicted: np.ndarray, baselines, metres_per_unit: float, offset_s: float = 0.0,
    without_offset: Optional[np.ndarray] = None,
) -> Dict[str, object]:
    """Per-method error summaries on the frames that have a true pose (and, for 'prior', a prior).
    Every interpolation is evaluated at the stamps plus the track's clock offset; ``without_offset``:
    the TPF's poses at the stamps alone (what the offset is worth)."""
    has_gt = np.array([gt is not None for gt in pose_set.gt], dtype=bool)
    if not has_gt.any():
        return {}
    gt = np.stack([g for g in pose_set.gt if g is not None])
    times = pose_set.timestamps[has_gt] + offset_s
    errors = {"tpf": summary_only(pose_errors(predicted[has_gt], gt, metres_per_unit))}
    if without_offset is not None:
        errors["tpf_without_offset"] = summary_only(pose_errors(without_offset[has_gt], gt, metres_per_unit))
    for name, baseline in baselines.items():
        errors[name] = summary_only(pose_errors(baseline(times), gt, metres_per_unit))
    both = has_gt & np.array([p is not None for p in pose_set.prior], dtype=bool)
    if both.any():
        prior = np.stack([pose_set.prior[i] for i in np.flatnonzero(both)])
        truth = np.stack([pose_set.gt[i] for i in np.flatnonzero(both)])
        errors["prior"] = summary_only(pose_errors(prior, truth, metres_per_unit))
    return errors


def _stream(
    pose_set: PoseSet, predicted: np.ndarray, linear: np.ndarray, to_plot: Callable
) -> Optional[DepthStream]:
    """Plot data of a depth set (positions of frames with a true/prior pose where all have one)."""
    if pose_set.write_dir is None:
        return None
    gt = np.stack(pose_set.gt)[:, :, 3] if all(g is not None for g in pose_set.gt) else None
    prior = np.stack(pose_set.prior)[:, :, 3] if all(p is not None for p in pose_set.prior) else None
    return DepthStream(
        label=pose_set.name,
        timestamps=pose_set.timestamps,
        tpf=to_plot(predicted[:, :, 3]),
        gt=None if gt is None else to_plot(gt),
        prior=None if prior is None else to_plot(prior),
        linear=to_plot(linear[:, :, 3]),
    )


def layout_problem(layout: DatasetLayout) -> Problem:
    """The fitting problem of a dataset in our layout: train RGB (timestamp, pose) pairs, depth and LiDAR sets.

    A LiDAR scan is posed at its stamp (plus its track's clock offset): the camera's pose there is what
    `pose_gt_lidar_TRACK/` gives; its set is ``SPLIT/lidar_TRACK``, written to ``poses_SPLIT_lidar_TRACK/``."""
    train = layout.splits["train"]
    times = train.rgb_timestamps
    if times is None:
        missing = next(frame for frame in train.rgb if frame.timestamp is None)
        raise LayoutError(
            missing.metadata_path,
            "no timestamp (metadata 'timestamp' or a numeric file name): the time-pose function needs "
            "the capture time of every train RGB frame",
        )
    sets: List[PoseSet] = []
    for split_name in ("train", "val"):
        split = layout.splits[split_name]
        for track, frames in sorted(split.depth.items()):
            sets.append(
                PoseSet(
                    name=f"{split_name}/{track}",
                    stems=[frame.stem for frame in frames],
                    timestamps=np.array([frame.timestamp for frame in frames], dtype=np.float64),
                    gt=[frame.pose_gt for frame in frames],
                    prior=[frame.c2w_prior for frame in frames],
                    write_dir=f"poses_{split_name}_{track}",
                    track=track,
                    frames=frames if split_name == "train" else None,
                )
            )
        for track, scans in sorted(split.lidar.items()):
            sets.append(
                PoseSet(
                    name=f"{split_name}/lidar_{track}",
                    stems=[scan.stem for scan in scans],
                    timestamps=np.array([scan.timestamp for scan in scans], dtype=np.float64),
                    gt=[scan.pose_gt for scan in scans],
                    prior=[None] * len(scans),
                    write_dir=f"poses_{split_name}_lidar_{track}",
                    track=track,
                    scans=scans if split_name == "train" else None,
                )
            )
        _check_distinct_outputs(sets, layout.root / split_name)
    val_rgb = [frame for frame in layout.splits["val"].rgb if frame.timestamp is not None]
    if val_rgb:
        sets.append(
            PoseSet(
                name="val/rgb",
                stems=[frame.stem for frame in val_rgb],
                timestamps=np.array([frame.timestamp for frame in val_rgb], dtype=np.float64),
                gt=[frame.pose_gt if frame.pose_gt is not None else frame.c2w for frame in val_rgb],
                prior=[None] * len(val_rgb),
            )
        )
    origin = np.asarray(layout.coordinates.origin_drb, dtype=np.float64)
    scale = float(layout.coordinates.pose_scale_factor)

    def to_plot_frame(positions: np.ndarray) -> np.ndarray:
        # DRB metres -> the z-up world of the nerfstudio dataparser.
        return drb_points_to_world(origin + scale * positions)

    return Problem(
        format="layout",
        train_timestamps=times,
        train_c2w=np.stack([frame.c2w for frame in train.rgb]),
        metres_per_unit=scale,
        sets=sets,
        to_plot_frame=to_plot_frame,
        axis_names=("DRB y = right (m)", "-DRB z = forward (m)", "-DRB x = altitude (m)"),
    )


def _check_distinct_outputs(sets: Sequence[PoseSet], split_dir: Path) -> None:
    """A depth track named ``lidar_X`` and a LiDAR track ``X`` would share a report entry and a pose folder."""
    seen: Dict[str, str] = {}
    for pose_set in sets:
        for key in (pose_set.name, pose_set.write_dir):
            if key in seen and seen[key] != pose_set.name:
                raise LayoutError(
                    split_dir,
                    f"the depth track and the LiDAR track behind '{pose_set.name}' would both be written as '{key}': "
                    "rename one of them",
                )
            seen[key] = pose_set.name


def lidar_train_tracks(problem: Problem) -> Dict[str, List[LidarScan]]:
    """Each LiDAR track's train scans (in time order), tracks in name order; empty for upstream folders."""
    return {s.track: s.scans for s in problem.sets if s.track is not None and s.scans is not None}


def upstream_problem(root: Path, metres_per_unit: float, hold_out_every: int) -> Problem:
    sequence = read_upstream_sequence(root)
    rgb = sequence.rgb
    if len(rgb.stems) < 3:
        raise PoseFileError(root, f"need at least 3 RGB poses to fit and hold one out, found {len(rgb.stems)}")
    train, held_out = split_every(len(rgb.stems), hold_out_every)
    sets = [
        PoseSet(
            name="held_out/rgb",
            stems=[rgb.stems[i] for i in held_out],
            timestamps=rgb.timestamps[held_out],
            gt=list(rgb.c2w[held_out]),
            prior=[None] * len(held_out),
        )
    ]
    for track, poses in sorted(sequence.depth.items()):
        sets.append(
            PoseSet(
                name=f"depth/{track}",
                stems=poses.stems,
                timestamps=poses.timestamps,
                gt=list(poses.c2w),
                prior=[None] * len(poses.stems),
                write_dir=f"poses_{track}",
                homogeneous=True,
            )
        )
    # The simulator's up axis is not recorded: take the axis along which the RGB poses spread least.
    vertical = int(np.argmin(rgb.c2w[train][:, :, 3].std(axis=0)))
    order = [axis for axis in range(3) if axis != vertical] + [vertical]
    return Problem(
        format="upstream",
        train_timestamps=rgb.timestamps[train],
        train_c2w=rgb.c2w[train],
        metres_per_unit=metres_per_unit,
        sets=sets,
        to_plot_frame=lambda positions: metres_per_unit * positions[:, order],
        axis_names=tuple(f"axis {axis} (m)" for axis in order),
    )


def print_table(report: Dict[str, object]) -> None:
    table = Table(title=f"pose errors ({report['format']}; TPF fit {report['fit']['seconds']:.1f} s)")
    for column in ("set", "method", "frames", "transl. mean (m)", "median", "max", "rot. mean (deg)", "median", "max"):
        named = column in ("set", "method")  # never wrapped: "train/lidar_top" stays readable
        table.add_column(column, justify="left" if named else "right", no_wrap=named)
    for name, entry in report["sets"].items():
        for method in METHODS:
            errors = entry["errors"].get(method)
            if errors is None:
                continue
            t, r = errors["translation_m"], errors["rotation_deg"]
            table.add_row(
                name, method, str(errors["count"]),
                *(f"{t[k]:.4g}" for k in ("mean", "median", "max")),
                *(f"{r[k]:.4g}" for k in ("mean", "median", "max")),
            )
    CONSOLE.print(table)


def estimate_offsets(
    problem: Problem, fitted, config: TimeOffsetConfig, given: Mapping[str, float]
) -> Dict[str, TimeOffsetEstimate]:
    """Each depth track's and LiDAR track's clock offset, from its train frames or scans (layout datasets;
    upstream has no depth maps or scans): depth tracks first, then LiDAR tracks, each in name order."""
    tracks = {s.track: s.frames for s in problem.sets if s.track is not None and s.frames is not None}
    estimates = track_time_offsets(tracks, problem.metres_per_unit, fitted.poses, config, given)
    lidar = lidar_train_tracks(problem)
    if lidar:
        estimates.update(lidar_track_time_offsets(lidar, problem.metres_per_unit, fitted.poses, config, given))
    return estimates


ReportPart = Callable[[FittedTPF, Mapping[str, float], Path], object]
"""A further part of the report: (the fitted TPF, each track's applied clock offset in seconds, the output
folder) -> its JSON-ready entry in pose_errors.json (it may write its own files into the folder)."""


def fit_and_report(
    problem: Problem,
    config: TimePoseFunctionConfig,
    output: Path,
    data_name: str,
    curve_samples: int = 2000,
    progress: bool = True,
    time_offset: TimeOffsetConfig = TimeOffsetConfig(),
    given_offsets: Optional[Mapping[str, float]] = None,
    extras: Optional[Mapping[str, ReportPart]] = None,
) -> Dict[str, object]:
    """Fits the TPF to ``problem``, estimates the depth and LiDAR tracks' clock offsets, poses every set,
    measures every method against the true poses and writes ``output``: the predicted poses,
    pose_errors.json, trajectory.png, time_offset.png (the offset search) and tpf_state_dict.pt.
    ``extras``: key -> a further part of the report (`ReportPart`), called once the sets are posed; its
    entry goes into pose_errors.json under the key."""
    started = time.perf_counter()
    fitted = fit_tpf(problem.train_timestamps, problem.train_c2w, config, progress=progress)
    fit_seconds = time.perf_counter() - started
    baselines = {
        "linear_slerp": LinearSlerp().fit(problem.train_timestamps, problem.train_c2w),
        "cubic_spline": CubicSplineInterp().fit(problem.train_timestamps, problem.train_c2w),
    }
    offsets = estimate_offsets(problem, fitted, time_offset, given_offsets or {})
    applied = {track: estimate.applied_s for track, estimate in offsets.items()}
    applied.update({k: v for k, v in (given_offsets or {}).items() if k not in applied})
    output.mkdir(parents=True, exist_ok=True)
    report: Dict[str, object] = {
        "data": data_name,
        "format": problem.format,
        "metres_per_unit": problem.metres_per_unit,
        "fit": {
            "rgb_frames": int(problem.train_timestamps.shape[0]),
            "seconds": fit_seconds,
            **{key: value for key, value in fitted.fit_report.items() if key != "frames"},
            "config": {k: v for k, v in dataclasses.asdict(config).items() if not k.startswith("_")},
        },
        "time_offsets": {track: estimate.as_dict() for track, estimate in offsets.items()},
        "sets": {},
    }
    streams = []
    for pose_set in problem.sets:
        offset = applied.get(pose_set.track, 0.0) if pose_set.track is not None else 0.0
        with torch.no_grad():
            predicted = fitted.poses(pose_set.timestamps + offset).double().numpy()
            without = fitted.poses(pose_set.timestamps).double().numpy() if offset else None
        if pose_set.write_dir is not None:
            for stem, pose in zip(pose_set.stems, predicted):
                write_pose_txt(output / pose_set.write_dir / f"{stem}.txt", pose, pose_set.homogeneous)
        report["sets"][pose_set.name] = {
            "frames": len(pose_set.stems),
            "written_to": pose_set.write_dir,
            "time_offset_s": offset,
            "errors": method_errors(pose_set, predicted, baselines, problem.metres_per_unit, offset, without),
        }
        linear = baselines["linear_slerp"](pose_set.timestamps + offset)
        streams.append(_stream(pose_set, predicted, linear, problem.to_plot_frame))
    for key, part in (extras or {}).items():
        report[key] = part(fitted, dict(applied), output)
    write_json_atomic(output / "pose_errors.json", report)
    torch.save(fitted.state_dict(), output / "tpf_state_dict.pt")
    _plot(output / "trajectory.png", problem, fitted, [s for s in streams if s is not None], curve_samples, data_name)
    if any(estimate.curve_costs for estimate in offsets.values()):
        plot_offset_search(output / "time_offset.png", list(offsets.values()), title=f"clock offsets: {Path(data_name).name}")
    return report


def _plot(path: Path, problem: Problem, fitted, streams: List[DepthStream], curve_samples: int, data_name: str) -> None:
    times = problem.train_timestamps
    curve_times = np.linspace(times[0], times[-1], curve_samples)
    with torch.no_grad():
        curve = fitted.poses(curve_times).double().numpy()[:, :, 3]
    plot_trajectory(
        path,
        times,
        problem.to_plot_frame(problem.train_c2w[:, :, 3]),
        curve_times,
        problem.to_plot_frame(curve),
        streams,
        axis_names=problem.axis_names,
        title=f"time-pose function: {Path(data_name).name} ({problem.format})",
    )


def read_problem(data: Path, metres_per_unit: float = 1.0, hold_out_every: int = 8) -> Problem:
    """The fitting problem of a dataset in the layout, or of an upstream Async-NeRF pose folder."""
    if (data / "coordinates.pt").is_file():
        return layout_problem(read_layout(data))
    if data.is_dir() and is_upstream_sequence(data):
        return upstream_problem(data, metres_per_unit, hold_out_every)
    raise FileNotFoundError(
        f"{data}: neither a dataset in the async-nerf layout (no coordinates.pt) nor a folder of "
        "upstream {timestamp}.txt poses (DATA/rgb/*.txt or DATA/*.txt)"
    )


