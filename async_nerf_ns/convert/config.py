"""What `async-nerf-convert` is asked to do (its command-line options), one config per source.

`CommonOptions` are the options every source has (OUT, axes, intrinsics and depth overrides, clock
offsets, splits); `PoseFileOptions` the RGB pose sources that are files beside the capture (TUM,
COLMAP, transforms.json) and how poses are interpolated to the frames' times. `ConvertConfig` is
the frame-folder source (the original command line, unchanged), `BagConfig` the ROS bag source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple

import tyro
from typing_extensions import Annotated

from async_nerf_ns.convert.poses import PoseConvention

Interpolation = Literal["linear", "cubic"]
StampSource = Literal["header", "receive"]


@dataclass(kw_only=True)
class CommonOptions:
    """Options of every source."""

    out: Path
    """Where the dataset goes: a new or empty folder (or an earlier output, with --overwrite)."""
    pose_convention: PoseConvention
    """Axes of the RGB poses (after --camera-to-body). opengl-enu: world x east, y north, z up, camera x
    right, y up, z back (nerfstudio, Blender, transforms.json). opencv-enu: same world, camera x right,
    y down, z forward (COLMAP, most SLAM, ROS optical frames). drb: world x down, y right, z back with
    OpenGL camera axes (the layout's own, in metres). Required: a wrong guess still converts, but trains
    on a scene turned on its side."""
    rgb_intrinsics: Optional[Tuple[float, float, float, float]] = None
    """fx fy cx cy of the RGB camera in pixels, at the size of its frames; overrides intrinsics.json's
    "rgb" entry (folder) or the CameraInfo topic (bag)."""
    depth_intrinsics: Dict[str, Tuple[float, float, float, float]] = field(default_factory=dict)
    """TRACK fx fy cx cy [TRACK fx fy cx cy ...]: intrinsics of depth tracks at the size of their
    frames; each overrides that track's entry in intrinsics.json (folder) or its CameraInfo (bag)."""
    depth_scale: Dict[str, float] = field(default_factory=dict)
    """TRACK METRES [TRACK METRES ...]: metres per stored depth unit; overrides intrinsics.json's
    "depth_scale". Without either, the layout's defaults apply (.npy/.pt/8-bit: metres, 16-bit:
    millimetres; a bag's 16UC1 depth is millimetres, 32FC1 metres)."""
    depth_time_offset: Dict[str, float] = field(default_factory=dict)
    """TRACK SECONDS [TRACK SECONDS ...]: seconds added to that depth track's stamps when they are
    written, to put them on the RGB camera's clock (e.g. 0.03 for a depth sensor whose clock runs 30 ms
    behind the RGB clock). The layout's timestamps, the nearest-RGB prior pose and the split are then
    on the RGB clock; file names keep the sensor's own stamp. An offset you do not know is estimated
    by stage 1 instead (see README, clock offsets)."""
    mask_folder: Optional[Path] = None
    """PNG masks (one channel, 0 = ignore the pixel: moving cars and people) named like the RGB frames they
    belong to (the raw file's stem; for a bag, the frame's stamp as the dataset names it, e.g.
    1667117650.123456789.png); written as masks/STEM.png. Frames without one keep every pixel."""
    val_every: int = 8
    """Frames N//2, N//2 + N, N//2 + 2N, ... (in time order) of each stream go to val/, the rest to
    train/; starting at N//2 keeps val frames inside the train time span. At least 2."""
    overwrite: bool = False
    """Replace OUT if it holds an earlier output of this tool (and nothing else)."""


@dataclass(kw_only=True)
class PoseFileOptions:
    """RGB poses from a file, and how poses are brought to the frames' times."""

    tum: Optional[Path] = None
    """RGB (or body, see --camera-to-body) poses from a TUM trajectory file: one line per pose,
    'timestamp tx ty tz qx qy qz qw' (ORB-SLAM, evo, most SLAM systems), camera-to-world, metres."""
    colmap: Optional[Path] = None
    """RGB poses from a COLMAP sparse model folder (cameras, images .bin or .txt; read with pycolmap).
    Images are matched to frames by name (IMAGE.png <-> frame IMAGE), else their names must be
    capture times. Needs --pose-convention opencv-enu (COLMAP cameras are OpenCV)."""
    transforms: Optional[Path] = None
    """RGB poses from a nerfstudio transforms.json (ns-process-data): each frame's transform_matrix, at
    its "timestamp" entry (seconds), else matched to a frame by file name, else the file name must be
    a capture time. Needs --pose-convention opengl-enu (nerfstudio cameras are OpenGL)."""
    camera_to_body: Optional[Tuple[float, float, float, float, float, float, float]] = None
    """tx ty tz qx qy qz qw: the RGB camera's pose in the frame the pose source tracks (a body, IMU or
    base_link), camera axes as --pose-convention says; each RGB pose is then pose @ camera_to_body.
    Default: the pose source tracks the camera itself."""
    interpolation: Interpolation = "linear"
    """How poses are brought to frame times between pose samples: linear (translation) + SLERP
    (rotation), or cubic (scipy CubicSpline + RotationSpline)."""
    max_pose_gap: float = 1.0
    """Seconds: an RGB frame whose bracketing pose samples are further apart than this (tracking lost,
    keyframes too sparse) gets no pose and is left out, with a warning. Frames outside the span of the
    pose samples are always left out (never extrapolated)."""


@dataclass(kw_only=True)
class FolderSource:
    """The frame folder's own option (listed first in --help)."""

    raw: Path
    """The raw capture folder (rgb/, rgb_poses/, depth_TRACK/, ...). With --tum, --colmap or
    --transforms, RGB poses come from that file and RAW has no rgb_poses/."""


@dataclass(kw_only=True)
class ConvertConfig(PoseFileOptions, CommonOptions, FolderSource):
    """Convert a raw asynchronous RGB-D capture folder into an async-nerf dataset (see docs/DATA_LAYOUT.md)."""


@dataclass(kw_only=True)
class BagSource:
    """The bag's own options (listed first in --help)."""

    bag: Path
    """A ROS 1 .bag file, or a ROS 2 bag folder (metadata.yaml with .db3 or .mcap files)."""
    rgb_topic: str
    """RGB frames: a sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8, bayer, yuv, 16-bit colour) or
    sensor_msgs/CompressedImage (jpeg, png; written unchanged) topic."""
    depth_topic: Dict[str, str] = field(default_factory=dict)
    """TRACK TOPIC [TRACK TOPIC ...]: depth tracks, each a sensor_msgs/Image topic (16UC1/mono16
    millimetres, written as 16-bit PNG; 32FC1 metres, written as .npy) or a compressedDepth
    CompressedImage topic of 16UC1 PNGs."""
    lidar_topic: Annotated[Tuple[str, ...], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="TOPIC[=TRACK]")] = ()
    """TOPIC or TOPIC=TRACK (repeat the flag for more): a sensor_msgs/PointCloud2 topic written as the LiDAR
    track TRACK (default: the topic's segments joined by '_', /ouster/points -> ouster_points): one
    lidar_TRACK/STAMP.npy per cloud, rows x y z (LiDAR frame, metres) t (seconds after the cloud's header
    stamp), NaN and all-zero points left out. Per-point times from the first field called t (Ouster), time
    (Velodyne), offset_time (Livox) or timestamp (Hesai, Livox), or --lidar-time-field; a cloud without one
    gets t = 0 (one warning per topic: no deskewing)."""
    lidar_time_field: Annotated[Optional[str], tyro.conf.arg(metavar="NAME")] = None
    """The per-point time field of every --lidar-topic, when its name is not t, time, offset_time or
    timestamp. Units: integer fields are nanoseconds, float fields seconds; values within a day of the
    cloud's header stamp (nearer to it than to 0) are absolute times and the stamp is subtracted (a float
    field is also tried as absolute nanoseconds); other values are times after the stamp. A point time more
    than 10 s from its stamp is an error (a field in other units). With --stamp receive a scan is stamped
    with its receive time and its points keep their times after the header stamp."""
    lidar_to_camera: Annotated[
        Dict[str, Tuple[float, float, float, float, float, float, float]],
        tyro.conf.arg(metavar="TRACK TX TY TZ QX QY QZ QW [...]"),
    ] = field(default_factory=dict)
    """TRACK tx ty tz qx qy qz qw [TRACK ...]: the LiDAR's pose in the RGB camera frame (p_camera = R p_lidar
    + t, metres), camera axes as --pose-convention says (opencv-enu: a ROS optical frame, x right, y down,
    z forward; opengl-enu, drb: x right, y up, z back); written as lidar_to_camera_TRACK.txt in OpenGL
    axes. Default: the chain in /tf_static from the camera's frame (--tf's CAMERA, or with --camera-to-body
    or another pose source the RGB messages' frame_id; same axes) to the clouds' frame_id."""
    rgb_info_topic: Optional[str] = None
    """sensor_msgs/CameraInfo of the RGB camera. Default: camera_info beside the image topic
    (/cam/color/image_raw[/compressed] -> /cam/color/camera_info)."""
    depth_info_topic: Dict[str, str] = field(default_factory=dict)
    """TRACK TOPIC [...]: CameraInfo of depth tracks; default: camera_info beside each depth topic."""
    pose_topic: Optional[str] = None
    """RGB (or body, see --camera-to-body) poses from a topic of geometry_msgs/PoseStamped,
    PoseWithCovarianceStamped, TransformStamped or nav_msgs/Odometry (world -> tracked frame)."""
    tf: Optional[Tuple[str, str]] = None
    """WORLD_FRAME CAMERA_FRAME: RGB poses from the transform chain in /tf and /tf_static between the two
    named frames (e.g. map camera_color_optical_frame; an optical frame is opencv-enu)."""
    stamp: StampSource = "header"
    """Time of each message: its header stamp (the sensor's capture time) or the bag's receive time."""
    png_compression: int = 1
    """zlib level (0-9) of the PNGs written for raw RGB and 16-bit depth images: 1 is fast, 9 small."""
    workers: int = 0
    """Threads that encode PNGs (raw RGB and 16-bit depth frames) while the bag is read; 0: one per CPU
    core, up to 8. At most two frames per thread wait in memory."""


@dataclass(kw_only=True)
class BagConfig(PoseFileOptions, CommonOptions, BagSource):
    """Convert a ROS 1 or ROS 2 bag (read with rosbags, no ROS install) into an async-nerf dataset.

    The bag is read once, message by message: RGB and depth frames are written as they come (memory
    stays flat however large the bag), stamped with their header stamps (--stamp receive: the bag's
    receive times); depth frames keep their own stamps. Intrinsics come from the CameraInfo topics.
    RGB poses come from one of --pose-topic, --tf, --tum, --colmap, --transforms and are interpolated
    to the frames' stamps; the summary says how many frames were interpolated and the largest time
    between the pose samples around one. PointCloud2 topics (--lidar-topic) become LiDAR tracks: one
    scan of points with their own times per cloud. Frames are written into a hidden .OUT.KEY.partial folder
    beside OUT: an interrupted run (Ctrl-C, full disk) leaves it, and the same command resumes.

    Example: async-nerf-convert bag --bag run.bag --out data --rgb-topic /cam/color/image_raw
    --depth-topic tof /cam/depth/image_raw --tf map cam_color_optical_frame --pose-convention opencv-enu
    """


@dataclass(kw_only=True)
class FramesConfig:
    """Write a bag's RGB frames as image files named by their stamps (STAMP.png or .jpg), for COLMAP or
    another SfM tool; `async-nerf-convert bag --colmap MODEL` then matches its images to the frames by
    these names."""

    bag: Path
    """A ROS 1 .bag file, or a ROS 2 bag folder."""
    rgb_topic: str
    """The sensor_msgs/Image or CompressedImage topic of the RGB camera."""
    out: Path
    """A new or empty folder for the images."""
    stamp: StampSource = "header"
    """Name frames by their header stamps or by the bag's receive times (use what the conversion uses)."""
    png_compression: int = 1
    """zlib level (0-9) of the PNGs written for raw frames."""
    workers: int = 0
    """Threads that encode PNGs; 0: one per CPU core, up to 8."""
