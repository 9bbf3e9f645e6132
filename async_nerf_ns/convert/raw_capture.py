"""Reading and checking a raw asynchronous RGB-D capture before anything is written.

The raw capture (every file named by its capture time in seconds, e.g. `1667117650.123.png`):

    RAW/
      rgb/TIME.{png,jpg,jpeg,bmp,tif,tiff,webp}   RGB frames
      rgb_poses/TIME.txt                          4x4 (or 3x4) camera-to-world of each RGB frame, metres
      depth_TRACK/TIME.{npy,pt,png,tif,tiff,jpg,jpeg}  any number of depth tracks, at their own times
      depth_TRACK_poses/TIME.txt                  optional: true poses of depth frames (evaluation only)
      intrinsics.json                             optional: {"rgb": {"fx": .., "fy": .., "cx": .., "cy": ..},
                                                  "TRACK": {...}, "depth_scale": {"TRACK": metres per unit}}

`read_raw` returns every stream with its times, size, intrinsics and DRB poses (metres), or raises
`RawDataError` naming the first bad file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from jaxtyping import Float
from PIL import Image

from async_nerf_ns.layout import (
    DEPTH_EXTENSIONS,
    RGB_EXTENSIONS,
    RGB_POSE_GT_TRACK,
    LayoutError,
    depth_header,
    read_pose_txt,
)
from async_nerf_ns.convert.config import ConvertConfig
from async_nerf_ns.convert.errors import RawDataError
from async_nerf_ns.convert.frame_poses import camera_poses, poses_for_frames
from async_nerf_ns.convert.poses import raw_c2w_to_drb
from async_nerf_ns.convert.trajectory_files import read_pose_file


RAW_RGB_DIR = "rgb"
RAW_RGB_POSES_DIR = "rgb_poses"
RAW_DEPTH_PREFIX = "depth_"
RAW_POSES_SUFFIX = "_poses"
INTRINSICS_FILE = "intrinsics.json"
DEPTH_SCALE_KEY = "depth_scale"
REENCODED_RGB_EXTENSIONS = (".bmp", ".tif", ".tiff", ".webp")
"""RGB types the layout does not take; they are re-encoded as PNG (RGB_EXTENSIONS are copied)."""




@dataclass
class RawStream:
    """One raw stream (the RGB camera or a depth track), frames sorted by time."""

    name: str
    """'rgb' or the depth track's name."""
    files: List[Path]
    times: Float[np.ndarray, " n"]
    """Capture times in seconds, parsed from the file names, increasing."""
    size: Tuple[int, int] = (0, 0)
    """(W, H) of every file of the stream."""
    intrinsics: Optional[np.ndarray] = None
    """fx, fy, cx, cy, float64 (4,)."""
    poses_drb: Dict[str, np.ndarray] = field(default_factory=dict)
    """stem -> camera-to-world, DRB world, OpenGL camera, metres, float64 (3, 4)."""
    notes: List[str] = field(default_factory=list)
    """What the user is told about the stream (interpolated poses, a clock offset)."""

    @property
    def stems(self) -> List[str]:
        return [path.stem for path in self.files]


def _parse_time(path: Path) -> float:
    try:
        value = float(path.stem)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RawDataError(path, "the file name must be the capture time in seconds, e.g. 1667117650.123" + path.suffix)
    return value


def _scan_stream(folder: Path, name: str, extensions: Sequence[str]) -> RawStream:
    """Files of a stream folder, sorted by the times in their names; hidden files are ignored."""
    what = "RGB frame" if name == RAW_RGB_DIR else f"depth frame of track '{name}'"
    by_stem: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_file() or path.suffix.lower() not in extensions:
            raise RawDataError(path, f"not a {what}: expected a file of type {', '.join(extensions)}")
        if path.stem in by_stem:
            raise RawDataError(path, f"two files for time '{path.stem}' ({by_stem[path.stem].name}); keep one")
        by_stem[path.stem] = path
    if not by_stem:
        raise RawDataError(folder, f"no {what}s here (types {', '.join(extensions)})")
    files = sorted(by_stem.values(), key=_parse_time)
    times = np.array([_parse_time(path) for path in files], dtype=np.float64)
    for i in np.flatnonzero(np.diff(times) == 0):
        raise RawDataError(files[i + 1], f"duplicate timestamp {times[i]!r} (also {files[i].name})")
    return RawStream(name=name, files=files, times=times)


def _read_poses(
    stream: RawStream, folder: Path, convention: str, every_frame: bool,
    camera_to_body: Optional[Sequence[float]] = None,
) -> None:
    """Fill stream.poses_drb from folder/STEM.txt (each @ camera_to_body when given); a pose needs its
    frame, and (every_frame) vice versa."""
    poses = {path.stem: path for path in sorted(folder.iterdir()) if not path.name.startswith(".")}
    frames = {path.stem: path for path in stream.files}
    for stem, path in poses.items():
        if not path.is_file() or path.suffix.lower() != ".txt":
            raise RawDataError(path, "not a pose file: expected TIME.txt holding a 4x4 or 3x4 matrix")
        if stem not in frames:
            raise RawDataError(path, f"pose without a frame: no file named '{stem}.*' in {stream.files[0].parent}")
    if every_frame:
        for stem, path in frames.items():
            if stem not in poses:
                raise RawDataError(path, f"frame without a pose: no {folder / (stem + '.txt')}")
    for stem, path in poses.items():
        try:
            pose = read_pose_txt(path)  # the layout's own checks: shape, finite, a proper rotation
        except LayoutError as error:
            raise RawDataError(error.path, error.problem) from error
        if camera_to_body is not None:
            rigid = np.eye(4)
            rigid[:3] = pose
            pose = camera_poses(rigid[None], camera_to_body)[0, :3]
        stream.poses_drb[stem] = raw_c2w_to_drb(pose, convention)


def _read_sizes(stream: RawStream, read_size) -> None:
    """stream.size = the common (W, H) of the stream's files; a file of another size is an error."""
    sizes = [read_size(path) for path in stream.files]
    for path, size in zip(stream.files, sizes):
        if size != sizes[0]:
            raise RawDataError(
                path,
                f"is {size[0]}x{size[1]} pixels but {stream.files[0].name} is {sizes[0][0]}x{sizes[0][1]}; "
                f"one set of intrinsics needs one size per stream",
            )
    stream.size = sizes[0]


def _image_size(path: Path) -> Tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise RawDataError(path, f"cannot be read as an image ({error})") from error


def _depth_size(path: Path) -> Tuple[int, int]:
    try:
        (height, width), _ = depth_header(path)
    except LayoutError as error:
        raise RawDataError(error.path, error.problem) from error
    return width, height


def _intrinsics_array(value: Any, path: Path, where: str) -> np.ndarray:
    if isinstance(value, dict):
        missing = [key for key in ("fx", "fy", "cx", "cy") if key not in value]
        if missing:
            raise RawDataError(path, f"{where} lacks {', '.join(missing)}; expected fx, fy, cx, cy")
        value = [value[key] for key in ("fx", "fy", "cx", "cy")]
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise RawDataError(path, f"{where} is not numeric ({error})") from error
    if array.shape != (4,) or not np.all(np.isfinite(array)) or array[0] <= 0 or array[1] <= 0:
        raise RawDataError(path, f"{where} must be finite fx, fy, cx, cy with fx, fy > 0, found {array.tolist()}")
    return array


def _positive(value: Any, path: Path, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0 or isinstance(value, bool):
        raise RawDataError(path, f"{where} must be one positive number (metres per unit), found {value!r}")
    return number


def _read_intrinsics_file(path: Path, tracks: Sequence[str]) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    """(stream -> intrinsics, track -> depth scale) from intrinsics.json; {} when it is absent."""
    if not path.exists():
        return {}, {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RawDataError(path, f"cannot be read as JSON ({error})") from error
    if not isinstance(data, dict):
        raise RawDataError(path, f"expected a JSON object, found {type(data).__name__}")
    known = {RAW_RGB_DIR, DEPTH_SCALE_KEY, *tracks}
    for key in data:
        if key not in known:
            raise RawDataError(
                path, f"entry '{key}' is not 'rgb', '{DEPTH_SCALE_KEY}' or a depth track {sorted(tracks)}"
            )
    intrinsics = {key: _intrinsics_array(v, path, f"'{key}'") for key, v in data.items() if key != DEPTH_SCALE_KEY}
    scales = data.get(DEPTH_SCALE_KEY, {})
    if not isinstance(scales, dict):
        raise RawDataError(path, f"'{DEPTH_SCALE_KEY}' must map track names to metres per unit")
    for track in scales:
        if track not in tracks:
            raise RawDataError(path, f"'{DEPTH_SCALE_KEY}' names track '{track}', which has no folder depth_{track}/")
    return intrinsics, {k: _positive(v, path, f"'{DEPTH_SCALE_KEY}.{k}'") for k, v in scales.items()}


def _depth_track_folders(raw: Path) -> Dict[str, Tuple[Path, Optional[Path]]]:
    """track -> (depth folder, true-pose folder or None)."""
    tracks: Dict[str, Tuple[Path, Optional[Path]]] = {}
    pose_folders = []
    for path in sorted(raw.glob(RAW_DEPTH_PREFIX + "*")):
        if not path.is_dir():
            continue
        track = path.name[len(RAW_DEPTH_PREFIX) :]
        if track.endswith(RAW_POSES_SUFFIX):
            pose_folders.append(path)
            continue
        if not track:
            raise RawDataError(path, "a depth folder needs a track name, e.g. depth_lidar/")
        if track == RGB_POSE_GT_TRACK:
            raise RawDataError(path, f"track name '{track}' is reserved for the RGB camera; rename the folder")
        tracks[track] = (path, None)
    for path in pose_folders:
        track = path.name[len(RAW_DEPTH_PREFIX) : -len(RAW_POSES_SUFFIX)]
        if track not in tracks:
            raise RawDataError(path, f"poses of a depth track '{track}' that has no folder {RAW_DEPTH_PREFIX}{track}/")
        tracks[track] = (tracks[track][0], path)
    return tracks


def _keep_frames(stream: RawStream, keep: np.ndarray) -> None:
    stream.files = [path for path, kept in zip(stream.files, keep) if kept]
    stream.times = stream.times[keep]


def _poses_from_file(rgb: RawStream, config: ConvertConfig, raw: Path) -> None:
    """RGB poses from --tum/--colmap/--transforms at the frames' times; frames without one are dropped."""
    trajectory = read_pose_file(config.tum, config.colmap, config.transforms, config.pose_convention,
                                dict(zip(rgb.stems, rgb.times.tolist())))
    assert trajectory is not None
    c2w, keep, coverage = poses_for_frames(trajectory, rgb.times, config.interpolation, config.max_pose_gap,
                                           config.camera_to_body, f"{raw / RAW_RGB_DIR}")
    if not keep.any():
        raise RawDataError(
            Path(trajectory.source),
            f"gives a pose to none of the {len(rgb.files)} RGB frames in {raw / RAW_RGB_DIR} (frames at "
            f"{rgb.times[0]:.3f}..{rgb.times[-1]:.3f} s, poses at {trajectory.times[0]:.3f}..{trajectory.times[-1]:.3f} s"
            f", --max-pose-gap {config.max_pose_gap:g} s)",
        )
    rgb.poses_drb = {stem: raw_c2w_to_drb(pose[:3], config.pose_convention)
                     for stem, pose, kept in zip(rgb.stems, c2w, keep) if kept}
    _keep_frames(rgb, keep)
    rgb.notes.append(coverage.describe())


def apply_time_offsets(depth: Dict[str, RawStream], offsets: Dict[str, float], where: Path) -> None:
    """Adds --depth-time-offset seconds to each named track's times (an unknown track is an error)."""
    for track, seconds in offsets.items():
        if track not in depth:
            raise RawDataError(where, f"--depth-time-offset names track '{track}', but there is no such depth track "
                               f"(tracks: {', '.join(sorted(depth)) or 'none'})")
        if not math.isfinite(seconds):
            raise RawDataError(where, f"--depth-time-offset {track} must be a finite number of seconds")
        depth[track].times = depth[track].times + float(seconds)
        depth[track].notes.append(f"depth track {track}: {seconds * 1e3:+.3f} ms added to its stamps (RGB clock)")


def read_raw(config: ConvertConfig) -> Tuple[RawStream, Dict[str, RawStream], Dict[str, float]]:
    """(RGB stream, depth streams by track, depth scales by track), all checked; writes nothing."""
    raw = Path(config.raw).expanduser()
    if not raw.is_dir():
        raise RawDataError(raw, "raw capture folder does not exist")
    pose_flag = next((flag for flag, value in (("--tum", config.tum), ("--colmap", config.colmap),
                                                ("--transforms", config.transforms)) if value is not None), None)
    for name in (RAW_RGB_DIR, RAW_RGB_POSES_DIR) if pose_flag is None else (RAW_RGB_DIR,):
        if not (raw / name).is_dir():
            raise RawDataError(raw / name, f"missing: a raw capture needs {RAW_RGB_DIR}/ and {RAW_RGB_POSES_DIR}/ "
                               "(or --tum, --colmap or --transforms instead of rgb_poses/)")
    rgb = _scan_stream(raw / RAW_RGB_DIR, RAW_RGB_DIR, RGB_EXTENSIONS + REENCODED_RGB_EXTENSIONS)
    if pose_flag is None:
        _read_poses(rgb, raw / RAW_RGB_POSES_DIR, config.pose_convention, every_frame=True,
                    camera_to_body=config.camera_to_body)
    else:
        if (raw / RAW_RGB_POSES_DIR).exists():
            raise RawDataError(raw / RAW_RGB_POSES_DIR, f"RGB poses come from {pose_flag}; move this folder away "
                               f"or leave out {pose_flag}")
        _poses_from_file(rgb, config, raw)
    _read_sizes(rgb, _image_size)

    depth: Dict[str, RawStream] = {}
    for track, (folder, pose_folder) in _depth_track_folders(raw).items():
        depth[track] = _scan_stream(folder, track, DEPTH_EXTENSIONS)
        if pose_folder is not None:
            _read_poses(depth[track], pose_folder, config.pose_convention, every_frame=False)
        _read_sizes(depth[track], _depth_size)
    apply_time_offsets(depth, config.depth_time_offset, raw)

    intrinsics_path = raw / INTRINSICS_FILE
    intrinsics, scales = _read_intrinsics_file(intrinsics_path, list(depth))
    for track in list(config.depth_intrinsics) + list(config.depth_scale):
        if track not in depth:
            raise RawDataError(
                raw, f"--depth-intrinsics/--depth-scale name track '{track}', but there is no depth_{track}/"
            )
    if config.rgb_intrinsics is not None:
        intrinsics[RAW_RGB_DIR] = _intrinsics_array(config.rgb_intrinsics, raw, "--rgb-intrinsics")
    for track, value in config.depth_intrinsics.items():
        intrinsics[track] = _intrinsics_array(value, raw, f"--depth-intrinsics {track}")
    scales.update({track: _positive(v, raw, f"--depth-scale {track}") for track, v in config.depth_scale.items()})
    for stream in [rgb, *depth.values()]:
        if stream.name not in intrinsics:
            flag = "--rgb-intrinsics" if stream is rgb else f"--depth-intrinsics {stream.name}"
            raise RawDataError(
                intrinsics_path,
                f"no intrinsics for stream '{stream.name}': give {flag} fx fy cx cy, or an entry "
                f'"{stream.name}": {{"fx": .., "fy": .., "cx": .., "cy": ..}} in this file',
            )
        stream.intrinsics = intrinsics[stream.name]
    return rgb, depth, scales
