"""Converting a raw asynchronous RGB-D capture into the dataset layout of DATA_LAYOUT.md.

The raw capture (every file named by its capture time in seconds, e.g. `1667117650.123.png`):

    RAW/
      rgb/TIME.{png,jpg,jpeg,bmp,tif,tiff,webp}   RGB frames
      rgb_poses/TIME.txt                          4x4 (or 3x4) camera-to-world of each RGB frame, metres
      depth_TRACK/TIME.{npy,pt,png,tif,tiff,jpg,jpeg}  any number of depth tracks, at their own times
      depth_TRACK_poses/TIME.txt                  optional: true poses of depth frames (evaluation only)
      intrinsics.json                             optional: {"rgb": {"fx": .., "fy": .., "cx": .., "cy": ..},
                                                  "TRACK": {...}, "depth_scale": {"TRACK": metres per unit}}

Poses are read in one of `POSE_CONVENTIONS` and stored as the layout wants them: DRB world
(x down, y right, z back), OpenGL camera axes (x right, y up, z back), centred on `origin_drb`
and divided by `pose_scale_factor`. The world mapping is `ENU_TO_DRB` (DRB = (-z, x, -y) of a
z-up world, the inverse of the DataParser's `DRB_TO_WORLD`), a proper rotation.

The converter reads and checks everything before it writes anything, writes into a temporary
folder beside OUT, validates that with `read_layout`, and only then moves it into place; an
existing OUT is replaced only if every file in it was written by an earlier conversion (listed in
its `conversion.json`), so nothing a user made is ever deleted.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image

from async_nerf_ns.data.layout import (
    DEPTH_EXTENSIONS,
    RGB_EXTENSIONS,
    RGB_POSE_GT_TRACK,
    LayoutError,
    depth_header,
    read_layout_pose_txt,
    read_layout,
)
from async_nerf_ns.data.output_folder import (
    discard,
    files_to_replace,
    move_into_place,
    staging_folder,
    write_manifest,
)
from async_nerf_ns.data.scene_metadata import DRB_TO_WORLD

PoseConvention = Literal["opengl-enu", "opencv-enu", "drb"]
POSE_CONVENTIONS: Tuple[str, ...] = ("opengl-enu", "opencv-enu", "drb")
"""opengl-enu: world x east, y north, z up; camera x right, y up, z back (nerfstudio, Blender).
opencv-enu: same world; camera x right, y down, z forward (COLMAP, most SLAM systems).
drb: world x down, y right, z back, camera OpenGL: the layout's own axes, in metres, not centred."""
ENU_TO_DRB = DRB_TO_WORLD.T
"""p_drb = ENU_TO_DRB @ p_enu: DRB x = -z (down), y = x (east = right), z = -y (south = back)."""
OPENCV_TO_OPENGL_CAMERA = np.diag([1.0, -1.0, -1.0])
"""R_opengl = R_opencv @ OPENCV_TO_OPENGL_CAMERA (flip the camera's y and z axes; its own inverse)."""
RAW_RGB_DIR = "rgb"
RAW_RGB_POSES_DIR = "rgb_poses"
RAW_DEPTH_PREFIX = "depth_"
RAW_POSES_SUFFIX = "_poses"
INTRINSICS_FILE = "intrinsics.json"
DEPTH_SCALE_KEY = "depth_scale"
REENCODED_RGB_EXTENSIONS = (".bmp", ".tif", ".tiff", ".webp")
"""RGB types the layout does not take; they are re-encoded as PNG (RGB_EXTENSIONS are copied)."""
TOOL_NAME = "async-nerf-convert"


class RawDataError(LayoutError):
    """The raw capture cannot be converted; `path` is the offending file or folder."""

    def __reduce__(self):
        return (RawDataError, (self.path, self.problem))


@dataclass
class ConvertConfig:
    """Convert a raw asynchronous RGB-D capture into an async-nerf dataset (see DATA_LAYOUT.md)."""

    raw: Path
    """The raw capture folder (rgb/, rgb_poses/, depth_TRACK/, ...)."""
    out: Path
    """Where the dataset goes: a new or empty folder (or an earlier output, with --overwrite)."""
    pose_convention: PoseConvention
    """Axes of the pose files. opengl-enu: world x east, y north, z up, camera x right, y up, z back
    (nerfstudio, Blender). opencv-enu: same world, camera x right, y down, z forward (COLMAP, most
    SLAM). drb: world x down, y right, z back with OpenGL camera axes (the layout's own, in metres).
    Required: a wrong guess still converts, but trains on a scene turned on its side."""
    rgb_intrinsics: Optional[Tuple[float, float, float, float]] = None
    """fx fy cx cy of the RGB camera in pixels, at the size of the files in rgb/; overrides
    intrinsics.json's "rgb" entry."""
    depth_intrinsics: Dict[str, Tuple[float, float, float, float]] = field(default_factory=dict)
    """TRACK fx fy cx cy [TRACK fx fy cx cy ...]: intrinsics of depth tracks at the size of their
    files; each overrides that track's entry in intrinsics.json."""
    depth_scale: Dict[str, float] = field(default_factory=dict)
    """TRACK METRES [TRACK METRES ...]: metres per stored depth unit; overrides intrinsics.json's
    "depth_scale". Without either, the layout's defaults apply (.npy/.pt/8-bit: metres, 16-bit:
    millimetres)."""
    val_every: int = 8
    """Frames N//2, N//2 + N, N//2 + 2N, ... (in time order) of each stream go to val/, the rest to
    train/; starting at N//2 keeps val frames inside the train time span. At least 2."""
    overwrite: bool = False
    """Replace OUT if it holds an earlier output of this tool (and nothing else)."""


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

    @property
    def stems(self) -> List[str]:
        return [path.stem for path in self.files]


@dataclass
class ConversionSummary:
    """What a conversion wrote."""

    out: Path
    origin_drb: Float[np.ndarray, " 3"]
    """Centre of the RGB camera positions (midpoint of their bounding box), DRB metres."""
    pose_scale_factor: float
    """Largest distance of an RGB camera from origin_drb, metres."""
    counts: Dict[str, Dict[str, int]]
    """split -> stream ('rgb' or a track) -> number of frames."""
    pose_gt_counts: Dict[str, int]
    """track -> number of depth frames with a true pose."""


# ---------------------------------------------------------------------------------------------
# Poses


def raw_c2w_to_drb(c2w: Float[np.ndarray, "*bs 3 4"], convention: str) -> Float[np.ndarray, "*bs 3 4"]:
    """Raw camera-to-world (metres, `convention`) -> DRB world, OpenGL camera axes, metres."""
    c2w = np.asarray(c2w, dtype=np.float64)[..., :3, :]
    if convention == "drb":
        return c2w.copy()
    if convention not in ("opengl-enu", "opencv-enu"):
        raise ValueError(f"unknown pose convention '{convention}'; expected one of {POSE_CONVENTIONS}")
    rotation = np.einsum("ij,...jk->...ik", ENU_TO_DRB, c2w[..., :3])
    if convention == "opencv-enu":
        rotation = rotation @ OPENCV_TO_OPENGL_CAMERA
    position = np.einsum("ij,...j->...i", ENU_TO_DRB, c2w[..., 3])
    return np.concatenate([rotation, position[..., None]], axis=-1)


def drb_c2w_to_raw(c2w_drb: Float[np.ndarray, "*bs 3 4"], convention: str) -> Float[np.ndarray, "*bs 3 4"]:
    """The inverse of `raw_c2w_to_drb`: DRB metres back to a raw pose in `convention`."""
    c2w_drb = np.asarray(c2w_drb, dtype=np.float64)[..., :3, :]
    if convention == "drb":
        return c2w_drb.copy()
    if convention not in ("opengl-enu", "opencv-enu"):
        raise ValueError(f"unknown pose convention '{convention}'; expected one of {POSE_CONVENTIONS}")
    rotation = np.einsum("ij,...jk->...ik", ENU_TO_DRB.T, c2w_drb[..., :3])
    if convention == "opencv-enu":
        rotation = rotation @ OPENCV_TO_OPENGL_CAMERA
    position = np.einsum("ij,...j->...i", ENU_TO_DRB.T, c2w_drb[..., 3])
    return np.concatenate([rotation, position[..., None]], axis=-1)


def scene_normalisation(positions_drb: Float[np.ndarray, "n 3"]) -> Tuple[np.ndarray, float]:
    """(origin_drb, pose_scale_factor): bounding-box midpoint and largest distance from it."""
    positions_drb = np.asarray(positions_drb, dtype=np.float64)
    origin = (positions_drb.min(axis=0) + positions_drb.max(axis=0)) / 2
    scale = float(np.linalg.norm(positions_drb - origin, axis=-1).max())
    return origin, scale


def normalise_c2w(c2w_drb: Float[np.ndarray, "3 4"], origin_drb: np.ndarray, scale: float) -> np.ndarray:
    """c2w[:, 3] = (position_drb - origin_drb) / pose_scale_factor; rotation unchanged."""
    out = np.array(c2w_drb, dtype=np.float64)
    out[:, 3] = (out[:, 3] - origin_drb) / scale
    return out


def nearest_in_time(times: Float[np.ndarray, " m"], reference: Float[np.ndarray, " n"]) -> np.ndarray:
    """Index into the increasing `reference` of the time nearest to each of `times` (ties: the earlier)."""
    times, reference = np.asarray(times, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if len(reference) == 1:
        return np.zeros(len(times), dtype=int)
    right = np.clip(np.searchsorted(reference, times), 1, len(reference) - 1)
    left = right - 1
    return np.where(np.abs(reference[right] - times) < np.abs(times - reference[left]), right, left)


# ---------------------------------------------------------------------------------------------
# Reading the raw capture


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


def _read_poses(stream: RawStream, folder: Path, convention: str, every_frame: bool) -> None:
    """Fill stream.poses_drb from folder/STEM.txt; a pose needs its frame, and (every_frame) vice versa."""
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
            pose = read_layout_pose_txt(path)  # the layout's own checks: shape, finite, a proper rotation
        except LayoutError as error:
            raise RawDataError(error.path, error.problem) from error
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


def read_raw(config: ConvertConfig) -> Tuple[RawStream, Dict[str, RawStream], Dict[str, float]]:
    """(RGB stream, depth streams by track, depth scales by track), all checked; writes nothing."""
    raw = Path(config.raw).expanduser()
    if not raw.is_dir():
        raise RawDataError(raw, "raw capture folder does not exist")
    for name in (RAW_RGB_DIR, RAW_RGB_POSES_DIR):
        if not (raw / name).is_dir():
            raise RawDataError(raw / name, f"missing: a raw capture needs {RAW_RGB_DIR}/ and {RAW_RGB_POSES_DIR}/")
    rgb = _scan_stream(raw / RAW_RGB_DIR, RAW_RGB_DIR, RGB_EXTENSIONS + REENCODED_RGB_EXTENSIONS)
    _read_poses(rgb, raw / RAW_RGB_POSES_DIR, config.pose_convention, every_frame=True)
    _read_sizes(rgb, _image_size)

    depth: Dict[str, RawStream] = {}
    for track, (folder, pose_folder) in _depth_track_folders(raw).items():
        depth[track] = _scan_stream(folder, track, DEPTH_EXTENSIONS)
        if pose_folder is not None:
            _read_poses(depth[track], pose_folder, config.pose_convention, every_frame=False)
        _read_sizes(depth[track], _depth_size)

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


# ---------------------------------------------------------------------------------------------
# Writing


def split_of(index: int, val_every: int) -> str:
    """'val' for frames val_every//2, val_every//2 + val_every, ... of a stream, else 'train'."""
    return "val" if index % val_every == val_every // 2 else "train"


def _write_rgb(source: Path, target_stem: Path) -> Path:
    if source.suffix.lower() in RGB_EXTENSIONS:
        target = target_stem.with_name(target_stem.name + source.suffix)
        shutil.copyfile(source, target)
        return target
    target = target_stem.with_name(target_stem.name + ".png")
    try:
        with Image.open(source) as image:
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(target)
    except (OSError, ValueError) as error:
        raise RawDataError(source, f"cannot be decoded to re-encode it as PNG ({error})") from error
    return target


def _write_dataset(
    folder: Path,
    rgb: RawStream,
    depth: Dict[str, RawStream],
    scales: Dict[str, float],
    val_every: int,
    show_progress: bool,
) -> ConversionSummary:
    rgb_positions = np.stack([rgb.poses_drb[stem][:, 3] for stem in rgb.stems])
    origin, scale = scene_normalisation(rgb_positions)
    if not scale > 0:
        raise RawDataError(rgb.files[0].parent.parent / RAW_RGB_POSES_DIR, "all RGB cameras are at one position")
    torch.save({"origin_drb": torch.tensor(origin, dtype=torch.float64), "pose_scale_factor": scale},
               folder / "coordinates.pt")
    counts: Dict[str, Dict[str, int]] = {"train": {}, "val": {}}

    def target(split: str, sub: str, stem: str) -> Path:
        (folder / split / sub).mkdir(parents=True, exist_ok=True)
        counts[split][sub] = counts[split].get(sub, 0) + 1
        return folder / split / sub / stem

    steps = [(None, i) for i in range(len(rgb.files))] + [(t, i) for t in depth for i in range(len(depth[t].files))]
    if show_progress:
        from rich.progress import track as progress

        steps = progress(steps, description="Converting frames", transient=True)
    rgb_stems = rgb.stems
    rgb_c2w = {stem: normalise_c2w(rgb.poses_drb[stem], origin, scale) for stem in rgb_stems}
    for track, index in steps:
        stream = rgb if track is None else depth[track]
        source, time = stream.files[index], float(stream.times[index])
        stem = source.stem
        split = split_of(index, val_every)
        meta: Dict[str, Any] = {
            "W": stream.size[0],
            "H": stream.size[1],
            "intrinsics": torch.tensor(stream.intrinsics, dtype=torch.float64),
            "timestamp": time,
        }
        if track is None:
            _write_rgb(source, target(split, "rgbs", stem))
            meta["c2w"] = torch.tensor(rgb_c2w[stem], dtype=torch.float64)
            torch.save(meta, target(split, "metadata", stem + ".pt"))
            continue
        shutil.copyfile(source, target(split, f"depth_{track}", stem + source.suffix))
        prior = rgb_stems[int(nearest_in_time(np.array([time]), rgb.times)[0])]
        meta["c2w"] = torch.tensor(rgb_c2w[prior], dtype=torch.float64)
        if track in scales:
            meta["depth_scale"] = scales[track]
        torch.save(meta, target(split, f"metadata_depth_{track}", stem + ".pt"))
        if stem in stream.poses_drb:
            pose = normalise_c2w(stream.poses_drb[stem], origin, scale)
            np.savetxt(target(split, f"pose_gt_{track}", stem + ".txt"), pose, fmt="%.17g")

    streams = {"rgbs": RAW_RGB_DIR, **{f"depth_{t}": t for t in depth}}
    return ConversionSummary(
        out=folder,
        origin_drb=origin,
        pose_scale_factor=scale,
        counts={split: {streams[sub]: n for sub, n in c.items() if sub in streams} for split, c in counts.items()},
        pose_gt_counts={t: len(depth[t].poses_drb) for t in depth},
    )


def _record(config: ConvertConfig, summary: ConversionSummary) -> Dict[str, Any]:
    """What conversion.json says besides the file list."""
    return {
        "raw": str(Path(config.raw).expanduser().resolve()),
        "pose_convention": config.pose_convention,
        "val_every": config.val_every,
        "origin_drb": summary.origin_drb.tolist(),
        "pose_scale_factor": summary.pose_scale_factor,
        "counts": summary.counts,
        "depth_prior": "c2w of each depth frame = pose of the RGB frame nearest in time",
    }


def convert_raw(config: ConvertConfig, show_progress: bool = False) -> ConversionSummary:
    """Convert config.raw into config.out, validate it with read_layout, and say what was written."""
    if config.val_every < 2:
        raise ValueError(
            f"val_every must be at least 2 (frame val_every//2 is the first val frame), got {config.val_every}"
        )
    out = Path(config.out).expanduser().resolve()
    files_to_replace(out, config.overwrite, TOOL_NAME)  # fail before the work if OUT cannot be replaced
    rgb, depth, scales = read_raw(config)
    if len(rgb.files) <= config.val_every // 2:
        raise RawDataError(
            rgb.files[0].parent,
            f"{len(rgb.files)} RGB frames leave none for val/ with --val-every {config.val_every} "
            f"(the first val frame is number {config.val_every // 2}); lower --val-every",
        )

    staged = staging_folder(out)
    try:
        summary = _write_dataset(staged, rgb, depth, scales, config.val_every, show_progress)
        write_manifest(staged, TOOL_NAME, _record(config, summary))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                read_layout(staged)
            except LayoutError as error:  # a converter bug: everything it reads was checked above
                where = out / error.path.relative_to(staged) if error.path.is_relative_to(staged) else error.path
                raise RawDataError(where, f"the converted dataset fails validation: {error.problem}") from error
        move_into_place(staged, out, config.overwrite, TOOL_NAME)
    finally:
        discard(staged)
    for warning in caught:  # re-issued once the dataset is in place, where the folders they name exist
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    summary.out = out
    return summary
