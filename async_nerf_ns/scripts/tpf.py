"""async-nerf-tpf: fit the time-pose function to a dataset's RGB poses and pose every depth frame and LiDAR scan.

    async-nerf-tpf DATA --output OUT [--tpf.iterations N ...]

DATA is either a dataset in the async-nerf layout (docs/DATA_LAYOUT.md; it has a coordinates.pt) or an
upstream Async-NeRF raw sequence (`DATA/rgb/{timestamp}.txt` 4x4 poses, optional
`DATA/depth_TRACK/{timestamp}.txt` true depth poses; or just a folder of `{timestamp}.txt`).

Layout: fits on the train RGB frames, writes `OUT/poses_<split>_<track>/STEM.txt` (3x4, normalised
DRB, like the layout's poses) for every depth frame of every track and `OUT/poses_<split>_lidar_<track>/
STEM.txt` (the camera's pose at the scan's stamp) for every scan of every LiDAR track, and measures
the TPF, linear + SLERP, cubic spline and the metadata prior against `pose_gt_<track>` /
`pose_gt_lidar_<track>` where present, and on the held-out val RGB frames. Upstream: every 8th RGB
pose (never the first or last) is held out and measured; depth tracks with poses are predicted
(`OUT/poses_<track>/`, 4x4 like the input) and measured. Each depth track's and LiDAR track's clock
offset to the RGB clock is estimated from its train depth frames or scans (pose = TPF(stamp + offset);
`OUT/time_offset.png` shows the searches; errors are given with and without it; `--depth-time-offset
TRACK S` names either kind). For each LiDAR track, `OUT/lidar_deskew_<track>.png` shows what
deskewing (each return at its own time instead of all at the scan's stamp) does to the train scan
whose sensor moves most during its sweep, and pose_errors.json's `lidar_deskew` has the numbers
(sweep, sensor travel, displacement of the returns; over all train scans too; async_nerf_ns/lidar/
deskew.py). Always writes `OUT/pose_errors.json`, `OUT/trajectory.png` and `OUT/tpf_state_dict.pt`
(load with `FittedTPF.from_state_dict(config, torch.load(...))`). The work is in
async_nerf_ns/trajectory/report.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import tyro

from async_nerf_ns.layout import LayoutError
from async_nerf_ns.lidar.deskew import deskew_report, print_deskew
from async_nerf_ns.trajectory.report import Problem, ReportPart, fit_and_report, lidar_train_tracks, print_table, read_problem
from async_nerf_ns.trajectory.time_offset import TimeOffsetConfig
from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig


@dataclass
class FitTpf:
    """Fit the time-pose function to the RGB frames' poses and give every depth frame and LiDAR scan a pose."""

    data: tyro.conf.Positional[Path]
    """A dataset in the async-nerf layout, or an upstream Async-NeRF folder of {timestamp}.txt poses."""
    output: Path
    """Folder for the depth and LiDAR scan poses, pose_errors.json, trajectory.png, time_offset.png,
    lidar_deskew_TRACK.png and tpf_state_dict.pt."""
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
    time_offset: TimeOffsetConfig = TimeOffsetConfig()
    """Estimating each depth and LiDAR track's clock offset (layout datasets: from the train depth frames and scans)."""
    depth_time_offset: Optional[Dict[str, float]] = None
    """TRACK SECONDS [...]: known clock offsets of depth or LiDAR tracks (pose = TPF(stamp + offset)); the
    search is centred on them."""

    def main(self) -> Dict[str, object]:
        problem = read_problem(self.data, self.metres_per_unit, self.hold_out_every)
        report = fit_and_report(
            problem, self.tpf, self.output, str(self.data), self.curve_samples, self.progress, self.time_offset,
            self.depth_time_offset, extras=self._lidar_deskew(problem),
        )
        print_table(report)
        if "lidar_deskew" in report:
            print_deskew(report["lidar_deskew"])
        return report

    def _lidar_deskew(self, problem: Problem) -> Dict[str, ReportPart]:
        """The deskew view of the LiDAR tracks (lidar/, a layer above trajectory/: handed to the report)."""
        tracks = lidar_train_tracks(problem)
        if not tracks:
            return {}

        def part(fitted, offsets, output):
            return deskew_report(
                tracks, problem.metres_per_unit, fitted.poses, offsets, output, problem.to_plot_frame,
                problem.axis_names, title=f"{self.data.name}: ",
            )

        return {"lidar_deskew": part}


def entrypoint() -> None:
    """Console entry point (async-nerf-tpf)."""
    tyro.extras.set_accent_color("bright_yellow")
    try:
        tyro.cli(FitTpf).main()
    except (LayoutError, FileNotFoundError) as error:
        raise SystemExit(f"async-nerf-tpf: {error}")


if __name__ == "__main__":
    entrypoint()
