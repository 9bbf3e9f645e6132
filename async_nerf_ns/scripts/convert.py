"""async-nerf-convert: turn an asynchronous RGB-D capture into an async-nerf dataset, in one command.

Sources (the first word picks one; without it, the frame folder of earlier versions):

  async-nerf-convert [folder] --raw RAW --out OUT --pose-convention C [...]   frames named by capture time
  async-nerf-convert bag --bag BAG --rgb-topic T --out OUT --pose-convention C [...]   a ROS 1 / ROS 2 bag
  async-nerf-convert frames --bag BAG --rgb-topic T --out DIR   the bag's RGB frames as images named by stamp
                                                                (to run COLMAP on, then: bag --colmap MODEL)

`async-nerf-convert folder --help` and `async-nerf-convert bag --help` list every option.

RGB poses: folder: RAW/rgb_poses/TIME.txt (one per frame), or --tum FILE, --colmap DIR, --transforms
FILE; bag: --pose-topic TOPIC (PoseStamped, PoseWithCovarianceStamped, TransformStamped, Odometry),
--tf WORLD CAMERA (/tf, /tf_static), or one of the files. Poses are interpolated to the frames'
times (--interpolation linear|cubic); frames outside the poses' span, or between poses more than
--max-pose-gap apart, are left out with a warning. --camera-to-body gives the camera's pose in the
tracked frame. --depth-time-offset TRACK SECONDS puts a depth track's stamps on the RGB clock.
bag: --lidar-topic TOPIC[=TRACK] (repeatable) writes a sensor_msgs/PointCloud2 topic as a LiDAR track,
points with their own times (fields t, time, offset_time, timestamp, or --lidar-time-field), with the
extrinsic from --lidar-to-camera TRACK tx ty tz qx qy qz qw or /tf_static.

Input of the folder source, RAW/ (every frame file is named by its capture time in seconds, e.g.
1667117650.123.png; all streams share one clock unless --depth-time-offset says otherwise):

  rgb/TIME.{png,jpg,jpeg,bmp,tif,tiff,webp}  RGB frames, all one size (png/jpg copied, others re-encoded as PNG)
  rgb_poses/TIME.txt                         camera-to-world of each RGB frame: a 4x4 (last row 0 0 0 1) or
                                             3x4 whitespace-separated matrix, metres, axes of --pose-convention;
                                             one per frame, same TIME string (absent with --tum/--colmap/--transforms)
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
would use), pose_gt_TRACK/; from a bag's --lidar-topic: lidar_TRACK/ ((N, 4) float32 x y z t),
metadata_lidar_TRACK/ (timestamp), lidar_to_camera_TRACK.txt; and conversion.json (options, result,
notes, files written). The result is validated with the DataParser's own checks in a hidden folder
beside OUT and only then moved into OUT: an interrupted conversion never leaves a dataset that looks
complete.
"""

from __future__ import annotations

import sys
import warnings
from typing import List, Optional, Sequence, Union

import rich.markup
import tyro
from rich.console import Console
from typing_extensions import Annotated

from async_nerf_ns.convert.bag_convert import convert_bag, extract_frames
from async_nerf_ns.convert.config import BagConfig, FramesConfig
from async_nerf_ns.convert.convert import ConversionSummary, ConvertConfig, convert_raw
from async_nerf_ns.layout import LayoutError, LayoutWarning

CONSOLE = Console()
SOURCES = ("folder", "bag", "frames")
CliConfig = Union[
    Annotated[ConvertConfig, tyro.conf.subcommand("folder", prefix_name=False)],
    Annotated[BagConfig, tyro.conf.subcommand("bag", prefix_name=False)],
    Annotated[FramesConfig, tyro.conf.subcommand("frames", prefix_name=False)],
]


def format_summary(summary: ConversionSummary) -> str:
    """A few lines: frames per split and stream, true poses per track, origin and scale, notes."""
    lines = [f"Wrote {summary.out} (validated)"]
    for split, counts in summary.counts.items():
        streams = ", ".join(f"{stream} {n}" for stream, n in counts.items()) or "nothing"
        lines.append(f"  {split + ':':<6} {streams}")
    for track, n in summary.pose_gt_counts.items():
        if n:
            lines.append(f"  true poses of track {track}: {n}")
    origin = ", ".join(f"{value:.6g}" for value in summary.origin_drb)
    lines.append(f"  origin_drb [{origin}] m, pose_scale_factor {summary.pose_scale_factor:.6g} m")
    lines += [f"  {note}" for note in summary.notes]
    return "\n".join(lines)


def main(config: Union[ConvertConfig, BagConfig, FramesConfig]) -> Optional[ConversionSummary]:
    """Convert, then print the summary."""
    if isinstance(config, FramesConfig):
        count = extract_frames(config, show_progress=True)
        CONSOLE.print(f"Wrote {count} RGB frames of {config.rgb_topic} to {config.out}, named by their stamps",
                      highlight=False, soft_wrap=True)
        return None
    if isinstance(config, BagConfig):
        summary = convert_bag(config, show_progress=True)
    else:
        summary = convert_raw(config, show_progress=True)
    CONSOLE.print(format_summary(summary), highlight=False, soft_wrap=True)
    return summary


def parse(args: Sequence[str]) -> Union[ConvertConfig, BagConfig, FramesConfig]:
    """The config of a command line; without a source word first, the folder source (earlier versions)."""
    args = list(args)
    if args and args[0] not in SOURCES and args[0] not in ("-h", "--help"):
        args = ["folder", *args]
    return tyro.cli(CliConfig, args=args, description=__doc__, prog="async-nerf-convert")  # type: ignore[arg-type]


_PYTHON_SHOWWARNING = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The converter's (and the layout's) warnings as one line each, like its errors; others as Python shows them."""
    if not issubclass(category, LayoutWarning):
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)
        return
    CONSOLE.print(f"[bold yellow]async-nerf-convert: warning:[/bold yellow] {rich.markup.escape(str(message))}",
                  soft_wrap=True)


def entrypoint(argv: Optional[List[str]] = None) -> None:
    """Console script `async-nerf-convert`: a problem with the input is one line naming the file, exit status 1."""
    tyro.extras.set_accent_color("bright_yellow")
    config = parse(sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", LayoutWarning)
            warnings.showwarning = _show_warning
            main(config)
    except (LayoutError, ValueError) as error:  # raw input, OUT, or an option
        CONSOLE.print(f"[bold red]async-nerf-convert:[/bold red] {rich.markup.escape(str(error))}", soft_wrap=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt as error:  # a bag conversion says where its frames are kept for a rerun
        for note in getattr(error, "__notes__", ["async-nerf-convert: interrupted"]):
            CONSOLE.print(rich.markup.escape(note), soft_wrap=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    entrypoint()
