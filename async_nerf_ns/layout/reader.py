"""Reading and validating the dataset layout described in docs/DATA_LAYOUT.md.

Pure file reading: no nerfstudio here, so scripts and tests can use it on their own.
`read_layout` walks the folders and opens only headers and the small metadata files (never
decodes a full image or depth map), so it stays fast on datasets with thousands of frames;
`load_rgb` and `load_depth_metres` decode one frame on demand.

Every mistake a user can make in the layout raises `LayoutError`, whose message starts with
the offending path. The package (`async_nerf_ns.layout`) is the layout's public face.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from async_nerf_ns.layout.frame_files import depth_header, lidar_rows, mask_problem, open_image
from async_nerf_ns.layout.types import (
    DEPTH_DIR_PREFIXES,
    DEPTH_EXTENSIONS,
    LIDAR_DIR_PREFIX,
    LIDAR_EXTENSIONS,
    MASK_DIR,
    MASK_EXTENSIONS,
    RGB_EXTENSIONS,
    RGB_METADATA_DIRS,
    RGB_POSE_GT_TRACK,
    DatasetLayout,
    DepthFrame,
    LayoutError,
    LayoutWarning,
    LidarScan,
    RgbFrame,
    SplitLayout,
)
from async_nerf_ns.layout.values import (
    as_numbers,
    load_metadata,
    read_coordinates,
    read_intrinsics,
    read_pose_txt,
    read_pose,
    read_positive_number,
    read_size,
    read_timestamp,
    required_value,
)

LAYOUT_DOC = "docs/DATA_LAYOUT.md"
"""Where the layout is documented, relative to the repository root."""


# ---------------------------------------------------------------------------------------------
# Reading


def read_layout(root: Path | str) -> DatasetLayout:
    """Read and validate the dataset at `root`; raises LayoutError naming the first bad path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LayoutError(root, "dataset folder does not exist")
    coordinates_path = root / "coordinates.pt"
    if not coordinates_path.is_file():
        raise LayoutError(coordinates_path, _not_a_dataset(root))
    coordinates = read_coordinates(coordinates_path)
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


def _not_a_dataset(root: Path) -> str:
    """What to do about a --data folder without coordinates.pt: convert a raw capture, or read the layout doc."""
    convert = "async-nerf-convert --raw RAW --out DATA --pose-convention {opengl-enu,opencv-enu,drb}"
    if (root / "rgb").is_dir() and (root / "rgb_poses").is_dir():
        convert = convert.replace("RAW", str(root))
        first = f"missing: {root} looks like a raw capture (rgb/, rgb_poses/), not a dataset; convert it with"
    else:
        first = (
            "missing: every async-nerf dataset has coordinates.pt (origin_drb, pose_scale_factor) at its root. "
            "To get the layout, convert a raw capture (frames and poses named by timestamp) with"
        )
    return f"{first} `{convert}`; the layout is described in {LAYOUT_DOC} of the async-nerf repository"


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
    _attach_masks(split_dir, rgb, rgb_dir)
    if rgb and all(frame.timestamp is not None for frame in rgb):
        rgb.sort(key=lambda frame: frame.timestamp)
        _check_unique_times([frame.timestamp for frame in rgb], [frame.metadata_path for frame in rgb])

    lidar_folders = _lidar_folders(split_dir)
    depth_folders = _depth_folders(split_dir, lidar_folders)
    shared = sorted(set(lidar_folders) & set(depth_folders))
    if shared:
        raise LayoutError(
            lidar_folders[shared[0]],
            f"a LiDAR track and a depth track are both called '{shared[0]}' ({depth_folders[shared[0]].name}/): each "
            "track has its own clock offset, so their names must differ",
        )
    depth = {track: _read_depth_track(split_dir, track, folder) for track, folder in depth_folders.items()}
    lidar = {track: _read_lidar_track(split_dir, track, folder) for track, folder in lidar_folders.items()}
    return SplitLayout(name=name, rgb=rgb, depth=depth, lidar=lidar)


def _read_rgb_frame(stem: str, image_path: Path, metadata_path: Path, pose_gt_path: Optional[Path]) -> RgbFrame:
    meta = load_metadata(metadata_path)
    width, height = read_size(meta, metadata_path)
    with open_image(image_path) as image:
        file_size, file_mode = image.size, image.mode
    return RgbFrame(
        stem=stem,
        image_path=image_path,
        metadata_path=metadata_path,
        width=width,
        height=height,
        intrinsics=read_intrinsics(meta, metadata_path),
        c2w=read_pose(required_value(meta, "c2w", metadata_path), metadata_path, "c2w"),
        timestamp=read_timestamp(meta, stem, metadata_path),
        pose_gt=None if pose_gt_path is None else read_pose_txt(pose_gt_path),
        pose_gt_path=pose_gt_path,
        file_size=file_size,
        file_mode=file_mode,
    )


def _attach_masks(split_dir: Path, frames: List[RgbFrame], rgb_dir: Path) -> None:
    """Pairs `masks/STEM.png` with its RGB frame and checks it (one channel, the image file's size); an image
    without a mask keeps every pixel, a mask without an image is an error (a misnamed file)."""
    folder = split_dir / MASK_DIR
    if not folder.is_dir():
        return
    masks = _index_folder(folder, MASK_EXTENSIONS)
    _check_pairs(masks, {frame.stem: frame.image_path for frame in frames}, rgb_dir, "RGB image")
    others = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.stem not in masks)
    if others:  # another file type (a JPEG mask): mask_problem says which types are masks
        raise LayoutError(others[0], mask_problem(others[0], (0, 0), ""))
    for frame in frames:
        path = masks.get(frame.stem)
        if path is None:
            continue
        problem = mask_problem(path, frame.file_size, f"its image {frame.image_path.name} is")
        if problem:
            raise LayoutError(path, problem)
        frame.mask_path = path


def _track_files(
    data_dir: Path, metadata_dir: Path, extensions: Sequence[str], track: str, what: str
) -> Tuple[Dict[str, Path], Dict[str, Path]]:
    """stem -> file of a track's data folder and of its metadata folder, every file paired with the other."""
    if not metadata_dir.is_dir():
        raise LayoutError(metadata_dir, f"missing: {track} ({data_dir.name}/) needs its metadata folder")
    files = _index_folder(data_dir, extensions)
    metadata = _index_folder(metadata_dir, (".pt",))
    _check_pairs(metadata, files, data_dir, what)
    _check_pairs(files, metadata, metadata_dir, "metadata file")
    return files, metadata


def _in_time_order(frames: List) -> List:
    """Frames (depth frames or LiDAR scans) sorted by timestamp; two with one time are an error."""
    frames.sort(key=lambda frame: frame.timestamp)
    _check_unique_times([frame.timestamp for frame in frames], [frame.metadata_path for frame in frames])
    return frames


def _read_depth_track(split_dir: Path, track: str, depth_dir: Path) -> List[DepthFrame]:
    depth_files, metadata = _track_files(
        depth_dir, split_dir / f"metadata_depth_{track}", DEPTH_EXTENSIONS, f"depth track '{track}'", "depth file"
    )
    pose_gt = _pose_gt_files(split_dir, track, depth_files, depth_dir)
    return _in_time_order([
        _read_depth_frame(track, stem, depth_files[stem], metadata[stem], pose_gt.get(stem))
        for stem in sorted(depth_files)
    ])


def _read_depth_frame(
    track: str, stem: str, depth_path: Path, metadata_path: Path, pose_gt_path: Optional[Path]
) -> DepthFrame:
    meta = load_metadata(metadata_path)
    width, height = read_size(meta, metadata_path)
    timestamp = read_timestamp(meta, stem, metadata_path)
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
        scale = read_positive_number(meta["depth_scale"], metadata_path, "depth_scale")
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
        intrinsics=read_intrinsics(meta, metadata_path),
        timestamp=timestamp,
        c2w_prior=None if prior is None else read_pose(prior, metadata_path, "c2w"),
        depth_scale=scale,
        depth_is_ray=kind == "ray",
        pose_gt=None if pose_gt_path is None else read_pose_txt(pose_gt_path),
        pose_gt_path=pose_gt_path,
    )


def _read_lidar_track(split_dir: Path, track: str, lidar_dir: Path) -> List[LidarScan]:
    scan_files, metadata = _track_files(
        lidar_dir, split_dir / f"metadata_lidar_{track}", LIDAR_EXTENSIONS, f"LiDAR track '{track}'", "LiDAR scan (.npy)"
    )
    extrinsic_path = split_dir / f"lidar_to_camera_{track}.txt"
    extrinsic = _homogeneous(read_pose_txt(extrinsic_path)) if extrinsic_path.is_file() else None
    pose_gt = _pose_gt_files(split_dir, f"lidar_{track}", scan_files, lidar_dir)
    return _in_time_order([
        _read_lidar_scan(track, stem, scan_files[stem], metadata[stem], extrinsic, extrinsic_path, pose_gt.get(stem))
        for stem in sorted(scan_files)
    ])


def _homogeneous(pose: np.ndarray) -> np.ndarray:
    """(4, 4) float64 from a checked 3x4 rigid pose."""
    extrinsic = np.eye(4)
    extrinsic[:3] = pose
    return extrinsic


def _read_lidar_scan(
    track: str, stem: str, points_path: Path, metadata_path: Path, track_extrinsic: Optional[np.ndarray],
    extrinsic_path: Path, pose_gt_path: Optional[Path],
) -> LidarScan:
    meta = load_metadata(metadata_path)
    timestamp = read_timestamp(meta, stem, metadata_path)
    if timestamp is None:
        raise LayoutError(
            metadata_path,
            "LiDAR scan without a timestamp: set 'timestamp' (seconds) in the metadata or name the file by its time",
        )
    extrinsic = track_extrinsic
    if meta.get("lidar_to_camera") is not None:
        extrinsic = _homogeneous(read_pose(meta["lidar_to_camera"], metadata_path, "lidar_to_camera"))
        if track_extrinsic is not None and not np.allclose(extrinsic, track_extrinsic, rtol=0.0, atol=1e-6):
            raise LayoutError(
                metadata_path,
                f"'lidar_to_camera' differs from {extrinsic_path.name}; give the extrinsic in one place (or the same in both)",
            )
    if extrinsic is None:
        raise LayoutError(
            metadata_path,
            f"no 'lidar_to_camera' for this scan: put the LiDAR's 4x4 pose in the camera frame in its metadata or in "
            f"{extrinsic_path}",
        )
    limits = []
    for key, default in (("min_range", 0.0), ("max_range", float("inf"))):
        value = meta.get(key)
        if value is None:
            limits.append(default)
        elif key == "min_range" and float(as_numbers(value, metadata_path, key).reshape(-1)[0]) == 0.0:
            limits.append(0.0)
        else:
            limits.append(read_positive_number(value, metadata_path, key))
    if limits[0] >= limits[1]:
        raise LayoutError(metadata_path, f"min_range {limits[0]} is not below max_range {limits[1]}")
    return LidarScan(
        track=track,
        stem=stem,
        points_path=points_path,
        metadata_path=metadata_path,
        timestamp=timestamp,
        num_rows=lidar_rows(points_path),
        lidar_to_camera=extrinsic,
        min_range=limits[0],
        max_range=limits[1],
        pose_gt=None if pose_gt_path is None else read_pose_txt(pose_gt_path),
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


def _lidar_folders(split_dir: Path) -> Dict[str, Path]:
    """LiDAR track -> its lidar_TRACK/ folder; checks that metadata_lidar_* folders and
    lidar_to_camera_*.txt files belong to a track."""
    folders: Dict[str, Path] = {}
    for path in sorted(split_dir.glob(f"{LIDAR_DIR_PREFIX}*")):
        if not path.is_dir():
            continue
        track = path.name[len(LIDAR_DIR_PREFIX) :]
        if not track:
            raise LayoutError(path, "a LiDAR folder needs a track name, e.g. lidar_top/")
        if track == RGB_POSE_GT_TRACK:
            raise LayoutError(path, f"track name '{track}' is reserved (pose_gt_rgb/ holds RGB poses)")
        folders[track] = path
    for path in sorted(split_dir.glob("metadata_lidar_*")):
        track = path.name[len("metadata_lidar_") :]
        if path.is_dir() and track not in folders:
            raise LayoutError(path, f"no LiDAR folder lidar_{track}/ for this metadata")
    for path in sorted(split_dir.glob("lidar_to_camera_*.txt")):
        track = path.stem[len("lidar_to_camera_") :]
        if track not in folders:
            raise LayoutError(path, f"no LiDAR folder lidar_{track}/ for this extrinsic")
    return folders


def _depth_folders(split_dir: Path, lidar_folders: Optional[Dict[str, Path]] = None) -> Dict[str, Path]:
    """track -> depth folder; checks that metadata_depth_* and pose_gt_* folders belong to a track
    (``pose_gt_lidar_X/`` belongs to the LiDAR track X when there is one)."""
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
        lidar_track = track.startswith(LIDAR_DIR_PREFIX) and track[len(LIDAR_DIR_PREFIX) :] in (lidar_folders or {})
        if path.is_dir() and track != RGB_POSE_GT_TRACK and track not in folders and not lidar_track:
            raise LayoutError(path, f"no depth track '{track}' for these poses (expected depth_{track}/ or a LiDAR track)")
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
# Times across frames


def _check_unique_times(times: List[float], paths: List[Path]) -> None:
    """`times` sorted; two equal neighbours are a duplicate."""
    for i in range(1, len(times)):
        if times[i] == times[i - 1]:
            raise LayoutError(paths[i], f"duplicate timestamp {times[i]!r} (also in {paths[i - 1]})")


def _check_rgb_times_for_depth(splits: Dict[str, SplitLayout]) -> None:
    """Depth frames and LiDAR points are placed on the RGB trajectory, so with any depth or LiDAR track every
    RGB frame needs a time."""
    if not any(frames for split in splits.values() for frames in [*split.depth.values(), *split.lidar.values()]):
        return
    for split in splits.values():
        for frame in split.rgb:
            if frame.timestamp is None:
                raise LayoutError(
                    frame.metadata_path,
                    "RGB frame without a timestamp in a dataset with depth or LiDAR tracks: set 'timestamp' in the metadata "
                    "or name the files by their time",
                )


def _warn_depth_outside_rgb_span(splits: Dict[str, SplitLayout], root: Path) -> None:
    times = splits["train"].rgb_timestamps
    if times is None:
        return
    start, end = float(times.min()), float(times.max())
    for split in splits.values():
        tracks = [("frames", "depth", track, [f.timestamp for f in frames], frames[0].depth_path)
                  for track, frames in split.depth.items() if frames]
        tracks += [("scans", "LiDAR", track, [s.timestamp for s in scans], scans[0].points_path)
                   for track, scans in split.lidar.items() if scans]
        for what, kind, track, stamps, first in tracks:
            outside = sum(1 for t in stamps if not start <= t <= end)
            if outside:
                warnings.warn(
                    f"{first.parent.relative_to(root)}: {outside} of {len(stamps)} {what} of {kind} track '{track}' lie "
                    f"outside the train RGB time span [{start:.3f}, {end:.3f}] s; their poses are extrapolated",
                    LayoutWarning,
                    stacklevel=3,
                )
