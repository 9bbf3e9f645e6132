"""Trajectory figure: top view, altitude over time and depth-frame errors over time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


@dataclass
class DepthStream:
    """Positions (metres, plot frame) of one depth track's frames."""

    label: str
    timestamps: np.ndarray
    tpf: np.ndarray
    gt: Optional[np.ndarray] = None
    prior: Optional[np.ndarray] = None
    linear: Optional[np.ndarray] = None
    """Linear + SLERP baseline positions (drawn in the error panel only)."""


def plot_trajectory(
    path: Path,
    rgb_timestamps: np.ndarray,
    rgb_positions: np.ndarray,
    curve_timestamps: np.ndarray,
    curve_positions: np.ndarray,
    depth: Sequence[DepthStream],
    axis_names: Sequence[str] = ("x (m)", "y (m)", "altitude (m)"),
    title: str = "time-pose function",
) -> None:
    """Writes a PNG: top view (axes 0, 1), altitude (axis 2) vs time and, where true depth poses
    exist, the translation error of each depth frame vs time (TPF and prior). Positions (N, 3) are
    in metres, already in the plot frame; times are seconds (float64)."""
    t0 = float(rgb_timestamps[0])
    with_errors = any(stream.gt is not None for stream in depth)
    figure, axes = plt.subplots(1, 3 if with_errors else 2, figsize=(18 if with_errors else 12, 5.5))
    top, height = axes[0], axes[1]
    top.plot(curve_positions[:, 0], curve_positions[:, 1], "-", color="tab:blue", lw=1.0, label="TPF")
    top.plot(rgb_positions[:, 0], rgb_positions[:, 1], ".", color="0.4", ms=3, label="RGB poses (fitted)")
    height.plot(curve_timestamps - t0, curve_positions[:, 2], "-", color="tab:blue", lw=1.0, label="TPF")
    height.plot(rgb_timestamps - t0, rgb_positions[:, 2], ".", color="0.4", ms=3, label="RGB poses (fitted)")
    markers = (
        ("tpf", "x", "tab:blue", "TPF pose"),
        ("gt", "o", "tab:green", "true pose"),
        ("prior", "+", "tab:red", "prior pose"),
    )
    for stream in depth:
        size = 6 if stream.timestamps.shape[0] <= 100 else 2.5  # dense tracks would hide the curve
        for attribute, marker, colour, what in markers:
            positions = getattr(stream, attribute)
            if positions is None:
                continue
            if marker == "o":
                style = dict(ms=size, mfc="none", mec=colour, ls="none")
            else:
                style = dict(ms=size, color=colour, ls="none")
            label = f"{stream.label}: {what}"
            top.plot(positions[:, 0], positions[:, 1], marker, label=label, **style)
            height.plot(stream.timestamps - t0, positions[:, 2], marker, label=label, **style)
    top.set_xlabel(axis_names[0])
    top.set_ylabel(axis_names[1])
    top.set_aspect("equal", adjustable="datalim")
    top.set_title("top view")
    height.set_xlabel(f"time (s) since {t0:.3f}")
    height.set_ylabel(axis_names[2])
    height.set_title("altitude")
    top.legend(fontsize=7, loc="best")
    if with_errors:
        _plot_errors(axes[2], depth, t0)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_errors(axis, depth: Sequence[DepthStream], t0: float) -> None:
    for stream in depth:
        if stream.gt is None:
            continue
        size = 6 if stream.timestamps.shape[0] <= 100 else 2.5
        errors: List = [
            ("prior", stream.prior, "+", "tab:red"),
            ("linear+SLERP", stream.linear, ".", "tab:orange"),
            ("TPF", stream.tpf, "x", "tab:blue"),
        ]
        for name, positions, marker, colour in errors:
            if positions is None:
                continue
            error = np.linalg.norm(positions - stream.gt, axis=-1)
            median = float(np.median(error))
            # A floor keeps exact (0 m) errors on the log axis.
            axis.semilogy(
                stream.timestamps - t0, np.maximum(error, 1e-6), marker, ms=size, color=colour, ls="none",
                label=f"{stream.label}: {name} (median {median:.3g} m)",
            )
    axis.set_xlabel(f"time (s) since {t0:.3f}")
    axis.set_ylabel("translation error (m)")
    axis.set_title("depth frames and LiDAR scans: error vs true pose")
    axis.legend(fontsize=7, loc="best")


def plot_offset_search(path: Path, estimates, title: str = "clock offsets") -> None:
    """Writes a PNG: per depth or LiDAR track, the estimator's cost against the offset (ms), with the estimate
    and its uncertainty, the given offset and the one applied (``estimates``: TimeOffsetEstimate). Both kinds
    of cost are relative disagreements (depth: of overlapping depth maps; LiDAR: of a scan's points from the
    next scans' surface, per metre of range), so they share one axis."""
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for estimate in estimates:
        if not estimate.curve_costs:
            continue
        offsets = np.array(estimate.curve_offsets_s) * 1000
        line = axis.plot(offsets, estimate.curve_costs, ".-", ms=3, lw=1.0, label=f"{estimate.track}: {estimate.status}")[0]
        if estimate.estimate_s is not None:
            centre, spread = estimate.estimate_s * 1000, 3 * (estimate.std_s or 0.0) * 1000
            axis.axvspan(centre - spread, centre + spread, color=line.get_color(), alpha=0.2)
            axis.axvline(centre, color=line.get_color(), lw=1.0,
                         label=f"{estimate.track}: estimate {centre:+.1f} ms (+-3 std shaded)")
        axis.axvline(estimate.given_s * 1000, color=line.get_color(), ls=":", lw=1.0,
                     label=f"{estimate.track}: given {estimate.given_s * 1000:+.1f} ms, applied {estimate.applied_s * 1000:+.1f} ms")
    axis.set_xlabel("clock offset added to the track's stamps (ms)")
    axis.set_ylabel("mean truncated relative disagreement")
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
