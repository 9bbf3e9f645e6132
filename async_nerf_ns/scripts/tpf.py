"""async-nerf-tpf: fit the time-pose function to a dataset's RGB poses and pose every depth frame.

    async-nerf-tpf DATA --output OUT [--tpf.iterations N ...]

DATA is either a dataset in the async-nerf layout (docs/DATA_LAYOUT.md; it has a coordinates.pt) or an
upstream Async-NeRF raw sequence (`DATA/rgb/{timestamp}.txt` 4x4 poses, optional
`DATA/depth_TRACK/{timestamp}.txt` true depth poses; or just a folder of `{timestamp}.txt`).

Layout: fits on the train RGB frames, writes `OUT/poses_<split>_<track>/STEM.txt` (3x4, normalised
DRB, like the layout's poses) for every depth frame of every track, and measures the TPF, linear +
SLERP, cubic spline and the metadata prior against `pose_gt_<track>` where present, and on the
held-out val RGB frames. Upstream: every 8th RGB pose (never the first or last) is held out and
measured; depth tracks with poses are predicted (`OUT/poses_<track>/`, 4x4 like the input) and
measured. Always writes `OUT/pose_errors.json`, `OUT/trajectory.png` and `OUT/tpf_state_dict.pt`
(load with `FittedTPF.from_state_dict(config, torch.load(...))`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import tyro
from nerfstudio.utils.rich_utils import CONSOLE
from rich.table import Table

from async_nerf_ns.data.layout import DatasetLayout, LayoutError, read_layout
from async_nerf_ns.trajectory.baselines import CubicSplineInterp, LinearSlerp
from async_nerf_ns.trajectory.fit import fit_tpf
from async_nerf_ns.trajectory.metrics import pose_errors, summary_only
from async_nerf_ns.trajectory.plot import DepthStream, plot_trajectory
from async_nerf_ns.trajectory.pose_files import (
    PoseFileError,
    is_upstream_sequence,
    read_upstream_sequence,
    write_pose_txt,
)
from async_nerf_ns.trajectory.synthetic import split_every
from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig

METHODS = ("tpf", "linear_slerp", "cubic_spline", "prior")
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


@dataclass
class FitTpf:
    """Fit the time-pose function to the RGB frames' poses and give every depth frame a pose."""

    data: tyro.conf.Positional[Path]
    """A dataset in the async-nerf layout, or an upstream Async-NeRF folder of {timestamp}.txt poses."""
    output: Path
    """Folder for the depth poses, pose_errors.json, trajectory.png and tpf_state_dict.pt."""
    tpf: TimePoseFunctionConfig = field(default_factory=TimePoseFunctionConfig)
    """The time-pose function."""
    metres_per_unit: float = 1.0
    """Upstream format only: metres per unit of the pose files (the layout has pose_scale_factor)."""
    hold_out_every: int = 8
    """Upstream format only: every this-many-th RGB pose is held out to measure the TPF."""
    curve_samples: int = 2000
    """Points of the TPF curve in the plot."""
    progress: bool = True
    """Show a progress bar while fitting."""

    def main(self) -> Dict[str, object]:
        problem = self._read()
        started = time.perf_counter()
        fitted = fit_tpf(problem.train_timestamps, problem.train_c2w, self.tpf, progress=self.progress)
        fit_seconds = time.perf_counter() - started
        baselines = {
            "linear_slerp": LinearSlerp().fit(problem.train_timestamps, problem.train_c2w),
            "cubic_spline": CubicSplineInterp().fit(problem.train_timestamps, problem.train_c2w),
        }
        self.output.mkdir(parents=True, exist_ok=True)
        report: Dict[str, object] = {
            "data": str(self.data),
            "format": problem.format,
            "metres_per_unit": problem.metres_per_unit,
            "fit": {
                "rgb_frames": int(problem.train_timestamps.shape[0]),
                "seconds": fit_seconds,
                **{key: value for key, value in fitted.fit_report.items() if key != "frames"},
                "config": {k: v for k, v in dataclasses.asdict(self.tpf).items() if not k.startswith("_")},
            },
            "sets": {},
        }
        streams = []
        for pose_set in problem.sets:
            with torch.no_grad():
                predicted = fitted.poses(pose_set.timestamps).double().numpy()
            if pose_set.write_dir is not None:
                for stem, pose in zip(pose_set.stems, predicted):
                    write_pose_txt(self.output / pose_set.write_dir / f"{stem}.txt", pose, pose_set.homogeneous)
            report["sets"][pose_set.name] = {
                "frames": len(pose_set.stems),
                "written_to": pose_set.write_dir,
                "errors": method_errors(pose_set, predicted, baselines, problem.metres_per_unit),
            }
            linear = baselines["linear_slerp"](pose_set.timestamps)
            streams.append(_stream(pose_set, predicted, linear, problem.to_plot_frame))
        (self.output / "pose_errors.json").write_text(json.dumps(report, indent=2))
        torch.save(fitted.state_dict(), self.output / "tpf_state_dict.pt")
        self._plot(problem, fitted, [s for s in streams if s is not None])
        _print_table(report)
        return report

    def _read(self) -> Problem:
        if (self.data / "coordinates.pt").is_file():
            return layout_problem(read_layout(self.data))
        if self.data.is_dir() and is_upstream_sequence(self.data):
            return _upstream_problem(self.data, self.metres_per_unit, self.hold_out_every)
        raise FileNotFoundError(
            f"{self.data}: neither a dataset in the async-nerf layout (no coordinates.pt) nor a folder of "
            "upstream {timestamp}.txt poses (DATA/rgb/*.txt or DATA/*.txt)"
        )

    def _plot(self, problem: Problem, fitted, streams: List[DepthStream]) -> None:
        times = problem.train_timestamps
        curve_times = np.linspace(times[0], times[-1], self.curve_samples)
        with torch.no_grad():
            curve = fitted.poses(curve_times).double().numpy()[:, :, 3]
        plot_trajectory(
            self.output / "trajectory.png",
            times,
            problem.to_plot_frame(problem.train_c2w[:, :, 3]),
            curve_times,
            problem.to_plot_frame(curve),
            streams,
            axis_names=problem.axis_names,
            title=f"time-pose function: {self.data.name} ({problem.format})",
        )


def method_errors(pose_set: PoseSet, predicted: np.ndarray, baselines, metres_per_unit: float) -> Dict[str, object]:
    """Per-method error summaries on the frames that have a true pose (and, for 'prior', a prior)."""
    has_gt = np.array([gt is not None for gt in pose_set.gt], dtype=bool)
    if not has_gt.any():
        return {}
    gt = np.stack([g for g in pose_set.gt if g is not None])
    times = pose_set.timestamps[has_gt]
    errors = {"tpf": summary_only(pose_errors(predicted[has_gt], gt, metres_per_unit))}
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
    """The fitting problem of a dataset in our layout: train RGB (timestamp, pose) pairs and depth sets."""
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
                )
            )
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
        # DRB metres -> the z-up world of the nerfstudio dataparser: (DRB y, -DRB z, -DRB x).
        metres = origin + scale * positions
        return np.stack([metres[:, 1], -metres[:, 2], -metres[:, 0]], axis=-1)

    return Problem(
        format="layout",
        train_timestamps=times,
        train_c2w=np.stack([frame.c2w for frame in train.rgb]),
        metres_per_unit=scale,
        sets=sets,
        to_plot_frame=to_plot_frame,
        axis_names=("DRB y = right (m)", "-DRB z = forward (m)", "-DRB x = altitude (m)"),
    )


def _upstream_problem(root: Path, metres_per_unit: float, hold_out_every: int) -> Problem:
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


def _print_table(report: Dict[str, object]) -> None:
    table = Table(title=f"pose errors ({report['format']}; TPF fit {report['fit']['seconds']:.1f} s)")
    for column in ("set", "method", "frames", "transl. mean (m)", "median", "max", "rot. mean (deg)", "median", "max"):
        table.add_column(column, justify="left" if column in ("set", "method") else "right")
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


def entrypoint() -> None:
    """Console entry point (async-nerf-tpf)."""
    tyro.extras.set_accent_color("bright_yellow")
    try:
        tyro.cli(FitTpf).main()
    except (LayoutError, PoseFileError, FileNotFoundError) as error:
        raise SystemExit(f"async-nerf-tpf: {error}")


if __name__ == "__main__":
    entrypoint()
