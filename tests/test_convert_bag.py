"""The ROS bag source of async-nerf-convert (convert/bag_convert.py), on bags written here with rosbags.

The rig (every bag of this file, ROS 1 or ROS 2): an RGB camera of 8x6 px at 5 Hz, 12 frames at
T0 + 0.013 + 0.2 i s; depth track "tof" (4x3 px, 16UC1 millimetres, 1234 mm everywhere) at
T0 + 0.1 + 0.45 k (5 frames); depth track "lidar" (4x3 px, 32FC1 metres, 7.5 m with one NaN pixel)
at T0 + 0.05 + 0.3 k (7 frames); a pose topic (PoseStamped of the camera's optical frame, ENU world)
at 100 Hz from T0 - 0.05 to T0 + 2.45 s. Every message is received 20 ms after its header stamp, so
header and receive times differ. The camera flies along ENU (10 + 2t, 5 + sin 2t, 30 + 0.5t) m,
yawing 20 deg/s; `camera_pose` is the truth every converted pose is checked against.

LiDAR clouds (`Rig.clouds`, sensor_msgs/PointCloud2, with /tf_static base_link -> camera_optical, os_sensor,
velodyne): "ouster" (/ouster/points, organised 4x8, padded points and rows, uint32 `t` ns after the stamp, a NaN
and an all-zero point) at T0 + 0.07 + 0.25 k (9 clouds); "velodyne" (/velodyne_points, 1x20, packed 22-byte
points, float32 `time` s, negative: stamped at the sweep's end) at T0 + 0.11 + 0.3 k (7); "untimed"
(/mid360/points, 1x10, no time field) at T0 + 0.09 + 0.4 k (5).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from async_nerf_ns.convert import bag_frames, bag_lidar
from async_nerf_ns.convert.bag_convert import convert_bag
from async_nerf_ns.convert.bag_lidar import decode_cloud
from async_nerf_ns.convert.bag_messages import stem_of
from async_nerf_ns.convert.config import BagConfig
from async_nerf_ns.convert.errors import RawDataError
from async_nerf_ns.convert.frame_poses import ConvertWarning
from async_nerf_ns.convert.output_folder import MANIFEST_FILE
from async_nerf_ns.layout import load_depth_metres, load_lidar_points, load_rgb, read_layout
from async_nerf_ns.scripts import convert as convert_script

T0_NS = 1_667_117_650_000_000_000
RECEIVE_DELAY_NS = 20_000_000
RGB_T = 0.013 + 0.2 * np.arange(12)
TOF_T = 0.1 + 0.45 * np.arange(5)
LIDAR_T = 0.05 + 0.3 * np.arange(7)
POSE_T = -0.05 + 0.01 * np.arange(251)
RGB_K = (10.0, 11.0, 4.0, 3.0)
TOF_K = (5.0, 5.5, 2.0, 1.5)
LIDAR_K = (4.0, 4.0, 2.0, 1.5)
ENU_FROM_DRB = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
"""By hand (as in test_convert.py): ENU x = DRB y, ENU y = -DRB z, ENU z = -DRB x."""
OPENCV_FROM_OPENGL = np.diag([1.0, -1.0, -1.0])
BASE_FROM_CAMERA = np.array([0.1, -0.05, 0.2, *Rotation.from_euler("xyz", [-90, 0, -90], degrees=True).as_quat()])
"""tx ty tz qx qy qz qw: a ROS optical frame on a base_link (x forward, y left, z up) 10 cm ahead, 20 cm up."""
INTERPOLATION_TOLERANCE = 5e-5
"""Largest |entry| of (converted - true) pose (rotation entries, translation in normalised units of
2.47 m) after linear + SLERP between 100 Hz samples of this motion: measured 1.7e-5; x3 margin."""
CUBIC_TOLERANCE = 6e-7
"""The same with --interpolation cubic: measured 1.8e-7; x3 margin."""
OUSTER_T = 0.07 + 0.25 * np.arange(9)
VELODYNE_T = 0.11 + 0.3 * np.arange(7)
UNTIMED_T = 0.09 + 0.4 * np.arange(5)
BASE_FROM_OUSTER = np.array([0.05, 0.0, 0.35, *Rotation.from_euler("z", 30, degrees=True).as_quat()])
BASE_FROM_VELODYNE = np.array([-0.1, 0.02, 0.3, *Rotation.from_euler("xyz", [2, -3, 180], degrees=True).as_quat()])
POINT_FIELD_TYPES = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}
EXTRINSIC_TOLERANCE = 1e-12
"""lidar_to_camera from the /tf_static chain against the one from --lidar-to-camera: the same rigid transform
by two float64 products (measured 1.1e-16)."""


def ns(t: float) -> int:
    return T0_NS + int(round(t * 1e9))


def camera_pose(t: float) -> np.ndarray:
    """4x4 camera-to-world of the RGB camera at T0 + t: ENU world, OpenCV (optical frame) axes."""
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("zyx", [20.0 * t, 5.0, 170.0], degrees=True).as_matrix()
    pose[:3, 3] = [10.0 + 2.0 * t, 5.0 + np.sin(2.0 * t), 30.0 + 0.5 * t]
    return pose


def rgb_pixels(i: int) -> np.ndarray:
    """uint8 (6, 8, 3) RGB: frame i's own red level, a green ramp, a fixed blue (channel order shows)."""
    pixels = np.zeros((6, 8, 3), dtype=np.uint8)
    pixels[..., 0] = 20 * i
    pixels[..., 1] = np.arange(8, dtype=np.uint8)[None] * 30
    pixels[..., 2] = 200
    return pixels


@dataclass
class Rig:
    """What a test bag holds; the defaults are the rig of the module docstring."""

    ros: int = 2
    storage: str = "sqlite3"
    rgb: str = "raw"
    """raw (rgb8 Image), bgr8, png or jpeg (CompressedImage)."""
    tof: str = "16UC1"
    """16UC1, compressedDepth, or another encoding (unreadable)."""
    lidar: bool = True
    poses: str = "pose"
    """pose (PoseStamped of the camera), odom (Odometry of base_link), tf (/tf + /tf_static), none."""
    rgb_times: np.ndarray = field(default_factory=lambda: RGB_T.copy())
    rgb_info_size: tuple = (8, 6)
    distortion: tuple = (0.0, 0.0, 0.0, 0.0, 0.0)
    zero_stamps: bool = False
    rgb_sizes: Optional[Dict[int, tuple]] = None
    """frame index -> (W, H) for frames of another size."""
    rgb_info: bool = True
    """Write /cam/color/camera_info."""
    late: Dict[int, float] = field(default_factory=dict)
    """RGB frame index -> seconds it is received later than the others (out of order in the bag)."""
    clouds: Tuple[str, ...] = ()
    """PointCloud2 topics to write: ouster, velodyne, untimed (module docstring)."""
    cloud_tf: bool = True
    """With clouds: /tf_static with the LiDARs' and the camera's frames on base_link."""
    corrupt_cloud: Optional[int] = None
    """Index of an ouster cloud whose data loses its last byte."""


class _Bag:
    """rosbags' ROS 1 / ROS 2 writer with message construction by type name."""

    def __init__(self, path: Path, ros: int, storage: str):
        from rosbags.typesys import Stores, get_typestore

        self.ros = ros
        self.store = get_typestore(Stores.ROS1_NOETIC if ros == 1 else Stores.ROS2_HUMBLE)
        if ros == 1:
            from rosbags.rosbag1 import Writer

            self.writer = Writer(path)
        else:
            from rosbags.rosbag2 import StoragePlugin, Writer

            plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
            self.writer = Writer(path, version=9, storage_plugin=plugin)
        if ros == 1:  # ROS 1's store has no tf2_msgs: take ROS 2's definition
            humble = get_typestore(Stores.ROS2_HUMBLE)
            self.store.register({"tf2_msgs/msg/TFMessage": humble.fielddefs["tf2_msgs/msg/TFMessage"]})
        self.writer.open()
        self.connections: Dict[str, object] = {}

    def msg(self, name: str, **fields):
        return self.store.types[name](**fields)

    def header(self, stamp_ns: int, frame: str = "camera"):
        stamp = self.msg("builtin_interfaces/msg/Time", sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        extra = {"seq": 0} if self.ros == 1 else {}
        return self.msg("std_msgs/msg/Header", stamp=stamp, frame_id=frame, **extra)

    def write(self, topic: str, msgtype: str, receive_ns: int, message) -> None:
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.store)
        serialize = self.store.serialize_ros1 if self.ros == 1 else self.store.serialize_cdr
        self.writer.write(self.connections[topic], receive_ns, serialize(message, msgtype))

    def image(self, stamp: int, pixels: np.ndarray, encoding: str):
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        return self.msg("sensor_msgs/msg/Image", header=self.header(stamp, "camera_optical"), height=pixels.shape[0],
                        width=pixels.shape[1], encoding=encoding, is_bigendian=0,
                        step=pixels.shape[1] * channels * pixels.dtype.itemsize,
                        data=np.frombuffer(pixels.tobytes(), dtype=np.uint8))

    def compressed(self, stamp: int, data: bytes, fmt: str):
        return self.msg("sensor_msgs/msg/CompressedImage", header=self.header(stamp), format=fmt,
                        data=np.frombuffer(data, dtype=np.uint8))

    def camera_info(self, stamp: int, size, k, distortion=(0.0,) * 5):
        matrix = np.array([k[0], 0, k[2], 0, k[1], k[3], 0, 0, 1], dtype=np.float64)
        projection = np.array([k[0], 0, k[2], 0, 0, k[1], k[3], 0, 0, 0, 1, 0], dtype=np.float64)
        names = ("D", "K", "R", "P") if self.ros == 1 else ("d", "k", "r", "p")
        values = (np.array(distortion, dtype=np.float64), matrix, np.eye(3).reshape(-1), projection)
        roi = self.msg("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.msg("sensor_msgs/msg/CameraInfo", header=self.header(stamp), height=size[1], width=size[0],
                        distortion_model="plumb_bob", binning_x=0, binning_y=0, roi=roi, **dict(zip(names, values)))

    def pose_parts(self, pose: np.ndarray):
        q = Rotation.from_matrix(pose[:3, :3]).as_quat()
        return (self.msg("geometry_msgs/msg/Point", x=pose[0, 3], y=pose[1, 3], z=pose[2, 3]),
                self.msg("geometry_msgs/msg/Quaternion", x=q[0], y=q[1], z=q[2], w=q[3]))

    def transform(self, stamp: int, parent: str, child: str, pose: np.ndarray):
        point, rotation = self.pose_parts(pose)
        translation = self.msg("geometry_msgs/msg/Vector3", x=point.x, y=point.y, z=point.z)
        return self.msg("geometry_msgs/msg/TransformStamped", header=self.header(stamp, parent), child_frame_id=child,
                        transform=self.msg("geometry_msgs/msg/Transform", translation=translation, rotation=rotation))

    def cloud(self, stamp: int, frame: str, columns: Dict[str, np.ndarray], height: int, width: int, **layout):
        fields, point_step, row_step, data = cloud_bytes(columns, height, width, **layout)
        return self.msg("sensor_msgs/msg/PointCloud2", header=self.header(stamp, frame), height=height, width=width,
                        fields=[self.store.types["sensor_msgs/msg/PointField"](name=n, offset=o, datatype=d, count=1)
                                for n, o, d in fields],
                        is_bigendian=bool(layout.get("bigendian", False)), point_step=point_step, row_step=row_step,
                        data=np.frombuffer(data, dtype=np.uint8), is_dense=False)

    def close(self) -> None:
        self.writer.close()


def cloud_bytes(columns: Dict[str, np.ndarray], height: int, width: int, point_pad: int = 0, row_pad: int = 0,
                bigendian: bool = False):
    """(fields [(name, offset, datatype)], point_step, row_step, data) of a PointCloud2 holding `columns` (one
    value per point, packed in the given order, then `point_pad` bytes; `row_pad` bytes after each row)."""
    offsets = np.cumsum([0] + [values.dtype.itemsize for values in columns.values()])
    point_step = int(offsets[-1]) + point_pad
    order = ">" if bigendian else "<"
    dtype = np.dtype({"names": list(columns), "formats": [v.dtype.newbyteorder(order) for v in columns.values()],
                      "offsets": [int(o) for o in offsets[:-1]], "itemsize": point_step})
    points = np.zeros(height * width, dtype=dtype)
    for name, values in columns.items():
        points[name] = values
    row_step = width * point_step + row_pad
    rows = np.zeros((height, row_step), dtype=np.uint8)
    rows[:, : width * point_step] = points.view(np.uint8).reshape(height, -1)
    fields = [(name, int(offset), POINT_FIELD_TYPES[f"{values.dtype.kind}{values.dtype.itemsize}"])
              for (name, values), offset in zip(columns.items(), offsets)]
    return fields, point_step, row_step, rows.tobytes()


def cloud_columns(kind: str, k: int) -> Dict[str, np.ndarray]:
    """The k-th cloud of a rig LiDAR: random returns (seeded), one NaN point and one without a return."""
    n = {"ouster": 32, "velodyne": 20, "untimed": 10}[kind]
    rng = np.random.default_rng([k, n])
    x, y, z = rng.uniform(-30.0, 30.0, (3, n)).astype(np.float32)
    x[1] = np.nan
    x[3] = y[3] = z[3] = 0.0
    columns = {"x": x, "y": y, "z": z, "intensity": rng.uniform(0, 100, n).astype(np.float32)}
    if kind == "ouster":
        columns["t"] = (np.arange(n) % 8 * 12_500_000 + np.arange(n) // 8 * 1_000 + k).astype(np.uint32)
        columns["ring"] = (np.arange(n) // 8).astype(np.uint16)
    elif kind == "velodyne":
        columns["ring"] = (np.arange(n) % 16).astype(np.uint16)
        columns["time"] = (-0.1 + 0.005 * np.arange(n)).astype(np.float32)
    return columns


def expected_scan(kind: str, k: int) -> np.ndarray:
    """float32 (N, 4) rows the converter must write for that cloud: returns only, t in seconds after the stamp."""
    c = cloud_columns(kind, k)
    xyz = np.stack([c["x"], c["y"], c["z"]], axis=1)
    t = c["t"] * 1e-9 if "t" in c else c.get("time", np.zeros(len(xyz)))
    keep = np.isfinite(xyz).all(axis=1) & (xyz != 0).any(axis=1)
    return np.concatenate([xyz, np.asarray(t, dtype=np.float32)[:, None]], axis=1)[keep]


CLOUDS = {  # kind -> topic, frame, times, (height, width), layout
    "ouster": ("/ouster/points", "os_sensor", OUSTER_T, (4, 8), dict(point_pad=6, row_pad=16)),
    "velodyne": ("/velodyne_points", "velodyne", VELODYNE_T, (1, 20), {}),
    "untimed": ("/mid360/points", "livox_frame", UNTIMED_T, (1, 10), {}),
}


def tq(pose: np.ndarray) -> np.ndarray:
    return np.array([*pose[:3, 3], *Rotation.from_matrix(pose[:3, :3]).as_quat()])


def pose_of(values: np.ndarray) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_quat(values[3:]).as_matrix()
    pose[:3, 3] = values[:3]
    return pose


def camera_from_lidar(base_from_lidar: np.ndarray) -> np.ndarray:
    """The LiDAR's pose in the optical (OpenCV) camera frame."""
    return np.linalg.inv(base_from_camera()) @ pose_of(base_from_lidar)


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def base_from_camera() -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_quat(BASE_FROM_CAMERA[3:]).as_matrix()
    pose[:3, 3] = BASE_FROM_CAMERA[:3]
    return pose


def write_rig_bag(path: Path, rig: Rig = Rig()) -> Path:
    """The bag of the module docstring, changed as `rig` says; messages in receive-time order."""
    bag = _Bag(path, rig.ros, rig.storage)
    messages: List[tuple] = []  # (receive ns, topic, type, message)

    def add(t_or_ns, topic, msgtype, message, late_s: float = 0.0):
        stamp = t_or_ns if isinstance(t_or_ns, int) else ns(t_or_ns)
        messages.append((stamp + RECEIVE_DELAY_NS + int(late_s * 1e9), topic, msgtype, message))

    def stamp_of(t: float) -> int:
        return 0 if rig.zero_stamps else ns(t)

    for i, t in enumerate(rig.rgb_times):
        pixels = rgb_pixels(i)
        if rig.rgb_sizes and i in rig.rgb_sizes:
            w, h = rig.rgb_sizes[i]
            pixels = np.zeros((h, w, 3), dtype=np.uint8)
        if rig.rgb in ("raw", "bgr8"):
            data = pixels if rig.rgb == "raw" else pixels[..., ::-1].copy()
            add(ns(t), "/cam/color/image_raw", "sensor_msgs/msg/Image",
                bag.image(stamp_of(t), data, "rgb8" if rig.rgb == "raw" else "bgr8"), rig.late.get(i, 0.0))
        else:
            fmt = {"png": ("PNG", "rgb8; png compressed bgr8"), "jpeg": ("JPEG", "rgb8; jpeg compressed bgr8"),
                   "h264": ("PNG", "h264")}[rig.rgb]
            data = _encode(pixels, fmt[0]) if rig.rgb != "h264" else b"\x00\x00\x00\x01h264"
            add(ns(t), "/cam/color/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                bag.compressed(stamp_of(t), data, fmt[1]), rig.late.get(i, 0.0))
        if rig.rgb_info:
            add(ns(t), "/cam/color/camera_info", "sensor_msgs/msg/CameraInfo",
                bag.camera_info(ns(t), rig.rgb_info_size, RGB_K, rig.distortion))
    for t in TOF_T:
        depth_mm = np.full((3, 4), 1234, dtype=np.uint16)
        if rig.tof == "compressedDepth":
            png = _encode(depth_mm, "PNG")
            add(ns(t), "/tof/depth/image_raw/compressedDepth", "sensor_msgs/msg/CompressedImage",
                bag.compressed(ns(t), b"\x00" * 12 + png, "16UC1; compressedDepth png"))
        elif rig.tof == "16UC1":
            add(ns(t), "/tof/depth/image_raw", "sensor_msgs/msg/Image", bag.image(ns(t), depth_mm, "16UC1"))
        else:
            add(ns(t), "/tof/depth/image_raw", "sensor_msgs/msg/Image",
                bag.image(ns(t), depth_mm.astype(np.uint8), rig.tof))
        add(ns(t), "/tof/depth/camera_info", "sensor_msgs/msg/CameraInfo", bag.camera_info(ns(t), (4, 3), TOF_K))
    if rig.lidar:
        for t in LIDAR_T:
            depth_m = np.full((3, 4), 7.5, dtype=np.float32)
            depth_m[0, 0] = np.nan
            add(ns(t), "/lidar/depth", "sensor_msgs/msg/Image", bag.image(ns(t), depth_m, "32FC1"))
            add(ns(t), "/lidar/camera_info", "sensor_msgs/msg/CameraInfo", bag.camera_info(ns(t), (4, 3), LIDAR_K))
    for t in POSE_T:
        if rig.poses == "pose":
            point, rotation = bag.pose_parts(camera_pose(t))
            message = bag.msg("geometry_msgs/msg/PoseStamped", header=bag.header(ns(t), "map"),
                              pose=bag.msg("geometry_msgs/msg/Pose", position=point, orientation=rotation))
            add(ns(t), "/camera_pose", "geometry_msgs/msg/PoseStamped", message)
        elif rig.poses == "odom":
            point, rotation = bag.pose_parts(camera_pose(t) @ np.linalg.inv(base_from_camera()))
            zero = bag.msg("geometry_msgs/msg/Vector3", x=0.0, y=0.0, z=0.0)
            message = bag.msg(
                "nav_msgs/msg/Odometry", header=bag.header(ns(t), "odom"), child_frame_id="base_link",
                pose=bag.msg("geometry_msgs/msg/PoseWithCovariance", covariance=np.zeros(36),
                             pose=bag.msg("geometry_msgs/msg/Pose", position=point, orientation=rotation)),
                twist=bag.msg("geometry_msgs/msg/TwistWithCovariance", covariance=np.zeros(36),
                              twist=bag.msg("geometry_msgs/msg/Twist", linear=zero, angular=zero)))
            add(ns(t), "/odom", "nav_msgs/msg/Odometry", message)
        elif rig.poses == "tf":
            # map -> odom (static, 1 m east), odom -> base_link (100 Hz), base_link -> optical (static)
            odom_in_map = np.eye(4)
            odom_in_map[0, 3] = 1.0
            base = np.linalg.inv(odom_in_map) @ camera_pose(t) @ np.linalg.inv(base_from_camera())
            add(ns(t), "/tf", "tf2_msgs/msg/TFMessage",
                bag.msg("tf2_msgs/msg/TFMessage", transforms=[bag.transform(ns(t), "odom", "base_link", base)]))
            if t == POSE_T[0]:
                statics = [bag.transform(ns(t), "map", "odom", odom_in_map),
                           bag.transform(ns(t), "base_link", "camera_optical", base_from_camera())]
                add(ns(t) - 1, "/tf_static", "tf2_msgs/msg/TFMessage",
                    bag.msg("tf2_msgs/msg/TFMessage", transforms=statics))
    for kind in rig.clouds:
        topic, frame, times, (height, width), layout = CLOUDS[kind]
        for k, t in enumerate(times):
            message = bag.cloud(ns(t), frame, cloud_columns(kind, k), height, width, **layout)
            if rig.corrupt_cloud == k:
                message.data = message.data[:-1]
            add(ns(t), topic, "sensor_msgs/msg/PointCloud2", message)
    if rig.clouds and rig.cloud_tf:
        statics = [bag.transform(ns(-0.06), "base_link", child, pose_of(pose)) for child, pose in
                   (("camera_optical", BASE_FROM_CAMERA), ("os_sensor", BASE_FROM_OUSTER),
                    ("velodyne", BASE_FROM_VELODYNE), ("livox_frame", BASE_FROM_OUSTER))]
        add(ns(-0.06), "/tf_static", "tf2_msgs/msg/TFMessage", bag.msg("tf2_msgs/msg/TFMessage", transforms=statics))
    for receive, topic, msgtype, message in sorted(messages, key=lambda m: m[0]):
        bag.write(topic, msgtype, receive, message)
    bag.close()
    return path


def bag_path(tmp_path: Path, rig: Rig, name: str = "rig") -> Path:
    return tmp_path / (f"{name}.bag" if rig.ros == 1 else name)


def make_config(bag: Path, out: Path, rig: Rig = Rig(), **changes) -> BagConfig:
    rgb_topic = "/cam/color/image_raw" if rig.rgb in ("raw", "bgr8") else "/cam/color/image_raw/compressed"
    tof_topic = "/tof/depth/image_raw/compressedDepth" if rig.tof == "compressedDepth" else "/tof/depth/image_raw"
    depth = {"tof": tof_topic, **({"lidar": "/lidar/depth"} if rig.lidar else {})}
    defaults = dict(bag=bag, out=out, rgb_topic=rgb_topic, depth_topic=depth, pose_convention="opencv-enu")
    if rig.poses == "pose":
        defaults["pose_topic"] = "/camera_pose"
    return BagConfig(**{**defaults, **changes})


def convert(tmp_path: Path, rig: Rig = Rig(), name: str = "out", **changes):
    bag = bag_path(tmp_path, rig)
    if not bag.exists():
        write_rig_bag(bag, rig)
    out = tmp_path / name
    summary = convert_bag(make_config(bag, out, rig, **changes))
    return summary, read_layout(out)


def truth_normalised(t: float, layout) -> np.ndarray:
    """The true camera pose at T0 + t in the layout's frame, computed with the hand-written mapping."""
    pose = camera_pose(t)
    gl = pose[:3, :3] @ OPENCV_FROM_OPENGL
    drb = np.concatenate([ENU_FROM_DRB.T @ gl, (ENU_FROM_DRB.T @ pose[:3, 3])[:, None]], axis=1)
    drb[:, 3] = (drb[:, 3] - layout.coordinates.origin_drb) / layout.coordinates.pose_scale_factor
    return drb


def all_frames(layout, track: Optional[str] = None):
    frames = [f for split in layout.splits.values() for f in (split.rgb if track is None else split.depth[track])]
    return sorted(frames, key=lambda f: f.timestamp)


def seconds_after_t0(stem: str) -> float:
    """Exact time of a frame from its stem (SECONDS.NANOSECONDS): float64 Unix times resolve only 0.24 us."""
    seconds, nanoseconds = stem.split(".")
    return (int(seconds) * 10**9 + int(nanoseconds) - T0_NS) * 1e-9


def pose_errors(layout) -> np.ndarray:
    """Largest |entry| of (converted - true) RGB pose per frame (rotation and normalised translation)."""
    return np.array([np.abs(f.c2w - truth_normalised(seconds_after_t0(f.stem), layout)).max()
                     for f in all_frames(layout)])


# --- a good conversion --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ros2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ros2")
    summary, layout = convert(tmp)
    return tmp, summary, layout


def test_ros2_frames_stamps_and_intrinsics(ros2):
    _, summary, layout = ros2
    rgb = all_frames(layout)
    assert [f.stem for f in rgb] == [stem_of(ns(t)) for t in RGB_T]
    assert [f.timestamp for f in rgb] == [ns(t) * 1e-9 for t in RGB_T]  # header stamps, not receive times
    assert summary.counts == {"train": {"rgb": 11, "tof": 4, "lidar": 6}, "val": {"rgb": 1, "tof": 1, "lidar": 1}}
    for frame in rgb:
        assert (frame.width, frame.height) == (8, 6)
        np.testing.assert_array_equal(frame.intrinsics, RGB_K)
    for track, times, k in (("tof", TOF_T, TOF_K), ("lidar", LIDAR_T, LIDAR_K)):
        frames = all_frames(layout, track)
        assert [f.timestamp for f in frames] == [ns(t) * 1e-9 for t in times]
        assert all((f.width, f.height) == (4, 3) for f in frames)
        np.testing.assert_array_equal(frames[0].intrinsics, k)


def test_ros2_pixels_and_depth_in_metres(ros2):
    _, _, layout = ros2
    for i, frame in enumerate(all_frames(layout)):
        assert frame.image_path.suffix == ".png"
        np.testing.assert_array_equal(load_rgb(frame), rgb_pixels(i))  # rgb8 written losslessly, channel order kept
    tof = load_depth_metres(all_frames(layout, "tof")[0])
    np.testing.assert_allclose(tof.numpy() if hasattr(tof, "numpy") else tof, np.full((3, 4), 1.234), rtol=1e-6)
    lidar = np.asarray(load_depth_metres(all_frames(layout, "lidar")[2]))
    assert not np.isfinite(lidar[0, 0]) or lidar[0, 0] == 0  # NaN: no measurement
    np.testing.assert_allclose(lidar.reshape(-1)[1:], 7.5)
    assert all_frames(layout, "tof")[0].depth_path.suffix == ".png"
    assert all_frames(layout, "lidar")[0].depth_path.suffix == ".npy"


def test_pose_topic_poses_match_the_truth(ros2):
    _, summary, layout = ros2
    errors = pose_errors(layout)
    assert errors.max() < INTERPOLATION_TOLERANCE, errors
    _, cubic = convert(ros2[0], name="cubic", interpolation="cubic")
    assert pose_errors(cubic).max() < CUBIC_TOLERANCE
    assert "RGB poses from pose topic /camera_pose: 0 of 12 frames at a pose sample, 12 interpolated " \
           "(max 10.0 ms between the samples around a frame)" in summary.notes


def test_depth_prior_is_the_nearest_rgb_pose(ros2):
    _, _, layout = ros2
    rgb = all_frames(layout)
    rgb_t = np.array([f.timestamp for f in rgb])
    for frame in all_frames(layout, "tof"):
        nearest = rgb[int(np.argmin(np.abs(rgb_t - frame.timestamp)))]
        np.testing.assert_array_equal(frame.c2w_prior, nearest.c2w)


def test_conversion_json_records_the_source(ros2):
    tmp, _, _ = ros2
    record = json.loads((tmp / "out" / MANIFEST_FILE).read_text())
    assert record["source"] == "bag" and record["rgb_topic"] == "/cam/color/image_raw"
    assert record["rgb_poses"] == "pose topic /camera_pose" and record["stamp"] == "header"
    assert not [p.name for p in tmp.iterdir() if p.name.startswith(".")]  # no staging folder left


@pytest.mark.parametrize("rig", [Rig(ros=1, rgb="png", tof="compressedDepth"), Rig(ros=2, storage="mcap", rgb="jpeg"),
                                 Rig(ros=1, rgb="bgr8", lidar=False)], ids=["ros1-png-compressedDepth", "mcap-jpeg",
                                                                             "ros1-bgr8"])
def test_other_bags_and_encodings(tmp_path, rig):
    summary, layout = convert(tmp_path, rig)
    frames = all_frames(layout)
    assert [f.timestamp for f in frames] == [ns(t) * 1e-9 for t in RGB_T]
    assert pose_errors(layout).max() < INTERPOLATION_TOLERANCE
    for i, frame in enumerate(frames):
        if rig.rgb == "jpeg":  # written unchanged: the file is the message's JPEG
            assert frame.image_path.read_bytes() == _encode(rgb_pixels(i), "JPEG")
            assert np.abs(load_rgb(frame).astype(int) - rgb_pixels(i)).max() <= 20  # JPEG q95 on 8x6: measured 11
        else:
            np.testing.assert_array_equal(load_rgb(frame), rgb_pixels(i))
    np.testing.assert_allclose(np.asarray(load_depth_metres(all_frames(layout, "tof")[1])), 1.234, rtol=1e-6)
    assert sorted(layout.splits["train"].depth) == (["lidar", "tof"] if rig.lidar else ["tof"])


def test_receive_times_on_request_and_a_depth_scale(tmp_path):
    _, layout = convert(tmp_path, stamp="receive", depth_scale={"tof": 0.0005})
    # --depth-scale: 1234 stored units of 0.5 mm each.
    np.testing.assert_allclose(np.asarray(load_depth_metres(all_frames(layout, "tof")[0])), 0.617, rtol=1e-6)
    assert [f.timestamp for f in all_frames(layout)] == [(ns(t) + RECEIVE_DELAY_NS) * 1e-9 for t in RGB_T]
    # Poses are stamped with receive times too: the same 20 ms shift, so poses still match the truth.
    errors = [np.abs(f.c2w - truth_normalised(f.timestamp - T0_NS * 1e-9 - 0.02, layout)).max()
              for f in all_frames(layout)]
    assert max(errors) < INTERPOLATION_TOLERANCE


# --- clock offsets ----------------------------------------------------------------------------


def test_depth_time_offset_moves_a_track_onto_the_rgb_clock(tmp_path, ros2):
    _, reference = ros2[1], ros2[2]
    summary, layout = convert(tmp_path, depth_time_offset={"tof": 0.03})
    tof = all_frames(layout, "tof")
    assert [f.timestamp for f in tof] == [ns(t) * 1e-9 + 0.03 for t in TOF_T]
    assert [f.stem for f in tof] == [stem_of(ns(t)) for t in TOF_T]  # names keep the sensor's stamp
    # The first tof frame: at 0.1 s its nearest RGB frame is the one at 0.013 s; at 0.13 s, the one at 0.213 s.
    rgb = {round(f.timestamp - T0_NS * 1e-9, 3): f for f in all_frames(layout)}
    np.testing.assert_array_equal(all_frames(reference, "tof")[0].c2w_prior, all_frames(reference)[0].c2w)
    np.testing.assert_array_equal(tof[0].c2w_prior, rgb[0.213].c2w)
    assert [f.timestamp for f in all_frames(layout, "lidar")] == [ns(t) * 1e-9 for t in LIDAR_T]  # other track as is
    assert "depth track tof: +30.000 ms added to its stamps (RGB clock)" in summary.notes



def test_a_mask_folder_names_masks_by_the_frames_stamps(tmp_path, ros2):
    masks = tmp_path / "masks"
    masks.mkdir()
    keep = np.full((6, 8), 255, dtype=np.uint8)
    keep[:2] = 0
    Image.fromarray(keep).save(masks / f"{stem_of(ns(RGB_T[1]))}.png")
    summary, layout = convert(tmp_path, mask_folder=masks)
    masked = [f for f in all_frames(layout) if f.mask_path is not None]
    assert [f.stem for f in masked] == [stem_of(ns(RGB_T[1]))] and summary.counts["train"]["masks"] == 1
    np.testing.assert_array_equal(np.asarray(Image.open(masked[0].mask_path)), keep)


# --- the console command ------------------------------------------------------------------------


def test_console_command_bag(tmp_path, capsys):
    bag = write_rig_bag(tmp_path / "rig")
    out = tmp_path / "out"
    convert_script.entrypoint(["bag", "--bag", str(bag), "--out", str(out), "--rgb-topic", "/cam/color/image_raw",
                               "--depth-topic", "tof", "/tof/depth/image_raw", "lidar", "/lidar/depth",
                               "--pose-topic", "/camera_pose", "--pose-convention", "opencv-enu",
                               "--depth-time-offset", "lidar", "-0.01"])
    text = capsys.readouterr().out
    assert "train: rgb 11, tof 4, lidar 6" in text and "val:   rgb 1, tof 1, lidar 1" in text
    assert "12 interpolated (max 10.0 ms" in text and "depth track lidar: -10.000 ms" in text
    assert read_layout(out).splits["val"].depth["lidar"][0].timestamp == pytest.approx(ns(LIDAR_T[4]) * 1e-9 - 0.01)


# --- interrupted and resumed ------------------------------------------------------------------


def test_an_interrupted_conversion_leaves_no_dataset_and_resumes(tmp_path, monkeypatch, ros2):
    bag = write_rig_bag(tmp_path / "rig")
    out = tmp_path / "out"
    written: List[Path] = []
    real = bag_frames.imwrite

    def interrupted_at_the_sixth_png(path, pixels, level):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(path)
        real(path, pixels, level)

    monkeypatch.setattr(bag_frames, "imwrite", interrupted_at_the_sixth_png)
    with pytest.raises(KeyboardInterrupt) as caught:
        convert_bag(make_config(bag, out, workers=1))
    assert not out.exists()  # nothing that looks like a dataset
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert [p.name.endswith(".partial") for p in kept] == [True]
    assert f"the frames written so far are kept in {kept[0]}" in caught.value.__notes__[0]
    journal = (kept[0] / "journal.jsonl").read_text().splitlines()
    assert len(journal) >= 5  # the 5 PNGs, and the .npy frames received before the sixth

    written.clear()
    monkeypatch.setattr(bag_frames, "imwrite", lambda path, pixels, level: (written.append(path),
                                                                                real(path, pixels, level)))
    summary = convert_bag(make_config(bag, out, workers=1))
    assert len(written) == 12 + 5 - 5  # RGB and tof frames are PNGs; the 5 finished ones are not written again
    assert f"resumed: {len(journal)} frames were written by an interrupted run ({kept[0]})" in summary.notes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    layout, reference = read_layout(out), ros2[2]
    for track in (None, "tof", "lidar"):
        for a, b in zip(all_frames(layout, track), all_frames(reference, track), strict=True):
            assert (a.stem, a.timestamp) == (b.stem, b.timestamp)
            path_a = a.image_path if track is None else a.depth_path
            path_b = b.image_path if track is None else b.depth_path
            assert path_a.read_bytes() == path_b.read_bytes()
    for a, b in zip(all_frames(layout), all_frames(reference), strict=True):
        np.testing.assert_array_equal(a.c2w, b.c2w)


def test_writer_threads_give_the_same_files(tmp_path, ros2):
    _, layout = convert(tmp_path, workers=3)
    for a, b in zip(all_frames(layout), all_frames(ros2[2]), strict=True):
        assert a.image_path.read_bytes() == b.image_path.read_bytes()


def test_command_line_sources(tmp_path, capsys):
    legacy = ["--raw", "r", "--out", "o", "--pose-convention", "drb"]
    assert type(convert_script.parse(legacy)).__name__ == "ConvertConfig"  # the command line of earlier versions
    assert convert_script.parse(["folder", *legacy]) == convert_script.parse(legacy)
    config = convert_script.parse(["bag", "--bag", "b", "--out", "o", "--rgb-topic", "/c", "--tf", "map", "cam",
                                   "--pose-convention", "opencv-enu", "--depth-time-offset", "tof", "0.03"])
    assert isinstance(config, BagConfig) and config.tf == ("map", "cam") and config.depth_time_offset == {"tof": 0.03}
    with pytest.raises(SystemExit):
        convert_script.parse(["--help"])
    assert "folder" in capsys.readouterr().out


# --- LiDAR tracks from PointCloud2 topics -----------------------------------------------------

LIDAR_RIG = Rig(clouds=("ouster", "velodyne"))
LIDAR_ARGS = ["--lidar-topic", "/ouster/points=ouster", "--lidar-topic", "/velodyne_points"]
"""The Ouster's track named, the Velodyne's derived from its topic (velodyne_points)."""
TRACKS = {"ouster": "ouster", "velodyne": "velodyne_points"}


def bag_command(bag: Path, out: Path, *extra: str) -> List[str]:
    return ["bag", "--bag", str(bag), "--out", str(out), "--rgb-topic", "/cam/color/image_raw", "--depth-topic", "tof",
            "/tof/depth/image_raw", "--pose-topic", "/camera_pose", "--pose-convention", "opencv-enu", *extra]


def scans(layout, track: str):
    return sorted((s for split in layout.splits.values() for s in split.lidar.get(track, [])), key=lambda s: s.timestamp)


@pytest.fixture(scope="module")
def lidar(tmp_path_factory):
    """The rig with two LiDARs in a ROS 2 bag, converted by the command line; extrinsics from /tf_static."""
    tmp = tmp_path_factory.mktemp("lidar")
    bag = write_rig_bag(tmp / "rig", LIDAR_RIG)
    summary = convert_script.main(convert_script.parse(bag_command(bag, tmp / "out", *LIDAR_ARGS)))
    return tmp, summary, read_layout(tmp / "out")


def test_lidar_scans_round_trip(lidar):
    """Points are float32 in the cloud and in the file: x, y, z equal exactly; t is the float32 nearest the
    exact time (Ouster: uint32 ns * 1e-9; Velodyne: its float32 seconds), so it is compared exactly too."""
    tmp, summary, layout = lidar
    assert summary.counts["train"]["ouster"] == 8 and summary.counts["val"]["ouster"] == 1
    assert summary.counts["train"]["velodyne_points"] == 6 and summary.counts["val"]["velodyne_points"] == 1
    for kind, times in (("ouster", OUSTER_T), ("velodyne", VELODYNE_T)):
        track = scans(layout, TRACKS[kind])
        assert [s.stem for s in track] == [stem_of(ns(t)) for t in times]
        assert [s.timestamp for s in track] == [ns(t) * 1e-9 for t in times]  # header stamps, LiDAR clock
        for k, scan in enumerate(track):
            assert np.load(scan.points_path).dtype == np.float32
            np.testing.assert_array_equal(load_lidar_points(scan), expected_scan(kind, k).astype(np.float64))
    assert (tmp / "out" / "val" / "lidar_to_camera_ouster.txt").is_file()
    assert not [p.name for p in tmp.iterdir() if p.name.startswith(".")]  # no staging or resumable folder left


def test_lidar_extrinsic_from_tf_static_and_from_the_flag_agree(lidar, tmp_path):
    """The same clouds in a ROS 1 bag, extrinsics from --lidar-to-camera (optical axes, as --pose-convention
    opencv-enu says): the same scan files, and lidar_to_camera files equal within EXTRINSIC_TOLERANCE."""
    reference_out, reference = lidar[0] / "out", lidar[2]
    bag = write_rig_bag(tmp_path / "rig.bag", Rig(ros=1, clouds=("ouster", "velodyne"), cloud_tf=False))
    flags = ["--lidar-to-camera", "ouster", *map(str, tq(camera_from_lidar(BASE_FROM_OUSTER))),
             "velodyne_points", *map(str, tq(camera_from_lidar(BASE_FROM_VELODYNE)))]
    convert_script.main(convert_script.parse(bag_command(bag, tmp_path / "out", *LIDAR_ARGS, *flags)))
    layout = read_layout(tmp_path / "out")
    opengl_from_opencv = np.diag([1.0, -1.0, -1.0, 1.0])
    for kind, base_from_lidar in (("ouster", BASE_FROM_OUSTER), ("velodyne", BASE_FROM_VELODYNE)):
        track = TRACKS[kind]
        for split in ("train", "val"):
            name = f"{split}/lidar_to_camera_{track}.txt"
            from_flag, from_tf = np.loadtxt(tmp_path / "out" / name), np.loadtxt(reference_out / name)
            np.testing.assert_allclose(from_flag, from_tf, rtol=0, atol=EXTRINSIC_TOLERANCE)
            np.testing.assert_allclose(from_tf, opengl_from_opencv @ camera_from_lidar(base_from_lidar), rtol=0,
                                       atol=EXTRINSIC_TOLERANCE)
        for a, b in zip(scans(layout, track), scans(reference, track), strict=True):
            assert a.points_path.read_bytes() == b.points_path.read_bytes()
            np.testing.assert_array_equal(a.lidar_to_camera, np.loadtxt(tmp_path / "out" / "train" /
                                                                        f"lidar_to_camera_{track}.txt"))


def test_lidar_notes_say_how_times_and_extrinsics_were_read(lidar):
    notes = lidar[1].notes
    assert ("LiDAR track ouster: 9 clouds of /ouster/points, point times from field 't' (uint32, nanoseconds after "
            "the stamp), extrinsic from /tf_static camera_optical -> os_sensor") in notes
    assert ("LiDAR track velodyne_points: 7 clouds of /velodyne_points, point times from field 'time' (float32, "
            "seconds after the stamp), extrinsic from /tf_static camera_optical -> velodyne") in notes
    record = json.loads((lidar[0] / "out" / MANIFEST_FILE).read_text())
    assert record["lidar_topic"] == {"ouster": "/ouster/points", "velodyne_points": "/velodyne_points"}


def test_a_cloud_without_a_time_field_converts_with_one_warning(tmp_path):
    rig = Rig(clouds=("untimed",))
    with pytest.warns(ConvertWarning) as caught:
        summary, layout = convert(tmp_path, rig, lidar_topic=("/mid360/points=mid360",))
    untimed = [str(w.message) for w in caught if "no per-point time field" in str(w.message)]
    assert untimed == ["LiDAR topic /mid360/points: 5 of 5 clouds have no per-point time field (fields: x, y, z, "
                       "intensity); their points are treated as taken at the cloud's stamp (t = 0), so the sweep "
                       "cannot be deskewed (--lidar-time-field NAME names a time field)"]
    for k, scan in enumerate(scans(layout, "mid360")):
        np.testing.assert_array_equal(load_lidar_points(scan), expected_scan("untimed", k).astype(np.float64))
    assert "point times from none (t = 0)" in summary.notes[-1]


def test_a_corrupt_cloud_is_an_error_naming_bag_topic_and_message(tmp_path):
    rig = Rig(clouds=("ouster",), corrupt_cloud=3)
    bag = write_rig_bag(bag_path(tmp_path, rig), rig)
    with pytest.raises(RawDataError) as caught:
        convert_bag(make_config(bag, tmp_path / "out", rig, lidar_topic=("/ouster/points",)))
    message = str(caught.value)
    assert str(bag) in message and "topic /ouster/points (9 messages), message 4" in message
    assert f"the cloud stamped {stem_of(ns(OUSTER_T[3]))} s: " in message
    row_step = 8 * (4 * 4 + 4 + 2 + 6) + 16
    assert f"{4 * row_step - 1} bytes of data for 4 rows of row_step {row_step}" in message
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("rig, changes, says", [
    (Rig(clouds=("ouster",), cloud_tf=False), {"lidar_topic": ("/ouster/points",)},
     "LiDAR topic /ouster/points (track ouster_points) has no extrinsic: the bag has no /tf_static; give "
     "--lidar-to-camera ouster_points tx ty tz qx qy qz qw"),
    (Rig(clouds=("ouster",)), {"lidar_topic": ("/ouster/points",), "lidar_to_camera": {"os": (0,) * 6 + (1,)}},
     "--lidar-to-camera names track 'os', but --lidar-topic has no such track (tracks: ouster_points)"),
    (Rig(clouds=("ouster",)), {"lidar_topic": ("/ouster/points=lidar",)},
     "track name 'lidar' is also a --depth-topic track"),
    (Rig(clouds=("ouster",)), {"lidar_topic": ("/camera_pose",)}, "topic /camera_pose is geometry_msgs/msg/PoseStamped"),
], ids=["no-extrinsic", "unknown-track", "depth-track-name", "not-a-cloud"])
def test_bad_lidar_options_are_named(tmp_path, rig, changes, says):
    bag = write_rig_bag(bag_path(tmp_path, rig), rig)
    with pytest.raises(RawDataError, match=re.escape(says)):
        convert_bag(make_config(bag, tmp_path / "out", rig, **changes))


def test_an_interrupted_lidar_conversion_resumes(tmp_path, monkeypatch, lidar):
    bag = write_rig_bag(tmp_path / "rig", LIDAR_RIG)
    config = make_config(bag, tmp_path / "out", LIDAR_RIG, depth_topic={"tof": "/tof/depth/image_raw"},
                         lidar_topic=("/ouster/points=ouster", "/velodyne_points"))
    real, saved = bag_lidar.save_npy_atomically, []

    def interrupted_at_the_fifth_scan(path, array):
        if len(saved) == 4:
            raise KeyboardInterrupt
        saved.append(path)
        real(path, array)

    monkeypatch.setattr(bag_lidar, "save_npy_atomically", interrupted_at_the_fifth_scan)
    with pytest.raises(KeyboardInterrupt):
        convert_bag(config)
    monkeypatch.setattr(bag_lidar, "save_npy_atomically", lambda path, array: (saved.append(path), real(path, array)))
    summary = convert_bag(config)
    assert len(saved) == 9 + 7  # each scan written once
    assert any(note.startswith("resumed: ") for note in summary.notes)
    layout = read_layout(tmp_path / "out")
    for track in TRACKS.values():
        for a, b in zip(scans(layout, track), scans(lidar[2], track), strict=True):
            assert a.stem == b.stem and a.points_path.read_bytes() == b.points_path.read_bytes()


# --- per-point times: the unit and absolute-time rule (decode_cloud on messages built here) -----------


def cloud_message(columns: Dict[str, np.ndarray], stamp_ns: int, height: int = 1, **layout):
    """A ROS 2 PointCloud2 message (no bag: a _Bag without its writer builds it)."""
    from rosbags.typesys import Stores, get_typestore

    messages = _Bag.__new__(_Bag)
    messages.ros, messages.store = 2, get_typestore(Stores.ROS2_HUMBLE)
    return messages.cloud(stamp_ns, "lidar", columns, height, len(next(iter(columns.values()))) // height, **layout)


def _xyz(n: int) -> Dict[str, np.ndarray]:
    return {axis: np.arange(1, n + 1, dtype=np.float32) * scale for axis, scale in zip("xyz", (1.0, 2.0, -0.5))}


STAMP = T0_NS + 123_456_789
REL = np.array([-0.05, 0.0, 0.01, 0.04])
"""Seconds after STAMP of four points."""


@pytest.mark.parametrize("field_name, values, says, tolerance", [
    ("timestamp", STAMP * 1e-9 + REL, "field 'timestamp' (float64, absolute seconds: the stamp subtracted)", 3e-7),
    ("timestamp", STAMP + REL * 1e9, "field 'timestamp' (float64, absolute nanoseconds: the stamp subtracted)", 3e-7),
    ("t", np.round(REL * 1e9).astype(np.int32), "field 't' (int32, nanoseconds after the stamp)", 0),
    ("offset_time", np.round((REL + 0.05) * 1e9).astype(np.uint32), "field 'offset_time' (uint32, nanoseconds after", 0),
    ("time", REL.astype(np.float64), "field 'time' (float64, seconds after the stamp)", 0),
], ids=["hesai-seconds", "livox-float-ns", "int32-ns", "livox-offset_time", "velodyne-float64"])
def test_point_time_rules(field_name, values, says, tolerance):
    """Float64 absolute seconds resolve 0.24 us near 1.7e9 s (tolerance 3e-7 s); integer ns and relative
    seconds convert exactly (to the float32 of the file)."""
    scan = decode_cloud(cloud_message({**_xyz(4), field_name: values}, STAMP), STAMP)
    assert scan.time.startswith(says)
    expected = REL + (0.05 if field_name == "offset_time" else 0.0)
    np.testing.assert_allclose(scan.points[:, 3], expected.astype(np.float32), rtol=0, atol=max(tolerance, 4e-9))


def test_cloud_decoding_rules():
    xyz = _xyz(6)
    # Big-endian float64 x, y, z in a 2x3 organised cloud with padding: read, cast to float32.
    big = decode_cloud(cloud_message({a: v.astype(np.float64) for a, v in xyz.items()}, STAMP, height=2, point_pad=3,
                                     row_pad=5, bigendian=True), STAMP)
    np.testing.assert_array_equal(big.points[:, :3], np.stack(list(xyz.values()), axis=1))
    assert big.time is None and not big.points[:, 3].any()
    # Livox carries offset_time and timestamp: offset_time (earlier in TIME_FIELDS) wins; --lidar-time-field picks.
    both = {**xyz, "offset_time": np.arange(6, dtype=np.uint32) * 1000, "timestamp": np.full(6, STAMP * 1e-9 + 0.5)}
    assert "offset_time" in decode_cloud(cloud_message(both, STAMP), STAMP).time
    picked = decode_cloud(cloud_message(both, STAMP), STAMP, time_field="timestamp")
    np.testing.assert_allclose(picked.points[:, 3], 0.5, atol=3e-7)
    # Simulation time (stamp 100 s): relative seconds stay relative (nearer to 0 than to the stamp).
    sim = decode_cloud(cloud_message({**xyz, "time": np.full(6, 0.08, np.float32)}, 100 * 10**9), 100 * 10**9)
    np.testing.assert_array_equal(sim.points[:, 3], np.float32(0.08))
    # A float field in milliseconds reads as seconds: 40 s from the stamp is refused, naming the field.
    with pytest.raises(ValueError, match=r"point times of field 'time' \(float32, seconds after the stamp\) reach 40 s"):
        decode_cloud(cloud_message({**xyz, "time": np.full(6, 40.0, np.float32)}, STAMP), STAMP)
    with pytest.raises(ValueError, match=r"no field 'stamp' \(--lidar-time-field\); fields: x, y, z"):
        decode_cloud(cloud_message(xyz, STAMP), STAMP, time_field="stamp")
    with pytest.raises(ValueError, match=r"the cloud has no field z \(fields: x, y, t\)"):
        decode_cloud(cloud_message({"x": xyz["x"], "y": xyz["y"], "t": np.zeros(6, np.uint32)}, STAMP), STAMP)
    with pytest.raises(ValueError, match="field 'x' is int16"):
        decode_cloud(cloud_message({**xyz, "x": np.ones(6, np.int16)}, STAMP), STAMP)


def test_lidar_command_line():
    config = convert_script.parse(["bag", "--bag", "b", "--out", "o", "--rgb-topic", "/c", "--tf", "map", "cam",
                                   "--pose-convention", "opencv-enu", "--lidar-topic", "/os/points=os",
                                   "--lidar-topic", "/hesai/pandar", "--lidar-time-field", "stamp_ns",
                                   "--lidar-to-camera", "os", "0.1", "-0.2", "0", "0", "0", "0", "1"])
    assert config.lidar_topic == ("/os/points=os", "/hesai/pandar") and config.lidar_time_field == "stamp_ns"
    assert config.lidar_to_camera == {"os": (0.1, -0.2, 0.0, 0.0, 0.0, 0.0, 1.0)}
    assert bag_lidar.lidar_tracks(config.lidar_topic) == {"os": "/os/points", "hesai_pandar": "/hesai/pandar"}
