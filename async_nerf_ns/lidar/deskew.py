"""What deskewing does to a LiDAR track: each return placed at its own time vs all at the scan's stamp.

A spinning LiDAR takes a sweep (~100 ms) to measure a scan, and the sensor moves meanwhile. Deskewing
(`rays.scan_rays`, ``deskew=True``) places every return with the pose of its own time; a pipeline that
treats a scan as instantaneous places all of them with the pose at the scan's stamp. For each LiDAR
track, `deskew_report` measures how far apart the two placements put the returns:

- over every train scan (at most ``points_per_scan`` returns of each, stride-subsampled, the first and
  last in time always kept): each scan's sweep, the sensor's travel during it and the largest
  displacement of a return; reported as median and maximum over the scans;
- on the train scan whose sensor moves most during its sweep, every return: the displacement's median,
  95th percentile and maximum, and the figure ``lidar_deskew_TRACK.png`` (top view of both placements
  with the sensor's path during the sweep; the displacement of each return against its time).

The sensor's travel is the length of the LiDAR's path (its mount on the camera, `lidar_to_camera`)
from the scan's first return to its last, sampled at ``TRAVEL_SAMPLES`` times. Displacements and travel
are in metres: the poses are in scene units and ``pose_scale_factor`` converts. Any rigid world frame
will do (the layout's normalised DRB, as `async-nerf-tpf` fits the TPF, or nerfstudio's); only the
figure's axes depend on it (``to_plot``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib
import matplotlib.collections
import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.layout import LidarScan
from async_nerf_ns.lidar.rays import PoseFunction, scan_rays
from async_nerf_ns.lidar.scans import LidarScanSet

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

POINTS_PER_SCAN = 4096
"""Returns of each train scan (stride-subsampled) for the numbers over all train scans."""
TRAVEL_SAMPLES = 64
"""Times across a sweep at which the sensor's position is taken for its path (and its length)."""


@dataclass
class ScanDeskew:
    """One scan's returns placed both ways (scene units, the pose function's world frame)."""

    stem: str
    scan_time: float
    """The scan's stamp on the RGB clock (its track's clock offset added), seconds."""
    dt: np.ndarray
    """(P,) each return's time after the stamp, seconds."""
    deskewed: np.ndarray
    """(P, 3) each return placed at its own time."""
    stamped: np.ndarray
    """(P, 3) each return placed at the stamp."""
    path: np.ndarray
    """(TRAVEL_SAMPLES, 3) the LiDAR's position from the first return's time to the last's."""
    sensor_at_stamp: np.ndarray
    """(3,) the LiDAR's position at the stamp."""
    pose_scale_factor: float

    @property
    def displacement_m(self) -> np.ndarray:
        """(P,) distance between each return's two placements, metres."""
        return np.linalg.norm(self.deskewed - self.stamped, axis=1) * self.pose_scale_factor

    @property
    def sweep_s(self) -> float:
        """Time from the scan's first return to its last, seconds."""
        return float(self.dt.max() - self.dt.min()) if len(self.dt) else 0.0

    @property
    def travel_m(self) -> float:
        """Length of the sensor's path during the sweep, metres."""
        return float(np.linalg.norm(np.diff(self.path, axis=0), axis=1).sum()) * self.pose_scale_factor


def lidar_positions(times: np.ndarray, lidar_to_camera: np.ndarray, poses_at: PoseFunction,
                    pose_scale_factor: float) -> np.ndarray:
    """(M, 3) the LiDAR's position (scene units) at ``times`` (RGB clock): ``c2w(T) (L 0) / s``."""
    with torch.no_grad():
        poses = poses_at(np.asarray(times, dtype=np.float64)).detach().cpu().double().numpy().reshape(-1, 3, 4)
    mount = np.asarray(lidar_to_camera, dtype=np.float64)[:3, 3] / pose_scale_factor
    return np.einsum("mab,b->ma", poses[:, :, :3], mount) + poses[:, :, 3]


def scan_deskew(points: np.ndarray, scan: LidarScan, scan_time: float, poses_at: PoseFunction,
                pose_scale_factor: float) -> ScanDeskew:
    """``points`` (P >= 1, 4) of ``scan`` (`layout.load_lidar_points`) placed deskewed and at the stamp."""
    extrinsic = scan.lidar_to_camera
    deskewed = scan_rays(points, scan_time, extrinsic, poses_at, pose_scale_factor, deskew=True)
    stamped = scan_rays(points, scan_time, extrinsic, poses_at, pose_scale_factor, deskew=False)
    dt = np.asarray(points[:, 3], dtype=np.float64)
    times = scan_time + np.append(np.linspace(dt.min(), dt.max(), TRAVEL_SAMPLES), 0.0)  # the path, then the stamp
    positions = lidar_positions(times, extrinsic, poses_at, pose_scale_factor)
    return ScanDeskew(scan.stem, scan_time, dt, deskewed.points, stamped.points, positions[:-1], positions[-1], pose_scale_factor)


def subsample(points: np.ndarray, at_most: int) -> np.ndarray:
    """Every k-th row plus the first and last return in time (so that the sweep keeps its span), at most
    ``at_most`` (>= 3) rows in all, in the scan's order."""
    if len(points) <= at_most:
        return points
    stride = math.ceil(len(points) / max(at_most - 2, 1))
    rows = np.unique(np.concatenate([np.arange(0, len(points), stride), [np.argmin(points[:, 3]), np.argmax(points[:, 3])]]))
    return points[rows]


def _spread(values: np.ndarray) -> Dict[str, float]:
    return {
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": float(np.max(values)),
    }


def track_deskew(
    track: str,
    scans: Sequence[LidarScan],
    pose_scale_factor: float,
    poses_at: PoseFunction,
    offset_s: float = 0.0,
    points_per_scan: int = POINTS_PER_SCAN,
) -> Optional[Tuple[Dict[str, object], ScanDeskew]]:
    """(the report entry, the `ScanDeskew` of the scan whose sensor moves most) of one track's train scans;
    None when no scan has a return."""
    scan_set = LidarScanSet.from_tracks({track: list(scans)}, pose_scale_factor)
    times = scan_set.scan_times({track: offset_s})
    travel, largest, sweeps = [], [], []
    kept: List[int] = []
    for index in range(len(scan_set)):
        points = scan_set.points(index)
        if not len(points):
            continue
        placed = scan_deskew(subsample(points, points_per_scan), scan_set.scans[index], float(times[index]), poses_at,
                             pose_scale_factor)
        kept.append(index)
        travel.append(placed.travel_m)
        largest.append(float(placed.displacement_m.max()))
        sweeps.append(placed.sweep_s)
    if not kept:
        return None
    chosen = kept[int(np.argmax(travel))]
    points = scan_set.points(chosen)
    placed = scan_deskew(points, scan_set.scans[chosen], float(times[chosen]), poses_at, pose_scale_factor)
    entry: Dict[str, object] = {
        "scans": len(scan_set),
        "scans_with_returns": len(kept),
        "time_offset_s": float(offset_s),
        "scan": placed.stem,
        "scan_stamp_s": float(scan_set.scans[chosen].timestamp),
        "returns": len(points),
        "sweep_s": placed.sweep_s,
        "sensor_travel_m": placed.travel_m,
        "displacement_m": _spread(placed.displacement_m),
        "train_scans": {
            "points_per_scan_at_most": int(points_per_scan),
            "max_displacement_m": {"median": float(np.median(largest)), "max": float(np.max(largest))},
            "sensor_travel_m": {"median": float(np.median(travel)), "max": float(np.max(travel))},
            "sweep_s": {"median": float(np.median(sweeps)), "max": float(np.max(sweeps))},
        },
    }
    return entry, placed


def deskew_report(
    tracks: Mapping[str, Sequence[LidarScan]],
    pose_scale_factor: float,
    poses_at: PoseFunction,
    offsets: Mapping[str, float],
    output: Path,
    to_plot: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    axis_names: Sequence[str] = ("x (m)", "y (m)", "up (m)"),
    title: str = "",
    points_per_scan: int = POINTS_PER_SCAN,
) -> Dict[str, Dict[str, object]]:
    """Track -> its deskew numbers (module docstring); writes ``output/lidar_deskew_TRACK.png`` per track.

    Args:
        tracks: each LiDAR track's train scans, in time order.
        pose_scale_factor: metres per scene unit.
        poses_at: the time-pose function (RGB clock), camera poses in scene units.
        offsets: each track's clock offset to the RGB clock, seconds (0 for a track not named).
        to_plot: positions (N, 3), scene units -> metres in a (horizontal, horizontal, up) frame; default:
            metres in the pose function's own axes.
        axis_names: the names of ``to_plot``'s axes.
        title: what the figures' titles begin with (e.g. the dataset's name).
    """
    to_plot = to_plot or (lambda positions: np.asarray(positions) * pose_scale_factor)
    report: Dict[str, Dict[str, object]] = {}
    for track in sorted(tracks):
        found = track_deskew(track, tracks[track], pose_scale_factor, poses_at, float(offsets.get(track, 0.0)),
                             points_per_scan)
        if found is None:
            report[track] = {"scans": len(tracks[track]), "scans_with_returns": 0}
            continue
        entry, placed = found
        figure = f"lidar_deskew_{track}.png"
        plot_deskew(output / figure, placed, entry, to_plot, axis_names, f"{title}LiDAR track '{track}'")
        entry["figure"] = figure
        report[track] = entry
    return report


LINKED_RETURNS = 300
"""Returns (evenly spaced in the scan's order) whose two placements the figure joins with a line."""


def plot_deskew(path: Path, placed: ScanDeskew, entry: Mapping[str, object],
                to_plot: Callable[[np.ndarray], np.ndarray], axis_names: Sequence[str], title: str) -> None:
    """Writes a PNG: the scan's returns from above, deskewed and placed at the stamp, with the sensor's path
    during the sweep (the whole scan and, when it reaches much farther, the sensor's neighbourhood); each
    return's displacement against its time."""
    deskewed, stamped = to_plot(placed.deskewed), to_plot(placed.stamped)
    path_m, sensor = to_plot(placed.path), to_plot(placed.sensor_at_stamp[None])[0]
    displacement = placed.displacement_m
    size = 10.0 if len(displacement) <= 2000 else 1.5
    travel = float(entry["sensor_travel_m"])
    centre = path_m.mean(axis=0)
    window = max(5.0, 8.0 * travel)  # metres around the sensor in the close-up
    reach = float(np.abs(np.concatenate([deskewed, stamped])[:, :2] - centre[:2]).max())
    panels = 3 if reach > 2 * window else 2
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 7.0))
    linked = np.unique(np.linspace(0, len(displacement) - 1, min(LINKED_RETURNS, len(displacement))).astype(int))
    for k, axis in enumerate(axes[:-1]):
        segments = np.stack([stamped[linked, :2], deskewed[linked, :2]], axis=1)
        axis.add_collection(matplotlib.collections.LineCollection(
            segments, colors="0.55", linewidths=0.6, label=f"a return's move ({len(linked)} of them)"))
        axis.scatter(stamped[:, 0], stamped[:, 1], s=size, c="tab:red", alpha=0.7, lw=0,
                     label="all at the scan's stamp (not deskewed)")
        axis.scatter(deskewed[:, 0], deskewed[:, 1], s=size, c="tab:blue", alpha=0.7, lw=0,
                     label="each at its own time (deskewed)")
        axis.plot(path_m[:, 0], path_m[:, 1], "-", color="black", lw=2.0, label=f"LiDAR's path during the sweep ({travel:.3g} m)")
        axis.plot(path_m[0, 0], path_m[0, 1], "o", color="black", mfc="none", ms=8, label="LiDAR at the first return's time")
        axis.plot(path_m[-1, 0], path_m[-1, 1], "s", color="black", mfc="none", ms=8, label="LiDAR at the last return's time")
        axis.plot(sensor[0], sensor[1], "*", color="tab:orange", ms=12, label="LiDAR at the stamp")
        axis.set_xlabel(axis_names[0])
        axis.set_ylabel(axis_names[1])
        if k == 0:
            axis.set_aspect("equal", adjustable="datalim")
            axis.autoscale_view()
            axis.set_title(f"top view: {len(displacement)} returns")
        else:
            axis.set_xlim(centre[0] - window, centre[0] + window)
            axis.set_ylim(centre[1] - window, centre[1] + window)
            axis.set_aspect("equal", adjustable="box")
            axis.set_title(f"close to the sensor (+-{window:.3g} m)")
    spread = entry["displacement_m"]
    errors = axes[-1]
    errors.plot(placed.dt * 1000, displacement, ".", ms=4 if size > 2 else 1.5, color="tab:purple")
    for key, style in (("median", "--"), ("p95", ":"), ("max", "-")):
        errors.axhline(spread[key], color="0.3", ls=style, lw=1.0, label=f"{key} {spread[key]:.3g} m")
    errors.set_xlabel("return's time after the stamp (ms)")
    errors.set_ylabel("deskewed vs at the stamp (m)")
    errors.set_title("displacement of each return")
    errors.legend(fontsize=8, loc="best")
    legend = figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=9)
    for handle in legend.legend_handles:
        if isinstance(handle, matplotlib.collections.PathCollection):
            handle.set_sizes([30.0])  # dense scans' dots are too small to read in the legend
    overall = entry["train_scans"]["max_displacement_m"]
    figure.suptitle(
        f"{title}, scan {placed.stem} (the train scan whose sensor moves most): sweep {placed.sweep_s * 1000:.1f} ms, "
        f"sensor moved {travel:.3g} m, clock offset {float(entry['time_offset_s']) * 1000:+.1f} ms\n"
        f"deskewing moves its returns by median {spread['median']:.3g} m, 95 % {spread['p95']:.3g} m, max "
        f"{spread['max']:.3g} m; over the {entry['scans_with_returns']} train scans, a scan's largest move: "
        f"median {overall['median']:.3g} m, max {overall['max']:.3g} m"
    )
    figure.tight_layout(rect=(0.0, 0.08, 1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def print_deskew(report: Mapping[str, Mapping[str, object]]) -> None:
    """One line per track: what deskewing changes (``deskew_report``'s numbers)."""
    for track, entry in report.items():
        if "displacement_m" not in entry:
            CONSOLE.print(f"LiDAR track '{track}': no train scan with returns, no deskew view")
            continue
        spread, overall = entry["displacement_m"], entry["train_scans"]["max_displacement_m"]
        CONSOLE.print(
            f"LiDAR track '{track}': scan {entry['scan']} (sweep {entry['sweep_s'] * 1000:.1f} ms, sensor moved "
            f"{entry['sensor_travel_m']:.3g} m): deskewing moves its {entry['returns']} returns by median "
            f"{spread['median']:.3g} m, 95 % {spread['p95']:.3g} m, max {spread['max']:.3g} m; a train scan's largest "
            f"move: median {overall['median']:.3g} m over {entry['scans_with_returns']} scans -> {entry['figure']}"
        )
