"""`convert_bag`: a ROS 1 or ROS 2 bag into the dataset layout, in one streaming pass.

The bag is read with rosbags (pure Python, no ROS install), message by message, only the topics the
conversion uses: each RGB and depth frame is checked and written into the resumable folder
`.OUT.KEY.partial/` beside OUT as it comes (PNG encoding on writer threads, at most two frames per
thread in flight, so memory does not grow with the bag's bytes); camera infos, pose messages and /tf
transforms are kept (small). After the pass the RGB frames get their poses from the chosen source
(a pose topic, a TF chain, or a TUM / COLMAP / transforms.json file) at their stamps, frames without
a pose are left out, depth tracks are put on the RGB clock (--depth-time-offset), and the common
writer (`writer.write_dataset`) links the frames into the split folders of a staging folder and
writes the metadata; the result is validated and moved to OUT only when complete
(`writer.publish`). A journal in the resumable folder lists the frames finished; an interrupted
conversion leaves the folder and the same command goes on from it.

Stamps are the messages' header stamps (the sensor's capture time) unless --stamp receive asks for
the bag's receive time; depth frames keep their own stamps.

PointCloud2 topics (--lidar-topic) are LiDAR tracks (convert/bag_lidar.py): each cloud is decoded and
written as one scan file as it comes, journaled like the frames; after the pass each track gets its
extrinsic (--lidar-to-camera, else the /tf_static chain from the camera's frame to the clouds' frame)
and is written with its scans' stamps (the LiDAR's clock) beside the depth tracks."""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple, Union

import numpy as np

from async_nerf_ns.convert.bag_messages import (
    CAMERA_INFO,
    IMAGE_TYPES,
    POSE_TYPES,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    TF_TYPES,
    CameraIntrinsics,
    MessageError,
    camera_info,
    frame_name,
    pose_matrix,
    stamp_ns,
    stem_of,
    tf_transforms,
    topic_list,
)
from async_nerf_ns.convert.bag_frames import (
    FrameJournal,
    FrameStream,
    FrameWriters,
    NoJournal,
    message_errors,
    worker_count,
    write_depth_frame,
    write_rgb_frame,
)
from async_nerf_ns.convert.bag_lidar import POINT_CLOUD2, LidarStream, lidar_tracks, note_frame_id, write_lidar_scan
from async_nerf_ns.convert.config import BagConfig, FramesConfig
from async_nerf_ns.convert.convert import check_rgb_count, check_val_every
from async_nerf_ns.convert.errors import RawDataError
from async_nerf_ns.convert.frame_poses import (
    ConvertWarning,
    PoseCoverage,
    TimedPoses,
    camera_poses,
    matrix_from_tq,
    poses_for_frames,
    select_frames,
)
from async_nerf_ns.convert.masks import attach_masks
from async_nerf_ns.convert.output_folder import OutputFolderError, discard, files_to_replace, staging_folder
from async_nerf_ns.convert.poses import OPENCV_TO_OPENGL_CAMERA, raw_c2w_to_drb
from async_nerf_ns.convert.tf_chain import TfError, TfTree
from async_nerf_ns.convert.trajectory_files import read_pose_file
from async_nerf_ns.convert.writer import (
    TOOL_NAME,
    ConversionSummary,
    OutFrame,
    OutLidarTrack,
    OutStream,
    publish,
    summary_record,
    write_dataset,
)
from async_nerf_ns.files.keys import content_key, file_identity
from async_nerf_ns.layout import RGB_POSE_GT_TRACK, LayoutError

RESUMABLE_SUFFIX = ".partial"
"""Frames are written into `.OUT.KEY.partial/` beside OUT (KEY: the bag's files and the options that decide
the frame files); an interrupted conversion leaves it there and the same command resumes from it."""
DISTORTION_TOLERANCE = 1e-6
"""CameraInfo distortion coefficients below this are taken as zero (no warning)."""
ZERO_STAMP = "has header stamp 0 (its driver does not set stamps); pass --stamp receive to use the bag's receive times"
"""A frame's error, with header stamps, where its driver left them 0 (convert_bag)."""
ZERO_STAMP_SHORT = "has header stamp 0; pass --stamp receive"
"""The same error in extract_frames."""


def _open_bag(path: Path):
    try:
        import rosbags.image  # noqa: F401  (decodes the images; needs OpenCV, which nerfstudio brings)
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as error:
        raise RawDataError(path, f"reading bags needs rosbags and rosbags-image ({error}): "
                           "pip install 'async-nerf-ns[capture]'") from error

    if not path.exists():
        raise RawDataError(path, "bag does not exist (a ROS 1 .bag file or a ROS 2 bag folder)")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        reader.open()
    except Exception as error:  # rosbags raises its own error types per format; all mean "not a readable bag"
        raise RawDataError(path, f"cannot be read as a ROS 1 or ROS 2 bag ({type(error).__name__}: {error})") from error
    return reader


def _info_topic(image_topic: str) -> str:
    """camera_info beside an image topic: /a/b/image_raw[/compressed|/compressedDepth] -> /a/b/camera_info."""
    parts = image_topic.rstrip("/").split("/")
    if parts[-1] in ("compressed", "compressedDepth", "theora"):
        parts = parts[:-1]
    return "/".join(parts[:-1] + ["camera_info"])


def _check_track_names(config: BagConfig, bag: Path) -> Dict[str, str]:
    """The LiDAR tracks (track -> topic), once every track name and the flags naming tracks are checked."""
    try:
        lidar = lidar_tracks(config.lidar_topic)
    except ValueError as error:
        raise RawDataError(bag, str(error)) from error
    for flag, tracks in (("--depth-topic", config.depth_topic), ("--lidar-topic", lidar)):
        for track in tracks:
            if not track or "/" in track or track.startswith("."):
                raise RawDataError(bag, f"{flag}: '{track}' is not a track name (a folder name, e.g. lidar)")
            if track == RGB_POSE_GT_TRACK:
                raise RawDataError(bag, f"{flag}: track name '{track}' is reserved for the RGB camera")
    for track, topic in lidar.items():
        if track in config.depth_topic:
            raise RawDataError(bag, f"--lidar-topic {topic}: track name '{track}' is also a --depth-topic track; "
                               "name it with TOPIC=TRACK")
    if config.lidar_time_field is not None and not lidar:
        raise RawDataError(bag, "--lidar-time-field is for --lidar-topic clouds, and no --lidar-topic is given")
    for track in config.lidar_to_camera:
        if track not in lidar:
            raise RawDataError(bag, f"--lidar-to-camera names track '{track}', but --lidar-topic has no such track "
                               f"(tracks: {', '.join(lidar) or 'none'})")
    for flag, names in (("--depth-intrinsics", config.depth_intrinsics), ("--depth-scale", config.depth_scale),
                        ("--depth-time-offset", config.depth_time_offset), ("--depth-info-topic", config.depth_info_topic)):
        for track in names:
            if track not in config.depth_topic:
                raise RawDataError(bag, f"{flag} names track '{track}', but --depth-topic has no such track "
                                   f"(tracks: {', '.join(config.depth_topic) or 'none'})")
    for track, seconds in config.depth_time_offset.items():
        if not math.isfinite(seconds):
            raise RawDataError(bag, f"--depth-time-offset {track} must be a finite number of seconds")
    return lidar


def _pose_source(config: BagConfig) -> str:
    given = [flag for flag, value in (("--pose-topic", config.pose_topic), ("--tf", config.tf), ("--tum", config.tum),
                                      ("--colmap", config.colmap), ("--transforms", config.transforms))
             if value is not None]
    if len(given) != 1:
        raise ValueError("give one RGB pose source: --pose-topic, --tf, --tum, --colmap or --transforms"
                         + (f" (not {' and '.join(given)})" if given else ""))
    return given[0]


def _check_topic(topics: Dict[str, Any], topic: str, types: Tuple[str, ...], flag: str, bag: Path) -> None:
    listing = [(name, info.msgtype) for name, info in topics.items()]
    if topic not in topics:
        raise RawDataError(bag, f"{flag}: no topic {topic} in this bag; topics of type "
                           f"{'/'.join(t.split('/')[-1] for t in types)}: {topic_list(listing, types)}")
    if topics[topic].msgtype not in types:
        raise RawDataError(bag, f"{flag}: topic {topic} is {topics[topic].msgtype}, expected "
                           f"{' or '.join(types)}")
    if not topics[topic].msgcount:
        raise RawDataError(bag, f"{flag}: topic {topic} has no messages")


@dataclass
class _Plan:
    """Which topic plays which part."""

    rgb: FrameStream
    depth: Dict[str, FrameStream]
    info_topics: Dict[str, str]
    """stream name -> CameraInfo topic, for the streams whose intrinsics come from the bag."""
    pose_topic: Optional[str] = None
    tf_topics: Tuple[str, ...] = ()
    lidar: Dict[str, LidarStream] = field(default_factory=dict)
    lidar_static: bool = False
    """/tf_static is read for the extrinsic of a LiDAR track without --lidar-to-camera."""


def _info_topics(
    config: BagConfig, bag: Path, topics: Dict[str, Any], rgb: FrameStream, depth: Dict[str, FrameStream]
) -> Dict[str, str]:
    """stream name -> its CameraInfo topic (given, or beside its image topic), for streams without intrinsics."""
    info_topics = {}
    for stream in [rgb, *depth.values()]:
        is_rgb = stream is rgb
        if (config.rgb_intrinsics if is_rgb else config.depth_intrinsics.get(stream.name)) is not None:
            continue
        given = config.rgb_info_topic if is_rgb else config.depth_info_topic.get(stream.name)
        topic = given or _info_topic(stream.topic)
        flag = "--rgb-info-topic" if is_rgb else f"--depth-info-topic {stream.name}"
        if given is None and topic not in topics:
            listing = topic_list([(name, info.msgtype) for name, info in topics.items()], (CAMERA_INFO,))
            raise RawDataError(bag, f"no intrinsics for {stream.topic}: no CameraInfo topic {topic} beside it; give "
                               f"{flag} TOPIC (CameraInfo topics: {listing}) or "
                               f"{'--rgb-intrinsics' if is_rgb else '--depth-intrinsics ' + stream.name} fx fy cx cy")
        _check_topic(topics, topic, (CAMERA_INFO,), flag, bag)
        info_topics[stream.name] = topic
    return info_topics


def _lidar_streams(
    config: BagConfig, bag: Path, topics: Dict[str, Any], frames: Path, tracks: Dict[str, str]
) -> Dict[str, LidarStream]:
    streams = {}
    for track, topic in tracks.items():
        _check_topic(topics, topic, (POINT_CLOUD2,), f"--lidar-topic {topic}", bag)
        if track not in config.lidar_to_camera and TF_STATIC_TOPIC not in topics:
            raise RawDataError(bag, _no_extrinsic(topic, track, f"the bag has no {TF_STATIC_TOPIC}"))
        streams[track] = LidarStream(track, topic, topics[topic].msgtype, topics[topic].msgcount,
                                     frames / f"lidar_{track}", time_field=config.lidar_time_field)
    return streams


def _no_extrinsic(topic: str, track: str, why: str) -> str:
    return (f"LiDAR topic {topic} (track {track}) has no extrinsic: {why}; give --lidar-to-camera {track} tx ty tz "
            f"qx qy qz qw (the LiDAR's pose in the RGB camera frame, camera axes of --pose-convention), or record "
            f"the transform between the camera's frame and the clouds' frame in {TF_STATIC_TOPIC}")


def _plan(config: BagConfig, bag: Path, topics: Dict[str, Any], frames: Path) -> _Plan:
    lidar = _check_track_names(config, bag)
    source = _pose_source(config)
    _check_topic(topics, config.rgb_topic, IMAGE_TYPES, "--rgb-topic", bag)
    rgb = FrameStream("rgb", config.rgb_topic, topics[config.rgb_topic].msgtype, topics[config.rgb_topic].msgcount,
                  frames / "rgb")
    depth = {}
    for track, topic in config.depth_topic.items():
        _check_topic(topics, topic, IMAGE_TYPES, f"--depth-topic {track}", bag)
        depth[track] = FrameStream(track, topic, topics[topic].msgtype, topics[topic].msgcount, frames / f"depth_{track}")
    plan = _Plan(rgb=rgb, depth=depth, info_topics=_info_topics(config, bag, topics, rgb, depth))
    plan.lidar = _lidar_streams(config, bag, topics, frames, lidar)
    plan.lidar_static = any(track not in config.lidar_to_camera for track in plan.lidar)
    if plan.lidar_static:
        _check_topic(topics, TF_STATIC_TOPIC, TF_TYPES, "--lidar-topic (its extrinsic)", bag)
    if source == "--pose-topic":
        _check_topic(topics, config.pose_topic, POSE_TYPES, "--pose-topic", bag)
        plan.pose_topic = config.pose_topic
    elif source == "--tf":
        plan.tf_topics = tuple(topic for topic in (TF_TOPIC, TF_STATIC_TOPIC) if topic in topics)
        if not plan.tf_topics:
            raise RawDataError(bag, f"--tf: the bag has neither {TF_TOPIC} nor {TF_STATIC_TOPIC}")
        for topic in plan.tf_topics:
            _check_topic(topics, topic, TF_TYPES, "--tf", bag)
    return plan


@dataclass
class _Collected:
    """What the pass keeps besides the frames it writes."""

    infos: Dict[str, CameraIntrinsics] = field(default_factory=dict)
    pose_times: List[int] = field(default_factory=list)
    pose_matrices: List[np.ndarray] = field(default_factory=list)
    tf: TfTree = field(default_factory=TfTree)
    tf_static: TfTree = field(default_factory=TfTree)
    """/tf_static alone (LiDAR extrinsics)."""
    camera_frame: Optional[str] = None
    """The first RGB message's header frame_id."""


def _progress(total: int, show: bool):
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("Reading bag"), BarColumn(), MofNCompleteColumn(), TextColumn("messages"),
                        TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
    progress.start()
    task = progress.add_task("bag", total=total)
    return lambda: progress.advance(task), progress.stop


@dataclass
class _BagMessage:
    """One message of the pass, deserialised."""

    topic: str
    msgtype: str
    message: Any
    receive_ns: int
    """The bag's receive time."""
    use_receive: bool
    """--stamp receive: the receive time stands for every stamp of the message."""
    where: str
    """'topic T (N messages), message I': how errors name the message."""

    def stamp(self, header_ns: Optional[int] = None) -> int:
        """Its time in ns: the receive time with --stamp receive, else `header_ns` (a TF transform's own stamp)
        or the message's header stamp."""
        if self.use_receive:
            return self.receive_ns
        return stamp_ns(self.message) if header_ns is None else header_ns


def _messages(
    reader, connections: List[Any], stamp: str, show_progress: bool, skip: Callable[[str], bool] = lambda topic: False,
    total: Callable[[Any], int] = lambda connection: connection.msgcount,
) -> Generator[_BagMessage, None, None]:
    """The messages of `connections` in the bag's order, numbered per topic (`total(connection)`: the count
    named beside the number), under a progress bar when shown. A message of a topic that `skip`s (asked when
    it comes) is counted but not deserialised."""
    seen: Dict[str, int] = {}
    advance, stop = _progress(sum(c.msgcount for c in connections), show_progress) or (None, None)
    try:
        for connection, receive_ns, rawdata in reader.messages(connections=connections):
            topic = connection.topic
            seen[topic] = seen.get(topic, 0) + 1
            if advance is not None:
                advance()
            if skip(topic):
                continue
            where = f"topic {topic} ({total(connection)} messages), message {seen[topic]}"
            message = reader.deserialize(rawdata, connection.msgtype)
            yield _BagMessage(topic, connection.msgtype, message, receive_ns, stamp == "receive", where)
    finally:
        if stop is not None:
            stop()


class _Frames:
    """Where the pass puts image frames: a frame's stamp is checked; a repeated stamp, or a frame the journal
    has from an interrupted run, is not written again; the rest is written (encoded on the writer threads)
    and journaled once on disk."""

    def __init__(self, workers: int, png_compression: int, bag: Path, journal: Union[FrameJournal, NoJournal],
                 zero_stamp: str):
        self.writers = FrameWriters(worker_count(workers), bag)
        self.png_compression, self.bag, self.journal, self.zero_stamp = png_compression, bag, journal, zero_stamp

    def take_all(self, messages: Generator[_BagMessage, None, None], take: Callable[[_BagMessage], None]) -> None:
        """`take(message)` for each message (its errors named by `message_errors`), then waits for the writes;
        the writer threads and the messages' progress bar end however the pass ends."""
        try:
            for item in messages:
                with message_errors(self.bag, item.where):
                    take(item)
            self.writers.finish()
        finally:
            self.writers.close()
            messages.close()

    def take(self, stream: FrameStream, item: _BagMessage, write: Callable[..., Optional[Callable[[], None]]]) -> None:
        """`write`: write_rgb_frame, write_depth_frame or write_lidar_scan."""
        stamp = item.stamp()
        if stamp <= 0:
            raise MessageError(self.zero_stamp)
        if not stream.accept(stamp) or self.journal.restore(stream, stamp, self.bag):
            return
        work = write(stream, item.message, stamp, self.bag, self.png_compression)
        done = partial(self.journal.add, stream, stamp)
        if work is None:
            done()
        else:
            self.writers.submit(work, item.where, done)


def _keep_transforms(tf: TfTree, item: _BagMessage) -> None:
    for parent, child, stamp, pose in tf_transforms(item.message):
        tf.add(parent, child, item.stamp(stamp) * 1e-9, pose, static=item.topic == TF_STATIC_TOPIC)


def _keep_static(tf: TfTree, item: _BagMessage) -> None:
    """A /tf_static message into the tree of LiDAR extrinsics (its errors are the message's)."""
    try:
        _keep_transforms(tf, item)
    except TfError as error:
        raise MessageError(str(error)) from error


def _keep_pose(collected: _Collected, item: _BagMessage) -> None:
    collected.pose_times.append(item.stamp())
    collected.pose_matrices.append(pose_matrix(item.message, item.msgtype))


def _read_pass(
    reader, plan: _Plan, config: BagConfig, bag: Path, show_progress: bool, journal: FrameJournal
) -> _Collected:
    """The one pass over the bag: frames written as they come (or found in the journal), small things kept."""
    collected = _Collected()
    streams = {plan.rgb.topic: plan.rgb, **{s.topic: s for s in plan.depth.values()},
               **{s.topic: s for s in plan.lidar.values()}}
    for stream in streams.values():
        stream.folder.mkdir(parents=True, exist_ok=True)
    info_by_topic = {topic: name for name, topic in plan.info_topics.items()}
    static_topics = {TF_STATIC_TOPIC} if plan.lidar_static else set()
    wanted = (set(streams) | set(info_by_topic) | set(plan.tf_topics) | static_topics
              | ({plan.pose_topic} if plan.pose_topic else set()))

    def info_known(topic: str) -> bool:  # one CameraInfo per camera is enough
        return topic in info_by_topic and info_by_topic[topic] in collected.infos and topic not in streams

    def take(item: _BagMessage) -> None:
        if item.topic in static_topics:
            _keep_static(collected.tf_static, item)
        if item.topic in plan.tf_topics:
            _keep_transforms(collected.tf, item)
        if item.topic in plan.tf_topics or item.topic in static_topics:
            return
        if item.topic in info_by_topic and info_by_topic[item.topic] not in collected.infos:
            collected.infos[info_by_topic[item.topic]] = camera_info(item.message)
        if item.topic == plan.pose_topic:
            _keep_pose(collected, item)
        if item.topic in streams:
            stream = streams[item.topic]
            if isinstance(stream, LidarStream):
                note_frame_id(stream, item.message)
                frames.take(stream, item, write_lidar_scan)
                return
            if stream is plan.rgb and collected.camera_frame is None:
                collected.camera_frame = frame_name(str(item.message.header.frame_id))
            frames.take(stream, item, write_rgb_frame if stream is plan.rgb else write_depth_frame)

    frames = _Frames(config.workers, config.png_compression, bag, journal, ZERO_STAMP)
    connections = [c for c in reader.connections if c.topic in wanted]
    frames.take_all(_messages(reader, connections, config.stamp, show_progress, skip=info_known), take)
    return collected


def _intrinsics(stream: FrameStream, override, collected: _Collected, plan: _Plan, bag: Path, notes: List[str]) -> np.ndarray:
    if override is not None:
        values = np.asarray(override, dtype=np.float64)
        if values.shape != (4,) or not np.isfinite(values).all() or values[0] <= 0 or values[1] <= 0:
            raise RawDataError(bag, f"intrinsics of {stream.name} must be finite fx fy cx cy with fx, fy > 0")
        return values
    topic = plan.info_topics[stream.name]
    info = collected.infos[stream.name]
    if info.size != stream.size:
        raise RawDataError(bag, f"CameraInfo {topic} is for {info.size[0]}x{info.size[1]} images but {stream.topic} "
                           f"has {stream.size[0]}x{stream.size[1]}; give the intrinsics at that size with "
                           f"{'--rgb-intrinsics' if stream.name == 'rgb' else '--depth-intrinsics ' + stream.name}")
    if np.abs(info.distortion).max(initial=0.0) > DISTORTION_TOLERANCE:
        message = (f"CameraInfo {topic}: {info.distortion_model} distortion {np.round(info.distortion, 6).tolist()} "
                   "is not applied; the layout takes pinhole images (undistort them, or expect a blurrier field)")
        warnings.warn(ConvertWarning(message), stacklevel=2)
        notes.append(message)
    return info.intrinsics


def _rgb_poses(
    config: BagConfig, plan: _Plan, collected: _Collected, times: np.ndarray, stems: List[str], bag: Path
) -> Tuple[np.ndarray, np.ndarray, PoseCoverage]:
    """(camera poses (M, 4, 4) in the source's axes, mask of frames with one, coverage)."""
    where = f"{config.rgb_topic} in {bag}"
    if plan.pose_topic is not None:
        if not collected.pose_times:
            raise RawDataError(bag, f"--pose-topic {plan.pose_topic} has no messages")
        trajectory = TimedPoses.checked(f"pose topic {plan.pose_topic}", np.array(collected.pose_times) * 1e-9,
                                        np.stack(collected.pose_matrices))
    elif config.tf is not None:
        try:
            sampled, gap, span = collected.tf.poses(config.tf[0].lstrip("/"), config.tf[1].lstrip("/"), times,
                                                    config.interpolation)
        except TfError as error:
            raise RawDataError(bag, f"--tf {config.tf[0]} {config.tf[1]}: {error}") from error
        source = f"TF {config.tf[0]} -> {config.tf[1]}"
        keep, coverage = select_frames(gap, times, span, source, config.max_pose_gap, where)
        return camera_poses(sampled, config.camera_to_body), keep, coverage
    else:
        trajectory = read_pose_file(config.tum, config.colmap, config.transforms, config.pose_convention,
                                    dict(zip(stems, times.tolist())))
        assert trajectory is not None
    return poses_for_frames(trajectory, times, config.interpolation, config.max_pose_gap, config.camera_to_body, where)


def _link(source: Path, target_stem: Path) -> Path:
    """The staged frame at its place in the dataset: a hard link (the resumable folder stays whole until the
    dataset is in place), a copy where the file system has no links."""
    target = target_stem.with_name(target_stem.name + source.suffix)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def _out_stream(stream: FrameStream, intrinsics: np.ndarray, offset_s: float, depth_scale: Optional[float]) -> OutStream:
    frames = [OutFrame(stem=stem_of(stamp), time=stamp * 1e-9 + offset_s, write=partial(_link, stream.frames[stamp]))
              for stamp in sorted(stream.frames)]
    assert stream.size is not None
    return OutStream(name=stream.name, size=stream.size, intrinsics=intrinsics, frames=frames, depth_scale=depth_scale)


def _stream_notes(stream: FrameStream, stacklevel: int = 3) -> List[str]:
    """Out-of-order and repeated stamps, warned (`stacklevel`: at the caller of convert_bag/extract_frames)."""
    notes = []
    if stream.backwards:
        notes.append(f"topic {stream.topic}: {stream.backwards} of {stream.count} messages arrived with a stamp "
                     "earlier than the one before (sorted by stamp)")
    if stream.repeated:
        notes.append(f"topic {stream.topic}: {stream.repeated} of {stream.count} messages repeat the stamp of an "
                     "earlier one (kept the first)")
    for note in notes:
        warnings.warn(ConvertWarning(note), stacklevel=stacklevel)
    return notes


def _record(
    config: BagConfig, bag: Path, summary: ConversionSummary, lidar: Dict[str, LidarStream]
) -> Dict[str, Any]:
    pose_file = config.tum or config.colmap or config.transforms
    return {
        "source": "bag",
        "bag": str(bag),
        "rgb_topic": config.rgb_topic,
        "depth_topic": config.depth_topic,
        "stamp": config.stamp,
        "rgb_poses": (f"pose topic {config.pose_topic}" if config.pose_topic else
                      f"tf {config.tf[0]} {config.tf[1]}" if config.tf else str(Path(pose_file).expanduser().resolve())),
        "pose_convention": config.pose_convention,
        "camera_to_body": config.camera_to_body,
        "interpolation": config.interpolation,
        "depth_time_offset": config.depth_time_offset,
        "lidar_topic": {track: stream.topic for track, stream in lidar.items()},
        "lidar_time_field": config.lidar_time_field,
        "lidar_to_camera": {track: list(values) for track, values in config.lidar_to_camera.items()},
        "val_every": config.val_every,
        "mask_folder": None if config.mask_folder is None else str(Path(config.mask_folder).expanduser().resolve()),
        **summary_record(summary),
    }


def _bag_files(bag: Path) -> List[Path]:
    return [bag] if bag.is_file() else sorted(path for path in bag.rglob("*") if path.is_file())


def resumable_folder(config: BagConfig, out: Path, bag: Path) -> Path:
    """`.OUT.KEY.partial` beside OUT: KEY is the bag's files (path, size, mtime) and every option that decides
    the frame files, so a rerun of the same command finds the frames an interrupted one wrote."""
    options = [config.rgb_topic, sorted(config.depth_topic.items()), config.stamp, config.png_compression]
    if config.lidar_topic:  # (a command without LiDAR keeps the key of earlier versions)
        options += [list(config.lidar_topic), config.lidar_time_field]
    options = json.dumps(options)
    key = content_key(file_identity(_bag_files(bag)), options)
    return out.parent / f".{out.name}.{key}{RESUMABLE_SUFFIX}"


def _check_options(config: BagConfig) -> None:
    check_val_every(config.val_every)
    if not 0 <= config.png_compression <= 9:
        raise ValueError(f"--png-compression must be 0..9, got {config.png_compression}")


def _read_bag(
    reader, config: BagConfig, bag: Path, frames_folder: Path, show_progress: bool
) -> Tuple[_Plan, _Collected]:
    """Which topic plays which part, then the one pass into the resumable folder; closes the bag."""
    journal = FrameJournal(frames_folder)
    try:
        plan = _plan(config, bag, reader.topics, frames_folder)
        return plan, _read_pass(reader, plan, config, bag, show_progress, journal)
    finally:
        reader.close()
        journal.close()


def _pass_notes(config: BagConfig, plan: _Plan, frames_folder: Path) -> List[str]:
    """What the summary says about the pass: the stamps, the frames resumed, out-of-order stamps (warned)."""
    notes: List[str] = [f"stamps: {'header stamps' if config.stamp == 'header' else 'bag receive times'}"]
    streams = [plan.rgb, *plan.depth.values(), *plan.lidar.values()]
    resumed = sum(stream.resumed for stream in streams)
    if resumed:
        notes.append(f"resumed: {resumed} frames were written by an interrupted run ({frames_folder})")
    for stream in streams:
        notes += _stream_notes(stream, stacklevel=4)
    for stream in plan.lidar.values():
        if stream.untimed:
            fields = f" (fields: {stream.untimed_fields})" if stream.untimed_fields else ""
            note = (f"LiDAR topic {stream.topic}: {stream.untimed} of {len(stream.time)} clouds have no per-point time "
                    f"field{fields}; their points are treated as taken at the cloud's stamp (t = 0), so the sweep "
                    "cannot be deskewed (--lidar-time-field NAME names a time field)")
            warnings.warn(ConvertWarning(note), stacklevel=4)
            notes.append(note)
    return notes


def _pose_rgb_frames(config: BagConfig, plan: _Plan, collected: _Collected, bag: Path, notes: List[str]) -> np.ndarray:
    """The RGB frames' camera-to-world poses (DRB) from the pose source; frames without one leave the stream."""
    rgb = plan.rgb
    stamps = sorted(rgb.frames)
    times = np.array(stamps, dtype=np.float64) * 1e-9
    c2w, keep, coverage = _rgb_poses(config, plan, collected, times, [stem_of(s) for s in stamps], bag)
    if not keep.any():
        raise RawDataError(bag, f"{coverage.source} gives a pose to none of the {len(stamps)} frames of "
                           f"{rgb.topic} (frames at {times[0]:.3f}..{times[-1]:.3f} s; --max-pose-gap "
                           f"{config.max_pose_gap:g} s)")
    notes.append(coverage.describe())
    for stamp, kept in zip(stamps, keep):
        if not kept:
            rgb.frames.pop(stamp)
    check_rgb_count(len(rgb.frames), config.val_every, bag)
    return raw_c2w_to_drb(c2w[keep, :3], config.pose_convention)


def _depth_streams(
    config: BagConfig, plan: _Plan, collected: _Collected, bag: Path, notes: List[str]
) -> Dict[str, OutStream]:
    """The depth tracks as written: their intrinsics, and their stamps on the RGB clock."""
    depth = {}
    for track, stream in plan.depth.items():
        offset = float(config.depth_time_offset.get(track, 0.0))
        if offset:
            notes.append(f"depth track {track}: {offset * 1e3:+.3f} ms added to its stamps (RGB clock)")
        intrinsics = _intrinsics(stream, config.depth_intrinsics.get(track), collected, plan, bag, notes)
        depth[track] = _out_stream(stream, intrinsics, offset, config.depth_scale.get(track))
    return depth


def _lidar_extrinsic(
    config: BagConfig, stream: LidarStream, collected: _Collected, bag: Path
) -> Tuple[np.ndarray, str]:
    """(4x4 LiDAR -> RGB camera in the layout's OpenGL camera axes, where it came from)."""
    given = config.lidar_to_camera.get(stream.name)
    if given is not None:
        values = np.asarray(given, dtype=np.float64)
        if not np.isfinite(values).all() or np.linalg.norm(values[3:]) < 1e-6:
            raise RawDataError(bag, f"--lidar-to-camera {stream.name}: {values.tolist()} is not a translation and "
                               "a unit quaternion (tx ty tz qx qy qz qw)")
        camera_from_lidar = matrix_from_tq(values[:3], values[3:] / np.linalg.norm(values[3:]))
        source = "--lidar-to-camera"
    else:
        with_body = config.camera_to_body is not None
        camera = config.tf[1].lstrip("/") if config.tf is not None and not with_body else collected.camera_frame
        why = (f"the RGB messages of {config.rgb_topic} have no frame_id" if not camera else
               f"its clouds have several frame_ids ({', '.join(sorted(stream.frame_ids))})" if len(stream.frame_ids) > 1
               else "its clouds have no frame_id" if not "".join(stream.frame_ids) else None)
        if why is not None:
            raise RawDataError(bag, _no_extrinsic(stream.topic, stream.name, why))
        lidar = next(iter(stream.frame_ids))
        try:
            poses, _, _ = collected.tf_static.poses(camera, lidar, np.zeros(1), "linear")
        except TfError as error:
            raise RawDataError(bag, _no_extrinsic(stream.topic, stream.name, f"{TF_STATIC_TOPIC}: {error}")) from error
        camera_from_lidar, source = poses[0], f"{TF_STATIC_TOPIC} {camera} -> {lidar}"
    if config.pose_convention == "opencv-enu":  # camera axes x right, y down, z forward -> OpenGL
        camera_from_lidar = np.diag([*np.diag(OPENCV_TO_OPENGL_CAMERA), 1.0]) @ camera_from_lidar
    return camera_from_lidar, source


def _lidar_out(
    config: BagConfig, plan: _Plan, collected: _Collected, bag: Path, notes: List[str]
) -> Dict[str, OutLidarTrack]:
    """The LiDAR tracks as written: their scans (stamps on the LiDAR's clock) and extrinsics."""
    tracks = {}
    for track, stream in plan.lidar.items():
        extrinsic, source = _lidar_extrinsic(config, stream, collected, bag)
        times = "; ".join(stream.time_notes()) or "none (t = 0)"
        notes.append(f"LiDAR track {track}: {len(stream.frames)} clouds of {stream.topic}, point times from {times}, "
                     f"extrinsic from {source}")
        frames = [OutFrame(stem=stem_of(stamp), time=stamp * 1e-9, write=partial(_link, stream.frames[stamp]))
                  for stamp in sorted(stream.frames)]
        tracks[track] = OutLidarTrack(name=track, frames=frames, lidar_to_camera=extrinsic)
    return tracks


def _write_staged(
    staged: Path, config: BagConfig, bag: Path, plan: _Plan, collected: _Collected, notes: List[str],
    show_progress: bool,
) -> ConversionSummary:
    """The dataset in the staging folder: RGB frames with a pose, depth tracks, metadata."""
    rgb_intrinsics = _intrinsics(plan.rgb, config.rgb_intrinsics, collected, plan, bag, notes)
    rgb_poses_drb = _pose_rgb_frames(config, plan, collected, bag, notes)
    depth = _depth_streams(config, plan, collected, bag, notes)
    lidar = _lidar_out(config, plan, collected, bag, notes)
    rgb = attach_masks(_out_stream(plan.rgb, rgb_intrinsics, 0.0, None), config.mask_folder)
    summary = write_dataset(staged, rgb, rgb_poses_drb, depth,
                            config.val_every, show_progress, bag, lidar)
    summary.notes = notes
    return summary


def convert_bag(config: BagConfig, show_progress: bool = False) -> ConversionSummary:
    """Convert config.bag into config.out (streaming), validate it with read_layout, and say what was written.

    Frames go into `resumable_folder` as they are read. An error in the input (or in OUT) removes it: the
    command must change anyway. Any other end (Ctrl-C, a full disk, a killed process) leaves it, and the
    same command then goes on from the frames it holds; a finished conversion removes it.
    """
    _check_options(config)
    out = Path(config.out).expanduser().resolve()
    bag = Path(config.bag).expanduser().resolve()
    files_to_replace(out, config.overwrite, TOOL_NAME)  # fail before the work if OUT cannot be replaced
    reader = _open_bag(bag)
    frames_folder = resumable_folder(config, out, bag)
    resuming = frames_folder.exists()
    frames_folder.mkdir(parents=True, exist_ok=True)
    staged = staging_folder(out)
    try:
        plan, collected = _read_bag(reader, config, bag, frames_folder, show_progress)
        notes = _pass_notes(config, plan, frames_folder)
        summary = _write_staged(staged, config, bag, plan, collected, notes, show_progress)
        publish(staged, out, config.overwrite, _record(config, bag, summary, plan.lidar))
    except (LayoutError, ValueError):  # the input, an option or OUT: the command must change anyway
        if not resuming:  # frames an interrupted run wrote stay for the corrected command
            discard(frames_folder)
        raise
    except BaseException as error:
        error.add_note(f"async-nerf-convert: the frames written so far are kept in {frames_folder}; run the same "
                       "command again to go on from them (or delete that folder)")
        raise
    finally:
        discard(staged)
    discard(frames_folder)
    summary.out = out
    return summary


def _extract_rgb(reader, config: FramesConfig, bag: Path, folder: Path, show_progress: bool) -> FrameStream:
    """The RGB topic's frames written into `folder`; closes the bag."""
    try:
        _check_topic(reader.topics, config.rgb_topic, IMAGE_TYPES, "--rgb-topic", bag)
        info = reader.topics[config.rgb_topic]
        stream = FrameStream("rgb", config.rgb_topic, info.msgtype, info.msgcount, folder)
        connections = [c for c in reader.connections if c.topic == config.rgb_topic]
        messages = _messages(reader, connections, config.stamp, show_progress, total=lambda connection: info.msgcount)
        frames = _Frames(config.workers, config.png_compression, bag, NoJournal(), ZERO_STAMP_SHORT)
        frames.take_all(messages, lambda item: frames.take(stream, item, write_rgb_frame))
        return stream
    finally:
        reader.close()


def extract_frames(config: FramesConfig, show_progress: bool = False) -> int:
    """The RGB frames of config.bag as config.out/STAMP.{png,jpg} (moved into place when all are written);
    returns how many."""
    out = Path(config.out).expanduser().resolve()
    bag = Path(config.bag).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputFolderError(out, "exists and is not an empty folder")
    reader = _open_bag(bag)
    staged = staging_folder(out)
    try:
        stream = _extract_rgb(reader, config, bag, staged, show_progress)
        _stream_notes(stream)
        if out.exists():
            out.rmdir()
        staged.rename(out)
    finally:
        discard(staged)
    return len(stream.frames)
