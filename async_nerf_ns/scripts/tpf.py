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
measured. Each depth track's clock offset to the RGB clock is estimated from its train depth frames
(pose = TPF(stamp + offset); `OUT/time_offset.png` shows the search; errors are given with and without
it). Always writes `OUT/pose_errors.json`, `OUT/trajectory.png` and `OUT/tpf_state_dict.pt`
(load with `FittedTPF.from_state_dict(config, torch.load(...))`). The work is in
async_nerf_ns/trajectory/report.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import tyro

from async_nerf_ns.layout import LayoutError
from async_nerf_ns.trajectory.report import fit_and_report, print_table, read_problem
from async_nerf_ns.trajectory.time_offset import TimeOffsetConfig
from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig


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
    time_offset: TimeOffsetConfig = TimeOffsetConfig()
    """Estimating each depth track's clock offset (layout datasets: from the train depth frames)."""
    depth_time_offset: Optional[Dict[str, float]] = None
    """TRACK SECONDS [...]: known clock offsets (pose = TPF(stamp + offset)); the search is centred on them."""

    def main(self) -> Dict[str, object]:
        problem = read_problem(self.data, self.metres_per_unit, self.hold_out_every)
        report = fit_and_report(
            problem, self.tpf, self.output, str(self.data), self.curve_samples, self.progress, self.time_offset,
            self.depth_time_offset,
        )
        print_table(report)
        return report


def entrypoint() -> None:
    """Console entry point (async-nerf-tpf)."""
    tyro.extras.set_accent_color("bright_yellow")
    try:
        tyro.cli(FitTpf).main()
    except (LayoutError, FileNotFoundError) as error:
        raise SystemExit(f"async-nerf-tpf: {error}")


if __name__ == "__main__":
    entrypoint()
