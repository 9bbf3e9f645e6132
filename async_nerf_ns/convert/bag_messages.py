"""What the bag converter takes from one deserialised ROS message (rosbags' message classes).

Images are decoded with rosbags-image (every sensor_msgs/Image encoding it knows, byte order, colour
conversion); compressed JPEG/PNG frames are kept as they are (no re-encoding, no quality loss).
Pose messages give a 4x4 world-from-frame matrix; /tf messages give their transforms. Field names
differ between ROS 1 (`K`, `D`) and ROS 2 (`k`, `d`): both are read. Errors are `MessageError`s with
the problem only; the converter adds the bag, topic and message count.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image

from async_nerf_ns.convert.frame_poses import matrix_from_tq

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "geometry_msgs/msg/TransformStamped",
    "nav_msgs/msg/Odometry",
)
TF_TYPES = ("tf2_msgs/msg/TFMessage", "tf/msg/tfMessage")
TF_TOPIC, TF_STATIC_TOPIC = "/tf", "/tf_static"
DEPTH_ENCODINGS = {"16UC1": np.uint16, "mono16": np.uint16, "32FC1": np.float32}
"""Depth encodings read: 16-bit millimetres (REP 118's alternative) and float32 metres (REP 118)."""
COMPRESSED_DEPTH_HEADER = 12
"""image_transport's compressedDepth puts a 12-byte header (format, two float params) before the PNG."""
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8", b"\x89PNG\r\n\x1a\n"
RGB_FILE_MODES = ("RGB", "RGBA", "L", "P", "LA")
"""PIL modes of compressed RGB frames the layout takes as they are."""


class MessageError(ValueError):
    """A message the converter cannot use; the text says why (the caller names bag and topic)."""


def stamp_ns(message: Any) -> int:
    """The header stamp in nanoseconds."""
    stamp = message.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stem_of(ns: int) -> str:
    """A file stem from nanoseconds: 'SECONDS.NNNNNNNNN' (reads back as the time in seconds)."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _unpadded(message: Any) -> Any:
    """The message with row padding (step > width * pixel size) removed; rosbags-image assumes none."""
    from rosbags.image.image import to_cvtype

    _, _, typestr, channels = to_cvtype(message.encoding)
    row = message.width * np.dtype(typestr).itemsize * channels
    if message.encoding in ("nv12", "nv21") or message.step in (0, row):
        return message
    if message.step < row:
        raise MessageError(f"step {message.step} is less than a row of {message.width} '{message.encoding}' pixels")
    data = np.asarray(message.data, dtype=np.uint8)[: message.step * message.height]
    rows = data.reshape(message.height, message.step)[:, :row]
    return dataclasses.replace(message, data=np.ascontiguousarray(rows).reshape(-1), step=row)


def _image_array(message: Any, color_space: Optional[str]) -> np.ndarray:
    from rosbags.image import ImageError, image_to_cvimage

    if message.width <= 0 or message.height <= 0:
        raise MessageError(f"image of {message.width}x{message.height} pixels")
    try:
        return image_to_cvimage(_unpadded(message), color_space)
    except (ImageError, ValueError, TypeError) as error:  # unknown encoding, or data of the wrong length
        raise MessageError(f"encoding '{message.encoding}' cannot be read ({error})") from error


@dataclass
class RgbPayload:
    """An RGB frame as it will be written: encoded bytes (compressed frames), or pixels (raw frames)."""

    size: Tuple[int, int]
    """(W, H)."""
    suffix: str
    encoded: Optional[bytes] = None
    decode: Optional[Callable[[], np.ndarray]] = None
    """Raw frames: the uint8 (H, W, 3) pixels in OpenCV's channel order, decoded when called (in a writer
    thread: the colour conversion is much of the work)."""


def rgb_payload(message: Any, msgtype: str) -> RgbPayload:
    """A raw Image (any encoding rosbags-image converts to bgr8) or a JPEG/PNG CompressedImage. Checks what
    can be checked without decoding: the encoding is known, the data holds every row."""
    if msgtype == IMAGE:
        from rosbags.image import ImageError
        from rosbags.image.image import to_cvtype

        try:
            _, _, typestr, channels = to_cvtype(message.encoding)
        except ImageError as error:
            raise MessageError(f"encoding '{message.encoding}' cannot be read ({error})") from error
        if message.width <= 0 or message.height <= 0:
            raise MessageError(f"image of {message.width}x{message.height} pixels")
        row = message.width * np.dtype(typestr).itemsize * channels
        if message.encoding not in ("nv12", "nv21") and len(message.data) < max(message.step, row) * message.height:
            raise MessageError(f"{len(message.data)} bytes of data for {message.height} rows of {max(message.step, row)}")
        return RgbPayload(size=(int(message.width), int(message.height)), suffix=".png",
                          decode=lambda: _image_array(message, "bgr8"))
    data = bytes(message.data)
    suffix = ".jpg" if data.startswith(JPEG_MAGIC) else ".png" if data.startswith(PNG_MAGIC) else None
    if suffix is None:
        raise MessageError(f"CompressedImage format '{message.format}' is not JPEG or PNG")
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            size, mode = image.size, image.mode
    except (OSError, ValueError) as error:
        raise MessageError(f"CompressedImage ({message.format}) cannot be read ({error})") from error
    if mode not in RGB_FILE_MODES:
        raise MessageError(f"CompressedImage ({message.format}) has pixel mode {mode}; expected 8-bit colour or grey")
    return RgbPayload(size=size, suffix=suffix, encoded=data)


@dataclass
class DepthPayload:
    """A depth frame as it will be written: 16-bit PNG bytes, or a uint16 / float32 array."""

    size: Tuple[int, int]
    encoding: str
    """'16UC1' (millimetres) or '32FC1' (metres)."""
    png: Optional[bytes] = None
    array: Optional[np.ndarray] = None


def depth_payload(message: Any, msgtype: str) -> DepthPayload:
    """A 16UC1/mono16/32FC1 Image, or a compressedDepth (or plain 16-bit PNG) CompressedImage."""
    if msgtype == IMAGE:
        if message.encoding not in DEPTH_ENCODINGS:
            raise MessageError(
                f"depth encoding '{message.encoding}' cannot be read; expected {', '.join(DEPTH_ENCODINGS)}"
            )
        array = _image_array(message, None)
        if array.dtype != DEPTH_ENCODINGS[message.encoding] or array.ndim != 2:
            raise MessageError(f"depth image of encoding '{message.encoding}' decodes to {array.dtype} {array.shape}")
        encoding = "32FC1" if array.dtype == np.float32 else "16UC1"
        return DepthPayload(size=(array.shape[1], array.shape[0]), encoding=encoding, array=array)
    data = bytes(message.data)
    if "compresseddepth" in message.format.lower().replace(" ", ""):
        if not message.format.strip().startswith(("16UC1", "mono16")):
            raise MessageError(f"compressedDepth format '{message.format}' cannot be read; only 16UC1 PNGs can")
        data = data[COMPRESSED_DEPTH_HEADER:]
    if not data.startswith(PNG_MAGIC):
        raise MessageError(f"depth CompressedImage format '{message.format}' is not a 16-bit PNG")
    try:
        with Image.open(io.BytesIO(data)) as image:
            size, mode = image.size, image.mode
    except (OSError, ValueError) as error:
        raise MessageError(f"depth CompressedImage cannot be read ({error})") from error
    if not (mode.startswith("I;16") or mode == "I"):
        raise MessageError(f"depth PNG has pixel mode {mode}; expected 16-bit grey (millimetres)")
    return DepthPayload(size=size, encoding="16UC1", png=data)


@dataclass
class CameraIntrinsics:
    """What a sensor_msgs/CameraInfo says about a pinhole camera."""

    size: Tuple[int, int]
    intrinsics: np.ndarray
    """fx, fy, cx, cy (4,)."""
    distortion_model: str
    distortion: np.ndarray


def camera_info(message: Any) -> CameraIntrinsics:
    """Size, K and distortion of a CameraInfo (ROS 1 `K`/`D` or ROS 2 `k`/`d`)."""
    k = np.asarray(getattr(message, "k", getattr(message, "K", ())), dtype=np.float64).reshape(-1)
    d = np.asarray(getattr(message, "d", getattr(message, "D", ())), dtype=np.float64).reshape(-1)
    if k.shape != (9,) or not np.isfinite(k).all() or k[0] <= 0 or k[4] <= 0:
        raise MessageError(f"camera matrix K is not calibrated (fx, fy > 0): {k.tolist()}")
    return CameraIntrinsics(size=(int(message.width), int(message.height)),
                            intrinsics=np.array([k[0], k[4], k[2], k[5]]),
                            distortion_model=str(message.distortion_model), distortion=d)


def _rigid(translation: Any, rotation: Any) -> np.ndarray:
    quaternion = [rotation.x, rotation.y, rotation.z, rotation.w]
    norm = float(np.linalg.norm(quaternion))
    if not np.isfinite(norm) or norm < 1e-6:
        raise MessageError(f"orientation {quaternion} is not a rotation")
    values = [translation.x, translation.y, translation.z]
    if not np.isfinite(values).all():
        raise MessageError(f"position {values} is not finite")
    return matrix_from_tq(values, np.asarray(quaternion) / norm)


def pose_matrix(message: Any, msgtype: str) -> np.ndarray:
    """4x4 world-from-frame of a PoseStamped, PoseWithCovarianceStamped, Odometry or TransformStamped."""
    if msgtype == "geometry_msgs/msg/TransformStamped":
        return _rigid(message.transform.translation, message.transform.rotation)
    pose = message.pose.pose if msgtype in ("nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseWithCovarianceStamped") \
        else message.pose
    return _rigid(pose.position, pose.orientation)


def frame_name(name: str) -> str:
    """A TF frame name without the leading '/' that ROS 1 allowed."""
    return name.lstrip("/")


def tf_transforms(message: Any) -> Iterator[Tuple[str, str, int, np.ndarray]]:
    """(parent, child, stamp ns, 4x4 parent-from-child) of each transform of a TF message."""
    for transform in message.transforms:
        yield (frame_name(transform.header.frame_id), frame_name(transform.child_frame_id), stamp_ns(transform),
               _rigid(transform.transform.translation, transform.transform.rotation))


def topic_list(topics: List[Tuple[str, str]], types: Tuple[str, ...]) -> str:
    """'a (Type), b (Type)' of the topics of the given types, or 'none'."""
    found = [f"{topic} ({msgtype.split('/')[-1]})" for topic, msgtype in sorted(topics) if msgtype in types]
    return ", ".join(found) or "none"
