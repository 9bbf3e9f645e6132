"""Converting a raw asynchronous RGB-D capture into the dataset layout of docs/DATA_LAYOUT.md.

The raw capture's folders are described in `raw_capture` (which reads and checks them) and in
`async-nerf-convert --help`. Poses are read in one of `POSE_CONVENTIONS` and stored as the layout
wants them (`convert/poses.py`): DRB world, OpenGL camera axes, centred on `origin_drb` and divided by
`pose_scale_factor`.

The converter reads and checks everything before it writes anything, writes into a temporary
folder beside OUT, validates that with `read_layout`, and only then moves it into place; an
existing OUT is replaced only if every file in it was written by an earlier conversion (listed in
its `conversion.json`), so nothing a user made is ever deleted.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any, Dict

import numpy as np
from PIL import Image

from async_nerf_ns.convert.config import ConvertConfig
from async_nerf_ns.convert.errors import RawDataError
from async_nerf_ns.convert.masks import attach_masks
from async_nerf_ns.convert.output_folder import discard, files_to_replace, staging_folder
from async_nerf_ns.convert.raw_capture import RAW_RGB_DIR, RAW_RGB_POSES_DIR, RawStream, read_raw
from async_nerf_ns.convert.writer import (
    TOOL_NAME,
    ConversionSummary,
    OutFrame,
    OutStream,
    publish,
    split_of,
    summary_record,
    write_dataset,
)
from async_nerf_ns.layout import RGB_EXTENSIONS

__all__ = ["TOOL_NAME", "ConversionSummary", "ConvertConfig", "RawDataError", "convert_raw", "split_of"]


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


def _copy(source: Path, target_stem: Path) -> Path:
    target = target_stem.with_name(target_stem.name + source.suffix)
    shutil.copyfile(source, target)
    return target


def _out_stream(stream: RawStream, depth_scale=None) -> OutStream:
    """A raw stream as the writer takes it: RGB files copied (or re-encoded), depth files copied."""
    write = _write_rgb if stream.name == RAW_RGB_DIR else _copy
    frames = [
        OutFrame(stem=path.stem, time=float(time), write=partial(write, path),
                 pose_gt_drb=None if stream.name == RAW_RGB_DIR else stream.poses_drb.get(path.stem))
        for path, time in zip(stream.files, stream.times)
    ]
    assert stream.intrinsics is not None
    return OutStream(name=stream.name, size=stream.size, intrinsics=stream.intrinsics, frames=frames,
                     depth_scale=depth_scale)


def _record(config: ConvertConfig, summary: ConversionSummary) -> Dict[str, Any]:
    """What conversion.json says besides the file list."""
    pose_file = config.tum or config.colmap or config.transforms
    return {
        "source": "folder",
        "raw": str(Path(config.raw).expanduser().resolve()),
        "pose_convention": config.pose_convention,
        "rgb_poses": str(Path(pose_file).expanduser().resolve()) if pose_file else RAW_RGB_POSES_DIR,
        "camera_to_body": config.camera_to_body,
        "depth_time_offset": config.depth_time_offset,
        "val_every": config.val_every,
        "mask_folder": None if config.mask_folder is None else str(Path(config.mask_folder).expanduser().resolve()),
        **summary_record(summary),
    }


def check_val_every(val_every: int) -> None:
    if val_every < 2:
        raise ValueError(f"val_every must be at least 2 (frame val_every//2 is the first val frame), got {val_every}")


def check_rgb_count(count: int, val_every: int, where: Path) -> None:
    if count <= val_every // 2:
        raise RawDataError(
            where,
            f"{count} RGB frames leave none for val/ with --val-every {val_every} "
            f"(the first val frame is number {val_every // 2}); lower --val-every",
        )


def convert_raw(config: ConvertConfig, show_progress: bool = False) -> ConversionSummary:
    """Convert config.raw into config.out, validate it with read_layout, and say what was written."""
    check_val_every(config.val_every)
    out = Path(config.out).expanduser().resolve()
    files_to_replace(out, config.overwrite, TOOL_NAME)  # fail before the work if OUT cannot be replaced
    rgb, depth, scales = read_raw(config)
    check_rgb_count(len(rgb.files), config.val_every, rgb.files[0].parent)

    staged = staging_folder(out)
    try:
        rgb_out = attach_masks(_out_stream(rgb), config.mask_folder)
        summary = write_dataset(
            staged, rgb_out, np.stack([rgb.poses_drb[stem] for stem in rgb.stems]),
            {track: _out_stream(stream, scales.get(track)) for track, stream in depth.items()},
            config.val_every, show_progress, rgb.files[0].parent.parent / RAW_RGB_POSES_DIR,
        )
        summary.notes = rgb.notes + [note for stream in depth.values() for note in stream.notes]
        publish(staged, out, config.overwrite, _record(config, summary))
    finally:
        discard(staged)
    summary.out = out
    return summary
