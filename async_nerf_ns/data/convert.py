"""Converting a raw asynchronous RGB-D capture into the dataset layout of docs/DATA_LAYOUT.md.

The raw capture's folders are described in `raw_capture` (which reads and checks them) and in
`async-nerf-convert --help`. Poses are read in one of `POSE_CONVENTIONS` and stored as the layout
wants them (`raw_poses`): DRB world, OpenGL camera axes, centred on `origin_drb` and divided by
`pose_scale_factor`.

The converter reads and checks everything before it writes anything, writes into a temporary
folder beside OUT, validates that with `read_layout`, and only then moves it into place; an
existing OUT is replaced only if every file in it was written by an earlier conversion (listed in
its `conversion.json`), so nothing a user made is ever deleted.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image

from async_nerf_ns.data.layout import RGB_EXTENSIONS, LayoutError, read_layout
from async_nerf_ns.data.output_folder import (
    discard,
    files_to_replace,
    move_into_place,
    staging_folder,
    write_manifest,
)
from async_nerf_ns.data.raw_capture import RAW_RGB_DIR, RAW_RGB_POSES_DIR, RawDataError, RawStream, read_raw
from async_nerf_ns.data.raw_poses import PoseConvention, nearest_in_time, normalise_c2w, scene_normalisation

TOOL_NAME = "async-nerf-convert"


@dataclass
class ConvertConfig:
    """Convert a raw asynchronous RGB-D capture into an async-nerf dataset (see docs/DATA_LAYOUT.md)."""

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
