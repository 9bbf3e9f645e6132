"""Reading and validating the dataset layout described in DATA_LAYOUT.md.

Pure file reading: no nerfstudio here, so scripts and tests can use it on their own.
`read_layout` opens only headers and the small metadata files (never decodes a full image or
depth map), so it stays fast on datasets with thousands of frames; `load_rgb` and
`load_depth_metres` decode one frame on demand.

Every mistake a user can make in the layout raises `LayoutError`, whose message starts with
the offending path.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

RGB_EXTENSIONS = (".jpg", ".jpeg", ".png")
"""Image types of RGB frames (compared case-insensitively)."""
DEPTH_EXTENSIONS = (".npy", ".pt", ".png", ".tif", ".tiff", ".jpg", ".jpeg")
"""Depth map types (compared case-insensitively)."""
RGB_METADATA_DIRS = ("metadata", "metadata_rgb")
"""Folder of RGB metadata and its alias."""
DEPTH_DIR_PREFIXES = ("depth_", "depthvis_")
"""Folder prefixes of a depth track (`depthvis_` is upstream Async-NeRF's name for 8-bit maps)."""
RGB_POSE_GT_TRACK = "rgb"
"""`pose_gt_rgb/` holds true RGB poses, so no depth track may be called `rgb`."""
MILLIMETRES = 0.001
"""Metres per stored unit of 16-bit depth images."""
ROTATION_TOLERANCE = 1e-2
"""Largest entry of |R^T R - I| accepted in a pose: loose enough for float32 round-off in
stored poses, tight enough to catch a scaled or sheared matrix."""
TIMESTAMP_RESOLUTION_S = 1e-3
"""Finest timestamp spacing a stored number must resolve (float32 at Unix times cannot)."""


class LayoutError(ValueError):
    """Something in the dataset does not follow the layout; `path` is the offending file or folder."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):
        # ValueError pickles with its args; ours takes two (multiprocessing needs this).
        return (LayoutError, (self.path, self.problem))


class LayoutWarning(UserWarning):
    """A layout that works but deserves the user's attention (e.g. extrapolated depth times)."""


@dataclass
class Coordinates:
    """Contents of `coordinates.pt`."""

    origin_drb: np.ndarray
    """Scene origin in metres, DRB frame, float64 (3,)."""
    pose_scale_factor: float
    """Metres per scene unit."""


@dataclass
class RgbFrame:
    """One RGB frame: image, metadata and optional true pose."""

    stem: str
    image_path: Path
    metadata_path: Path
    width: int
    """Width W from the metadata; the image is used at this size."""
    height: int
    """Height H from the metadata."""
    intrinsics: np.ndarray
    """fx, fy, cx, cy for W x H, float64 (4,)."""
    c2w: np.ndarray
    """Camera-to-world, normalised DRB world, OpenGL camera axes, float64 (3, 4)."""
    timestamp: Optional[float]
    """Capture time in seconds, or None if neither the metadata nor the stem gives one."""
    pose_gt: Optional[np.ndarray] = None
    """True pose from `pose_gt_rgb/`, same convention as `c2w`, float64 (3, 4)."""
    pose_gt_path: Optional[Path] = None
    file_size: Tuple[int, int] = (0, 0)
    """(width, height) of the image file on disk; differs from (W, H) when it must be resized."""
    file_mode: str = "RGB"
    """PIL mode of the image file (RGB, RGBA, L, P, ...)."""


@dataclass
class DepthFrame:
    """One frame of a depth track."""

    track: str
    stem: str
    depth_path: Path
    metadata_path: Path
    width: int
    height: int
    intrinsics: np.ndarray
    """fx, fy, cx, cy for W x H, float64 (4,)."""
    timestamp: float
    """Capture time in seconds (the depth sensor's clock, same time base as the RGB frames)."""
    c2w_prior: Optional[np.ndarray]
    """Prior pose from the metadata (may be wrong), normalised DRB, float64 (3, 4)."""
    depth_scale: float
    """Metres per stored unit."""
    depth_is_ray: bool
    """True: values are distances along the ray; False: planar z-depth."""
    pose_gt: Optional[np.ndarray] = None
    """True pose from `pose_gt_TRACK/`, for evaluation only, float64 (3, 4)."""
    pose_gt_path: Optional[Path] = None


@dataclass
class SplitLayout:
    """The frames of one split (train/ or val/)."""

    name: str
    rgb: List[RgbFrame] = field(default_factory=list)
    depth: Dict[str, List[DepthFrame]] = field(default_factory=dict)
    """Depth frames per track name, sorted by timestamp."""

    @property
    def rgb_timestamps(self) -> Optional[np.ndarray]:
        """float64 (N,) times of the RGB frames in list order, or None unless every frame has one."""
        if not self.rgb or any(frame.timestamp is None for frame in self.rgb):
            return None
        return np.array([frame.timestamp for frame in self.rgb], dtype=np.float64)


@dataclass
class DatasetLayout:
    """A whole dataset: coordinates and the train/val splits (a missing val/ is an empty split)."""

    root: Path
    coordinates: Coordinates
    splits: Dict[str, SplitLayout]


# ---------------------------------------------------------------------------------------------
# Reading


def read_layout(root: Path | str) -> DatasetLayout:
    """Read and validate the dataset at `root`; raises LayoutError naming the first bad path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LayoutError(root, "dataset folder does not exist")
    coordinates = _read_coordinates(root / "coordinates.pt")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise LayoutError(train_dir, "missing: a dataset needs a train/ split")
    splits = {"train": _read_split(train_dir, "train")}
    val_dir = root / "val"
    splits["val"] = _read_split(val_dir, "val") if val_dir.is_dir() else SplitLayout(name="val")
    if not splits["train"].rgb:
        raise LayoutError(train_dir / "rgbs", "no RGB frames in the train split")

    _check_rgb_times_for_depth(splits)
    _warn_depth_outside_rgb_span(splits, root)
    return DatasetLayout(root=root, coordinates=coordinates, splits=splits)


def _read_coordinates(path: Path) -> Coordinates:
    if not path.is_file():
        raise LayoutError(path, "missing: the dataset root needs coordinates.pt (origin_drb, pose_scale_factor)")
    data = _load_torch_file(path)
    if not isinstance(data, Mapping):
        raise LayoutError(path, f"expected a dict with origin_drb and pose_scale_factor, found {type(data).__name__}")
    for key in ("origin_drb", "pose_scale_factor"):
        if key not in data:
            raise LayoutError(path, f"missing key '{key}'")
    origin = _numbers(data["origin_drb"], path, "origin_drb").reshape(-1)
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise LayoutError(path, f"origin_drb must be 3 finite numbers, found {origin.tolist()}")
    scale = _numbers(data["pose_scale_factor"], path, "pose_scale_factor").reshape(-1)
    if scale.shape != (1,) or not math.isfinite(scale[0]) or scale[0] <= 0:
        raise LayoutError(path, f"pose_scale_factor must be one finite positive number, found {scale.tolist()}")
    return Coordinates(origin_drb=origin, pose_scale_factor=float(scale[0]))


def _read_split(split_dir: Path, name: str) -> SplitLayout:
    rgb_dir = split_dir / "rgbs"
    metadata_dir = _pick_alias(split_dir, RGB_METADATA_DIRS)
    if not rgb_dir.is_dir():
        raise LayoutError(rgb_dir, "missing: each split needs an rgbs/ folder")
    if metadata_dir is None:
        raise LayoutError(split_dir / "metadata", "missing: each split needs RGB metadata (metadata/ or metadata_rgb/)")
    images = _index_folder(rgb_dir, RGB_EXTENSIONS)
    metadata = _index_folder(metadata_dir, (".pt",))
    _check_pairs(metadata, images, rgb_dir, "image")
    _check_pairs(images, metadata, metadata_dir, "metadata file")
    rgb_pose_gt = _pose_gt_files(split_dir, RGB_POSE_GT_TRACK, images, rgb_dir)

    rgb = [_read_rgb_frame(stem, images[stem], metadata[stem], rgb_pose_gt.get(stem)) for stem in sorted(images)]
    if rgb and all(frame.timestamp is not None for frame in rgb):
        rgb.sort(key=lambda frame: frame.timestamp)
        _check_unique_times([frame.timestamp for frame in rgb], [frame.metadata_path for frame in rgb])

    depth = {track: _read_depth_track(split_dir, track, folder) for track, folder in _depth_folders(split_dir).items()}
    return SplitLayout(name=name, rgb=rgb, depth=depth)


def _read_rgb_frame(stem: str, image_path: Path, metadata_path: Path, pose_gt_path: Optional[Path]) -> RgbFrame:
    meta = _load_metadata(metadata_path)
    width, height = _read_size(meta, metadata_path)
    with _open_image(image_path) as image:
        file_size, file_mode = image.size, image.mode
    return RgbFrame(
        stem=stem,
        image_path=image_path,
        metadata_path=metadata_path,
        width=width,
        height=height,
        intrinsics=_read_intrinsics(meta, metadata_path),
        c2w=_read_pose(_required(meta, "c2w", metadata_path), metadata_path, "c2w"),
        timestamp=_read_timestamp(meta, stem, metadata_path),
        pose_gt=None if pose_gt_path is None else read_layout_pose_txt(pose_gt_path),
        pose_gt_path=pose_gt_path,
        file_size=file_size,
        file_mode=file_mode,
    )


def _read_depth_track(split_dir: Path, track: str, depth_dir: Path) -> List[DepthFrame]:
    metadata_dir = split_dir / f"metadata_depth_{track}"
    if not metadata_dir.is_dir():
        raise LayoutError(metadata_dir, f"missing: depth track '{track}' ({depth_dir.name}/) needs its metadata folder")
    depth_files = _index_folder(depth_dir, DEPTH_EXTENSIONS)
    metadata = _index_folder(metadata_dir, (".pt",))
    _check_pairs(metadata, depth_files, depth_dir, "depth file")
    _check_pairs(depth_files, metadata, metadata_dir, "metadata file")
    pose_gt = _pose_gt_files(split_dir, track, depth_files, depth_dir)
    frames = [
        _read_depth_frame(track, stem, depth_files[stem], metadata[stem], pose_gt.get(stem))
        for stem in sorted(depth_files)
    ]
    frames.sort(key=lambda frame: frame.timestamp)
    _check_unique_times([frame.timestamp for frame in frames], [frame.metadata_path for frame in frames])
    return frames


def _read_depth_frame(
    track: str, stem: str, depth_path: Path, metadata_path: Path, pose_gt_path: Optional[Path]
) -> DepthFrame:
    meta = _load_metadata(metadata_path)
    width, height = _read_size(meta, metadata_path)
    timestamp = _read_timestamp(meta, stem, metadata_path)
    if timestamp is None:
        raise LayoutError(
            metadata_path,
            "depth frame without a timestamp: set 'timestamp' (seconds) in the metadata or name the file by its time",
        )
    stored_hw, default_scale = depth_header(depth_path)
    if stored_hw != (height, width):
        stored = f"{stored_hw[1]}x{stored_hw[0]}"
        raise LayoutError(depth_path, f"depth map is {stored}, metadata says W x H = {width}x{height}")
    scale = default_scale
    if meta.get("depth_scale") is not None:
        value = _numbers(meta["depth_scale"], metadata_path, "depth_scale").reshape(-1)
        if value.shape != (1,) or not math.isfinite(value[0]) or value[0] <= 0:
            raise LayoutError(metadata_path, f"depth_scale must be one finite positive number, found {value.tolist()}")
        scale = float(value[0])
    kind = meta.get("depth_kind", "z")
    if kind not in ("z", "planar", "ray"):
        raise LayoutError(metadata_path, f"depth_kind must be 'ray' or 'z' (planar), found {kind!r}")
    prior = meta.get("c2w")
    return DepthFrame(
        track=track,
        stem=stem,
        depth_path=depth_path,
        metadata_path=metadata_path,
        width=width,
        height=height,
        intrinsics=_read_intrinsics(meta, metadata_path),
        timestamp=timestamp,
        c2w_prior=None if prior is None else _read_pose(prior, metadata_path, "c2w"),
        depth_scale=scale,
        depth_is_ray=kind == "ray",
        pose_gt=None if pose_gt_path is None else read_layout_pose_txt(pose_gt_path),
        pose_gt_path=pose_gt_path,
    )


# ---------------------------------------------------------------------------------------------
# Folders and pairing


def _pick_alias(parent: Path, names: Sequence[str]) -> Optional[Path]:
    present = [parent / name for name in names if (parent / name).is_dir()]
    if len(present) > 1:
        raise LayoutError(parent, f"both {present[0].name}/ and {present[1].name}/ exist; keep one of them")
    return present[0] if present else None


def _index_folder(folder: Path, extensions: Sequence[str]) -> Dict[str, Path]:
    """stem -> file for the files of `folder` with one of `extensions`; hidden files are ignored."""
    index: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in extensions:
            continue
        if path.stem in index:
            raise LayoutError(path, f"two files with stem '{path.stem}' ({index[path.stem].name}); keep one")
        index[path.stem] = path
    return index


def _check_pairs(have: Dict[str, Path], need: Dict[str, Path], need_dir: Path, what: str) -> None:
    """Every file in `have` needs a partner with the same stem in `need`."""
    missing = [stem for stem in sorted(have) if stem not in need]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        others = sorted(p.name for p in need_dir.glob(f"{missing[0]}.*")) if need_dir.is_dir() else []
        hint = f"; found {', '.join(others)}, which is not a supported type" if others else ""
        raise LayoutError(have[missing[0]], f"no {what} with stem '{missing[0]}' in {need_dir}{hint}{more}")


def _depth_folders(split_dir: Path) -> Dict[str, Path]:
    """track -> depth folder; checks that metadata_depth_* and pose_gt_* folders belong to a track."""
    folders: Dict[str, Path] = {}
    for path in sorted(split_dir.iterdir()):
        if not path.is_dir():
            continue
        prefix = next((p for p in DEPTH_DIR_PREFIXES if path.name.startswith(p)), None)
        if prefix is None:
            continue
        track = path.name[len(prefix) :]
        if not track:
            raise LayoutError(path, "a depth folder needs a track name, e.g. depth_lidar/")
        if track == RGB_POSE_GT_TRACK:
            raise LayoutError(path, f"track name '{track}' is reserved (pose_gt_rgb/ holds RGB poses)")
        if track in folders:
            raise LayoutError(path, f"track '{track}' has two depth folders ({folders[track].name}/); keep one")
        folders[track] = path
    for path in sorted(split_dir.glob("metadata_depth_*")):
        track = path.name[len("metadata_depth_") :]
        if path.is_dir() and track not in folders:
            raise LayoutError(path, f"no depth folder depth_{track}/ (or depthvis_{track}/) for this metadata")
    for path in sorted(split_dir.glob("pose_gt_*")):
        track = path.name[len("pose_gt_") :]
        if path.is_dir() and track != RGB_POSE_GT_TRACK and track not in folders:
            raise LayoutError(path, f"no depth track '{track}' for these poses (expected depth_{track}/)")
    return folders


def _pose_gt_files(split_dir: Path, track: str, frames: Dict[str, Path], frames_dir: Path) -> Dict[str, Path]:
    """stem -> pose_gt_TRACK/STEM.txt; a pose without its frame is an error (a misnamed file)."""
    folder = split_dir / f"pose_gt_{track}"
    if not folder.is_dir():
        return {}
    poses = _index_folder(folder, (".txt",))
    _check_pairs(poses, frames, frames_dir, "frame")
    return poses


# ---------------------------------------------------------------------------------------------
# Values


def _load_torch_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise LayoutError(path, f"cannot be read by torch.load ({_short_load_error(error)})") from error


def _short_load_error(error: Exception) -> str:
    """The informative line of a torch.load failure (weights-only errors run to a dozen lines)."""
    text = str(error)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        hint = "; store values as tensors or Python numbers" if "numpy" in match.group(1) else ""
        return f"it holds {match.group(1)}, which weights-only loading refuses{hint}"
    if "WeightsUnpickler error:" in text:
        detail = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()]
        return f"not a torch.save file of tensors and numbers: {detail[0] if detail else 'unpickling failed'}"
    if isinstance(error, EOFError):
        return "empty or truncated file"
    lines = text.strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _load_metadata(path: Path) -> Mapping[str, Any]:
    data = _load_torch_file(path)
    if not isinstance(data, Mapping):
        raise LayoutError(path, f"metadata must be a dict, found {type(data).__name__}")
    return data


def _required(meta: Mapping[str, Any], key: str, path: Path) -> Any:
    if meta.get(key) is None:
        raise LayoutError(path, f"missing key '{key}'")
    return meta[key]


def _numbers(value: Any, path: Path, key: str) -> np.ndarray:
    try:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().to(torch.float64).numpy()
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise LayoutError(path, f"'{key}' is not numeric ({error})") from error
    return array


def _read_size(meta: Mapping[str, Any], path: Path) -> Tuple[int, int]:
    size = []
    for key in ("W", "H"):
        value = _numbers(_required(meta, key, path), path, key).reshape(-1)
        if value.shape != (1,) or not math.isfinite(value[0]) or value[0] < 1 or value[0] != round(value[0]):
            raise LayoutError(path, f"'{key}' must be one positive integer, found {value.tolist()}")
        size.append(int(value[0]))
    return size[0], size[1]


def _read_intrinsics(meta: Mapping[str, Any], path: Path) -> np.ndarray:
    value = _numbers(_required(meta, "intrinsics", path), path, "intrinsics")
    if value.shape != (4,):
        raise LayoutError(path, f"'intrinsics' must be [fx, fy, cx, cy] (shape (4,)), found shape {value.shape}")
    if not np.all(np.isfinite(value)) or value[0] <= 0 or value[1] <= 0:
        raise LayoutError(path, f"'intrinsics' must be finite with fx, fy > 0, found {value.tolist()}")
    return value


def _read_pose(value: Any, path: Path, key: str) -> np.ndarray:
    pose = _numbers(value, path, key)
    if pose.shape == (4, 4) and np.allclose(pose[3], [0, 0, 0, 1]):
        pose = pose[:3]
    if pose.shape != (3, 4):
        raise LayoutError(path, f"'{key}' must be a 3x4 (or 4x4 rigid) matrix, found shape {pose.shape}")
    if not np.all(np.isfinite(pose)):
        raise LayoutError(path, f"'{key}' has non-finite numbers: {pose.tolist()}")
    rotation = pose[:, :3]
    deviation = np.abs(rotation.T @ rotation - np.eye(3)).max()
    det = np.linalg.det(rotation)
    if deviation > ROTATION_TOLERANCE or det <= 0:
        raise LayoutError(
            path, f"'{key}' rotation is not a proper rotation (|R^T R - I| = {deviation:.3g}, det = {det:.3g})"
        )
    return pose


def read_layout_pose_txt(path: Path) -> np.ndarray:
    """A pose_gt text file of the layout: a 3x4 (or 4x4) matrix with a proper rotation, else LayoutError.
    (trajectory/pose_files.read_pose_txt reads upstream's pose folders, with its own error type.)"""
    try:
        pose = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as error:
        raise LayoutError(path, f"cannot parse a matrix ({error})") from error
    return _read_pose(pose, path, "pose")


def _read_timestamp(meta: Mapping[str, Any], stem: str, path: Path) -> Optional[float]:
    value = meta.get("timestamp")
    if value is None:
        try:
            parsed = float(stem)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    array = _numbers(value, path, "timestamp").reshape(-1)
    if array.shape != (1,) or not math.isfinite(array[0]):
        raise LayoutError(path, f"'timestamp' must be one finite number (seconds), found {array.tolist()}")
    timestamp = float(array[0])
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        # torch.tensor(t) defaults to float32, which rounds Unix times to 2 minutes: catch it here,
        # where it can be named, rather than as "duplicate timestamps".
        spacing = float(np.spacing(np.abs(value.detach().cpu().numpy().astype(np.float32).reshape(-1)[0])))
        if spacing > TIMESTAMP_RESOLUTION_S:
            raise LayoutError(
                path,
                f"'timestamp' is stored as {value.dtype}, which resolves only {spacing:.3g} s at {timestamp:.3f}; "
                "store it as a Python float or a float64 tensor",
            )
    return timestamp


def _check_unique_times(times: List[float], paths: List[Path]) -> None:
    """`times` sorted; two equal neighbours are a duplicate."""
    for i in range(1, len(times)):
        if times[i] == times[i - 1]:
            raise LayoutError(paths[i], f"duplicate timestamp {times[i]!r} (also in {paths[i - 1]})")


def _check_rgb_times_for_depth(splits: Dict[str, SplitLayout]) -> None:
    """Depth frames are placed on the RGB trajectory, so with any depth track every RGB frame needs a time."""
    if not any(frames for split in splits.values() for frames in split.depth.values()):
        return
    for split in splits.values():
        for frame in split.rgb:
            if frame.timestamp is None:
                raise LayoutError(
                    frame.metadata_path,
                    "RGB frame without a timestamp in a dataset with depth tracks: set 'timestamp' in the metadata "
                    "or name the files by their time",
                )


def _warn_depth_outside_rgb_span(splits: Dict[str, SplitLayout], root: Path) -> None:
    times = splits["train"].rgb_timestamps
    if times is None:
        return
    start, end = float(times.min()), float(times.max())
    for split in splits.values():
        for track, frames in split.depth.items():
            outside = sum(1 for frame in frames if not start <= frame.timestamp <= end)
            if outside:
                folder = frames[0].depth_path.parent.relative_to(root)
                warnings.warn(
                    f"{folder}: {outside} of {len(frames)} frames of depth track '{track}' lie outside the train "
                    f"RGB time span [{start:.3f}, {end:.3f}] s; their poses are extrapolated",
                    LayoutWarning,
                    stacklevel=3,
                )


# ---------------------------------------------------------------------------------------------
# Images and depth maps


def _open_image(path: Path) -> Image.Image:
    """Open the header only (PIL decodes lazily)."""
    try:
        return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise LayoutError(path, f"cannot be read as an image ({error})") from error


def _hw(shape: Sequence[int]) -> Optional[Tuple[int, int]]:
    """(H, W) of an HxW, HxWx1 or 1xHxW array, else None."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
    elif len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    return shape if len(shape) == 2 else None  # type: ignore[return-value]


def _depth_scale_for_mode(path: Path, mode: str) -> float:
    """Default metres per stored unit of a depth image, from its PIL mode."""
    if mode.startswith("I;16") or mode == "I":
        return MILLIMETRES
    if mode in ("L", "F"):
        # 8-bit maps are metres per grey level; float TIFFs are metres.
        return 1.0
    raise LayoutError(path, f"depth image has mode {mode}; expected one channel (8-bit, 16-bit or float)")


def _load_depth_tensor(path: Path, mmap: bool) -> torch.Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        if mmap:  # files in torch's legacy (non-zip) format cannot be memory-mapped
            return _load_depth_tensor(path, mmap=False)
        raise LayoutError(path, f"cannot be read by torch.load ({_short_load_error(error)})") from error
    if not isinstance(value, torch.Tensor) or value.is_complex() or value.dtype == torch.bool:
        raise LayoutError(path, f"expected a real-valued depth tensor, found {type(value).__name__}")
    return value


def depth_header(path: Path) -> Tuple[Tuple[int, int], float]:
    """((H, W), default metres per unit) of a depth file, without decoding the whole map."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise LayoutError(path, f"cannot be read as a .npy array ({error})") from error
        if array.dtype.kind not in "fiu":
            raise LayoutError(path, f"depth array has dtype {array.dtype}; expected a float or integer array")
        shape, scale = array.shape, 1.0
    elif suffix == ".pt":
        shape, scale = _load_depth_tensor(path, mmap=True).shape, 1.0
    else:
        with _open_image(path) as image:
            shape, scale = (image.size[1], image.size[0]), _depth_scale_for_mode(path, image.mode)
    hw = _hw(shape)
    if hw is None:
        raise LayoutError(path, f"depth map must be H x W, found shape {tuple(shape)}")
    return hw, scale


def load_rgb(frame: RgbFrame) -> np.ndarray:
    """uint8 (H, W, 3) image of `frame`, resized (bilinear, antialiased) to W x H if the file differs."""
    try:
        with Image.open(frame.image_path) as image:
            image = image.convert("RGB")
            if image.size != (frame.width, frame.height):
                image = image.resize((frame.width, frame.height), resample=Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, ValueError) as error:
        raise LayoutError(frame.image_path, f"cannot be decoded ({error})") from error


def load_depth_metres(frame: DepthFrame) -> np.ndarray:
    """float32 (H, W) depth in metres; 0 where the file has no measurement (0, negative or non-finite)."""
    path = frame.depth_path
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
        elif suffix == ".pt":
            raw = _load_depth_tensor(path, mmap=False).to(torch.float64).numpy()
        else:
            with Image.open(path) as image:
                raw = np.asarray(image)
    except (OSError, ValueError) as error:
        raise LayoutError(path, f"cannot be decoded ({error})") from error
    hw = _hw(raw.shape)
    if hw != (frame.height, frame.width):
        raise LayoutError(path, f"depth map has shape {raw.shape}, metadata says H x W = {frame.height}x{frame.width}")
    depth = raw.reshape(hw).astype(np.float64) * frame.depth_scale
    depth[~np.isfinite(depth) | (depth <= 0)] = 0.0
    return depth.astype(np.float32)
