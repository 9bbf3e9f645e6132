"""A bag's sensor_msgs/PointCloud2 topics as LiDAR tracks (docs/DATA_LAYOUT.md, "LiDAR tracks").

Each cloud is decoded with numpy alone: a structured dtype of the fields it needs (x, y, z and the
per-point time) at their offsets, `point_step` apart, in the message's byte order, viewed over the
`height` rows of `row_step` bytes (organised or not). Returns without a number (NaN points of an
organised cloud) or at the origin (a beam without a return) are dropped; the rest is written as one
(N, 4) float32 `.npy` per scan, x, y, z in the LiDAR frame (metres) and t in seconds after the
message's header stamp, atomically into the resumable folder (bag_convert.py journals it).

Per-point times (`point_times`): the field named by --lidar-time-field, else the first of
`TIME_FIELDS` the cloud has. Integer fields are nanoseconds, float fields seconds. A field whose
values (their median) lie within a day of the header stamp, and nearer to it than to 0, is absolute
and the stamp is subtracted; a float field is also tried as absolute nanoseconds (Livox's float64
`timestamp`). Anything else is relative to the stamp. A cloud without a time field gets t = 0
(the stream counts it: one warning per topic).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np

from async_nerf_ns.convert.bag_frames import FrameStream
from async_nerf_ns.convert.bag_messages import MessageError, frame_name, stamp_ns, stem_of

POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
POINT_FIELD_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
"""sensor_msgs/PointField datatype -> numpy type code (INT8 ... FLOAT64)."""
TIME_FIELDS = ("t", "time", "offset_time", "timestamp")
"""Per-point time fields looked for, in this order: Ouster `t` (uint32 ns after the stamp), Velodyne
`time` (float32 s after the stamp), Livox `offset_time` (uint32 ns after the stamp), Hesai / RoboSense /
Livox `timestamp` (float64 absolute seconds, or Livox's absolute nanoseconds)."""
ABSOLUTE_WINDOW_S = 86400.0
"""A time field whose values lie within this many seconds of the header stamp (and nearer to it than to
0) holds absolute times."""
MAX_POINT_TIME_S = 10.0
"""A point time further than this from its scan's stamp means the field is not a per-point time in the
units the rule gives (a sweep lasts ~0.1 s): an error rather than a scan smeared along the trajectory."""


@dataclass
class CloudScan:
    """One decoded cloud."""

    points: np.ndarray
    """float32 (N, 4): x, y, z (metres, LiDAR frame), t (seconds after the header stamp); returns only."""
    time: Optional[str]
    """How t was read ("field 't' (uint32, nanoseconds after the stamp)"); "" for a cloud without points, None
    without a time field."""
    fields: str
    """The cloud's field names, for messages."""


def _field_type(cloud: Any, name: str, fields: Dict[str, Any]) -> np.dtype:
    point_field = fields[name]
    code = POINT_FIELD_TYPES.get(int(point_field.datatype))
    if code is None:
        raise MessageError(f"field '{name}' has datatype {point_field.datatype}, not a sensor_msgs/PointField type "
                           "(1..8)")
    if int(point_field.count) > 1:
        raise MessageError(f"field '{name}' has {point_field.count} values per point; expected one")
    dtype = np.dtype(code).newbyteorder(">" if cloud.is_bigendian else "<")
    if int(point_field.offset) + dtype.itemsize > int(cloud.point_step):
        raise MessageError(f"field '{name}' (offset {point_field.offset}, {dtype.itemsize} bytes) does not fit in "
                           f"point_step {cloud.point_step}")
    return dtype


def _time_field(fields: Dict[str, Any], override: Optional[str]) -> Optional[str]:
    if override is not None:
        if override not in fields:
            raise MessageError(f"no field '{override}' (--lidar-time-field); fields: {', '.join(fields)}")
        return override
    return next((name for name in TIME_FIELDS if name in fields), None)


def point_times(values: np.ndarray, name: str, header_ns: int) -> Tuple[np.ndarray, str]:
    """(t float64 seconds after the stamp, how they were read) from a time field's values (the module's rule)."""
    integer = values.dtype.kind in "iu"
    what = f"field '{name}' ({values.dtype.name}"
    reference = float(np.median(values))
    stamp_s = header_ns * 1e-9
    for scale, unit in (((1e-9, "nanoseconds"),) if integer else ((1.0, "seconds"), (1e-9, "nanoseconds"))):
        value_s = reference * scale
        if abs(value_s - stamp_s) < min(ABSOLUTE_WINDOW_S, abs(value_s)):
            if integer:
                times = (values.astype(np.int64) - header_ns) * 1e-9
            elif scale == 1.0:  # the whole seconds first: exact, then the float's own resolution
                seconds, nanoseconds = divmod(header_ns, 1_000_000_000)
                times = (values.astype(np.float64) - float(seconds)) - nanoseconds * 1e-9
            else:
                times = (values.astype(np.float64) - float(header_ns)) * 1e-9
            return times, f"{what}, absolute {unit}: the stamp subtracted)"
    unit = "nanoseconds" if integer else "seconds"
    return values.astype(np.float64) * (1e-9 if integer else 1.0), f"{what}, {unit} after the stamp)"


def decode_cloud(cloud: Any, header_ns: int, time_field: Optional[str] = None) -> CloudScan:
    """The returns of a PointCloud2 and their times relative to `header_ns` (its header stamp)."""
    fields: Dict[str, Any] = {}
    for point_field in cloud.fields:
        fields.setdefault(str(point_field.name), point_field)
    names = ", ".join(fields) or "none"
    missing = [axis for axis in "xyz" if axis not in fields]
    if missing:
        raise MessageError(f"the cloud has no field {', '.join(missing)} (fields: {names}); a LiDAR cloud needs "
                           "x, y, z")
    height, width = int(cloud.height), int(cloud.width)
    point_step, row_step = int(cloud.point_step), int(cloud.row_step)
    data = np.asarray(cloud.data, dtype=np.uint8).reshape(-1)
    if height * width and row_step < width * point_step:
        raise MessageError(f"row_step {row_step} is less than width {width} x point_step {point_step}")
    if data.size != height * row_step:
        raise MessageError(f"{data.size} bytes of data for {height} rows of row_step {row_step} "
                           f"({height * row_step} bytes; {height}x{width} points of {point_step} bytes)")
    time_name = _time_field(fields, time_field)
    used = ["x", "y", "z"] + ([time_name] if time_name is not None else [])
    types = {name: _field_type(cloud, name, fields) for name in used}
    for axis in "xyz":
        if types[axis].kind != "f":
            raise MessageError(f"field '{axis}' is {types[axis].name}; x, y, z must be float32 or float64 (metres)")
    if height * width == 0:
        return CloudScan(np.zeros((0, 4), dtype=np.float32), None if time_name is None else "", names)
    dtype = np.dtype({"names": used, "formats": [types[n] for n in used],
                      "offsets": [int(fields[n].offset) for n in used], "itemsize": point_step})
    points = np.ndarray((height, width), dtype=dtype, buffer=data, strides=(row_step, point_step)).reshape(-1)
    xyz = np.stack([points[axis].astype(np.float32) for axis in "xyz"], axis=1)
    keep = np.isfinite(xyz).all(axis=1) & (xyz != 0).any(axis=1)
    times = np.zeros(int(keep.sum()))
    how = None
    if time_name is not None:
        raw = points[time_name][keep]
        if raw.dtype.kind == "f":
            finite = np.isfinite(raw)
            keep[np.flatnonzero(keep)[~finite]] = False
            raw = raw[finite]
        times, how = point_times(raw, time_name, header_ns) if raw.size else (np.zeros(0), "")
        if times.size and np.abs(times).max() > MAX_POINT_TIME_S:
            raise MessageError(f"point times of {how} reach {np.abs(times).max():.4g} s from the scan's stamp; a sweep "
                               f"lasts well under {MAX_POINT_TIME_S:g} s, so this field is not a per-point time in these "
                               "units (--lidar-time-field NAME picks another field)")
    out = np.empty((int(keep.sum()), 4), dtype=np.float32)
    out[:, :3] = xyz[keep]
    out[:, 3] = times
    return CloudScan(out, how, names)


def save_npy_atomically(path: Path, array: np.ndarray) -> None:
    """np.save into a hidden file beside `path`, then renamed: a file at `path` is always whole."""
    partial = path.with_name(f".{path.name}.writing")
    with open(partial, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(partial, path)


@dataclass
class LidarStream(FrameStream):
    """One PointCloud2 topic being written as a LiDAR track (the journal and the pass treat it as a FrameStream)."""

    time_field: Optional[str] = None
    """--lidar-time-field."""
    frame_ids: Set[str] = field(default_factory=set)
    """The clouds' header frame_ids (one, for an extrinsic from /tf_static)."""
    time: Dict[int, Optional[str]] = field(default_factory=dict)
    """stamp -> how its times were read (None: no time field)."""
    untimed_fields: Optional[str] = None
    """The fields of a cloud without a time field, for the warning."""

    def journal_fields(self, stamp: int) -> Dict[str, Any]:
        return {"time": self.time[stamp]}

    def restore_fields(self, entry: Dict[str, Any], bag: Path, stamp: int) -> None:
        self._check_time(entry.get("time"), stamp)

    def _check_time(self, how: Optional[str], stamp: int) -> None:
        earlier = next(iter(self.time.values()), "unset")
        if earlier != "unset" and (earlier is None) != (how is None):
            this = "has no per-point time field" if how is None else f"has a time field ({how or 'no points'})"
            raise MessageError(f"the cloud at {stem_of(stamp)} s {this} but earlier ones "
                               f"{'have none' if earlier is None else 'have one'}")
        self.time[stamp] = how

    @property
    def untimed(self) -> int:
        return sum(how is None for how in self.time.values())

    def time_notes(self) -> List[str]:
        """How this track's point times were read (each distinct way, in order)."""
        return list(dict.fromkeys(how for how in self.time.values() if how))


def write_lidar_scan(stream: FrameStream, message: Any, stamp: int, bag: Path, png_compression: int) -> None:
    """Decodes the cloud and writes its scan (atomically); a write function of bag_convert's `_Frames.take`."""
    assert isinstance(stream, LidarStream)
    header = stamp_ns(message)
    try:
        scan = decode_cloud(message, header, stream.time_field)
    except MessageError as error:
        raise MessageError(f"the cloud stamped {stem_of(header)} s: {error}") from error
    stream._check_time(scan.time, stamp)
    if scan.time is None and stream.untimed_fields is None:
        stream.untimed_fields = scan.fields
    path = stream.folder / (stem_of(stamp) + ".npy")
    save_npy_atomically(path, scan.points)
    stream.frames[stamp] = path
    return None


def note_frame_id(stream: LidarStream, message: Any) -> None:
    stream.frame_ids.add(frame_name(str(message.header.frame_id)))


def track_name(topic: str) -> str:
    """A LiDAR track's name from its topic: the name's segments joined by '_' (/ouster/points -> ouster_points)."""
    parts = [part for part in topic.strip("/").split("/") if part]
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in "_".join(parts))


def lidar_tracks(specs: Tuple[str, ...]) -> Dict[str, str]:
    """track -> topic from --lidar-topic values TOPIC or TOPIC=TRACK (ROS names have no '='); in given order.
    Raises ValueError for a repeated topic or track."""
    tracks: Dict[str, str] = {}
    for spec in specs:
        topic, _, track = spec.partition("=")
        track = track or track_name(topic)
        if not topic:
            raise ValueError(f"--lidar-topic '{spec}': no topic (TOPIC or TOPIC=TRACK)")
        if topic in tracks.values():
            raise ValueError(f"--lidar-topic {topic} is given twice")
        if track in tracks:
            raise ValueError(f"--lidar-topic: topics {tracks[track]} and {topic} both make track '{track}'; "
                             "name one with TOPIC=TRACK")
        tracks[track] = topic
    return tracks
