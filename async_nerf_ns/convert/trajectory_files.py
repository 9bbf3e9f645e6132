"""RGB pose sources that are files: a TUM trajectory, a COLMAP sparse model, a nerfstudio transforms.json.

Each reader returns `TimedPoses` (camera-to-world 4x4 at increasing times, the file's own axes) or
raises `RawDataError` naming the file (and line or entry). COLMAP and transforms.json frames carry
names rather than times: a name is matched to an input frame by stem (`frame_times`), else read as a
capture time; entries that are neither are skipped with a warning (an error when none is left).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path, PurePath
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from async_nerf_ns.convert.errors import RawDataError
from async_nerf_ns.convert.frame_poses import ConvertWarning, TimedPoses, matrix_from_tq
from async_nerf_ns.layout import LayoutError
from async_nerf_ns.layout.values import read_pose

QUATERNION_TOLERANCE = 1e-3
"""A TUM quaternion whose norm is further than this from 1 is an error (files keep >= 6 digits)."""
TUM_FIELDS = "timestamp tx ty tz qx qy qz qw"


def read_tum(path: Path) -> TimedPoses:
    """A TUM trajectory: 'timestamp tx ty tz qx qy qz qw' per line; '#' comments and blank lines skipped."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RawDataError(path, f"cannot be read as a TUM trajectory ({error})") from error
    times: List[float] = []
    poses: List[np.ndarray] = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].replace(",", " ").strip()
        if not text:
            continue
        fields = text.split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != 8 or not all(math.isfinite(v) for v in values):
            raise RawDataError(path, f"line {number} is not '{TUM_FIELDS}' (8 finite numbers): {line.strip()!r}")
        norm = float(np.linalg.norm(values[4:]))
        if abs(norm - 1.0) > QUATERNION_TOLERANCE:
            raise RawDataError(path, f"line {number}: quaternion qx qy qz qw has norm {norm:.6g}, expected 1")
        times.append(values[0])
        poses.append(matrix_from_tq(values[1:4], np.asarray(values[4:]) / norm))
    if not poses:
        raise RawDataError(path, f"no poses in this TUM trajectory (lines of '{TUM_FIELDS}')")
    return TimedPoses.checked(str(path), times, np.stack(poses))


def _time_of_name(name: str, frame_times: Mapping[str, float]) -> Optional[float]:
    """A frame's time by its name's stem: an input frame of that stem, else the stem read as seconds."""
    stem = PurePath(name).stem
    if stem in frame_times:
        return float(frame_times[stem])
    try:
        value = float(stem)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _timed_by_name(
    path: Path, what: str, named: List[Tuple[str, Optional[float], np.ndarray]]
) -> TimedPoses:
    """TimedPoses from (name, time or None, c2w) entries; entries without a time skipped with a warning."""
    timed = [(t, pose) for _, t, pose in named if t is not None]
    untimed = [name for name, t, _ in named if t is None]
    if not timed:
        example = f", e.g. {untimed[0]!r}" if untimed else ""
        raise RawDataError(
            path, f"none of its {len(named)} {what}s has a time: their names are neither input frames nor capture "
            f"times in seconds{example}"
        )
    if untimed:
        warnings.warn(ConvertWarning(
            f"{path}: skipped {len(untimed)} of {len(named)} {what}s whose names are neither input frames nor "
            f"capture times, e.g. {untimed[0]!r}"
        ), stacklevel=3)
    return TimedPoses.checked(str(path), [t for t, _ in timed], np.stack([pose for _, pose in timed]), what)


def read_colmap(path: Path, frame_times: Mapping[str, float]) -> TimedPoses:
    """Registered images of a COLMAP sparse model (pycolmap), camera-to-world, OpenCV camera axes."""
    path = Path(path).expanduser()
    try:
        import pycolmap
    except ImportError as error:
        raise RawDataError(path, "reading a COLMAP model needs pycolmap: pip install 'async-nerf-ns[capture]'") from error
    if not path.is_dir() or not any((path / f"images.{ext}").is_file() for ext in ("bin", "txt")):
        raise RawDataError(path, "not a COLMAP sparse model folder (no images.bin or images.txt here)")
    try:
        model = pycolmap.Reconstruction(str(path))
    except (RuntimeError, ValueError, OSError) as error:
        raise RawDataError(path, f"pycolmap cannot read this model ({error})") from error
    named = []
    for image in model.images.values():
        if not image.has_pose:
            continue
        cam_from_world = image.cam_from_world  # a method in pycolmap >= 3.12, a property before
        cam_from_world = cam_from_world() if callable(cam_from_world) else cam_from_world
        w2c = np.eye(4)
        w2c[:3] = cam_from_world.matrix()
        named.append((image.name, _time_of_name(image.name, frame_times), np.linalg.inv(w2c)))
    if not named:
        raise RawDataError(path, "the model has no registered image")
    return _timed_by_name(path, "registered image", named)


def read_transforms(path: Path, frame_times: Mapping[str, float]) -> TimedPoses:
    """Frames of a nerfstudio transforms.json: transform_matrix (OpenGL camera-to-world) at "timestamp",
    else at the time of the frame its file_path names."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RawDataError(path, f"cannot be read as JSON ({error})") from error
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise RawDataError(path, "expected a nerfstudio transforms.json: an object with a non-empty 'frames' list")
    named = []
    for index, frame in enumerate(frames):
        where = f"frames[{index}]"
        if not isinstance(frame, dict) or "transform_matrix" not in frame:
            raise RawDataError(path, f"{where} has no 'transform_matrix'")
        try:  # the layout's own checks: shape, finite, a proper rotation
            pose = read_pose(frame["transform_matrix"], path, f"{where}.transform_matrix")
        except LayoutError as error:
            raise RawDataError(path, error.problem) from error
        c2w = np.eye(4)
        c2w[:3] = pose
        name = str(frame.get("file_path", where))
        time: Optional[float]
        if "timestamp" in frame:
            try:
                time = float(frame["timestamp"])
            except (TypeError, ValueError):
                time = math.nan
            if not math.isfinite(time):
                raise RawDataError(path, f"{where}: 'timestamp' must be a number of seconds, found {frame['timestamp']!r}")
        else:
            time = _time_of_name(name, frame_times)
        named.append((name, time, c2w))
    return _timed_by_name(path, "frame", named)


def read_pose_file(
    tum: Optional[Path], colmap: Optional[Path], transforms: Optional[Path], convention: str,
    frame_times: Dict[str, float],
) -> Optional[TimedPoses]:
    """The one pose file given (None if none), checked against the pose convention it implies."""
    given = [(flag, value) for flag, value in (("--tum", tum), ("--colmap", colmap), ("--transforms", transforms))
             if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one RGB pose source, not {' and '.join(flag for flag, _ in given)}")
    if colmap is not None and convention != "opencv-enu":
        raise ValueError(f"COLMAP cameras have OpenCV axes: pass --pose-convention opencv-enu, not {convention}")
    if transforms is not None and convention != "opengl-enu":
        raise ValueError(f"transforms.json cameras have OpenGL axes: pass --pose-convention opengl-enu, not {convention}")
    if tum is not None:
        return read_tum(tum)
    if colmap is not None:
        return read_colmap(colmap, frame_times)
    if transforms is not None:
        return read_transforms(transforms, frame_times)
    return None
