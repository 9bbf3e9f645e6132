"""async-nerf-convert: turn a raw asynchronous RGB-D capture into an async-nerf dataset.

Input, RAW/ (every frame file is named by its capture time in seconds, e.g. 1667117650.123.png;
all streams share one clock):

  rgb/TIME.{png,jpg,jpeg,bmp,tif,tiff,webp}  RGB frames, all one size (png/jpg copied, others re-encoded as PNG)
  rgb_poses/TIME.txt                         camera-to-world of each RGB frame: a 4x4 (last row 0 0 0 1) or
                                             3x4 whitespace-separated matrix, metres, axes of --pose-convention;
                                             one per frame, same TIME string
  depth_TRACK/TIME.{npy,pt,png,tif,tiff,jpg,jpeg}  optional, any number of tracks: depth maps at the track's
                                             own times, copied unchanged (units: see --depth-scale)
  depth_TRACK_poses/TIME.txt                 optional: true poses of depth frames, same format and axes;
                                             for evaluation only (-> pose_gt_TRACK/)
  intrinsics.json                            optional: {"rgb": {"fx": .., "fy": .., "cx": .., "cy": ..},
                                             "TRACK": {...}, "depth_scale": {"TRACK": metres per unit}};
                                             --rgb-intrinsics / --depth-intrinsics / --depth-scale win over it

Output, OUT/ (docs/DATA_LAYOUT.md): coordinates.pt with origin_drb = the midpoint of the bounding box
of the RGB camera positions (DRB metres) and pose_scale_factor = the largest distance of an RGB
camera from it, so RGB cameras lie in the unit ball; train/ and val/ (see --val-every) with
rgbs/, metadata/ (W, H, intrinsics, normalised DRB c2w, timestamp), depth_TRACK/,
metadata_depth_TRACK/ (W, H, intrinsics, timestamp, depth_scale if given, and as c2w the PRIOR
pose: the pose of the RGB frame nearest in time, what a pipeline without a time-pose function
would use), pose_gt_TRACK/; and conversion.json (options, result, files written). The result is
validated with the DataParser's own checks before it is moved into OUT.
"""

from __future__ import annotations

import rich.markup
import tyro
from rich.console import Console

from async_nerf_ns.data.convert import ConversionSummary, ConvertConfig, convert_raw
from async_nerf_ns.data.layout import LayoutError

CONSOLE = Console()


def format_summary(summary: ConversionSummary) -> str:
    """A few lines: frames per split and stream, true poses per track, origin and scale."""
    lines = [f"Wrote {summary.out} (validated)"]
    for split, counts in summary.counts.items():
        streams = ", ".join(f"{stream} {n}" for stream, n in counts.items()) or "nothing"
        lines.append(f"  {split + ':':<6} {streams}")
    for track, n in summary.pose_gt_counts.items():
        lines.append(f"  true poses of track {track}: {n}")
    origin = ", ".join(f"{value:.6g}" for value in summary.origin_drb)
    lines.append(f"  origin_drb [{origin}] m, pose_scale_factor {summary.pose_scale_factor:.6g} m")
    return "\n".join(lines)


def main(config: ConvertConfig) -> ConversionSummary:
    """Convert, then print the summary."""
    summary = convert_raw(config, show_progress=True)
    CONSOLE.print(format_summary(summary), highlight=False)
    return summary


def entrypoint() -> None:
    """Console script `async-nerf-convert`: a problem with the input is one line naming the file, exit status 1."""
    tyro.extras.set_accent_color("bright_yellow")
    config = tyro.cli(ConvertConfig, description=__doc__)
    try:
        main(config)
    except (LayoutError, ValueError) as error:  # raw input, OUT, or an option
        CONSOLE.print(f"[bold red]async-nerf-convert:[/bold red] {rich.markup.escape(str(error))}", soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    entrypoint()
