"""Per-pixel masks for the converted RGB frames (`--mask-folder`, written as the layout's masks/STEM.png).

A mask is named like the RGB frame it belongs to (its stem: the raw file's name without suffix, or for a
bag the frame's stamp as the dataset names it) and is checked before anything is written: a PNG with one
channel, of the frame's size. A mask whose stem matches no frame written (misnamed, or its frame had no
pose) is left out with a warning naming it.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from functools import partial
from typing import Dict, Optional, Sequence, Tuple

from async_nerf_ns.convert.errors import RawDataError
from async_nerf_ns.convert.frame_poses import ConvertWarning
from async_nerf_ns.convert.writer import OutStream
from async_nerf_ns.layout import LayoutError
from async_nerf_ns.layout.frame_files import mask_problem


def attach_masks(rgb: OutStream, folder: Optional[Path]) -> OutStream:
    """``rgb`` with each frame that has a mask in ``folder`` writing it beside the frame (checked first)."""
    masks = read_mask_folder(folder, [frame.stem for frame in rgb.frames], rgb.size)
    for frame in rgb.frames:
        if frame.stem in masks:
            frame.write_mask = partial(copy_mask, masks[frame.stem])
    return rgb


def read_mask_folder(folder: Optional[Path], stems: Sequence[str], size: Tuple[int, int]) -> Dict[str, Path]:
    """stem -> mask file of the frames ``stems`` (W x H ``size``) that have one in ``folder``; {} without a folder."""
    if folder is None:
        return {}
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise RawDataError(folder, "--mask-folder: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    wanted = set(stems)
    masks = {p.stem: p for p in files if p.stem in wanted}
    unmatched = [p for p in files if p.stem not in wanted]
    if unmatched:
        warnings.warn(ConvertWarning(
            f"{unmatched[0]}: {len(unmatched)} file(s) in --mask-folder match no RGB frame written (named by "
            f"frame stem, e.g. {stems[0]}.png); left out"), stacklevel=2)
    for path in masks.values():
        _check_mask(path, size)
    return masks


def _check_mask(path: Path, size: Tuple[int, int]) -> None:
    try:
        problem = mask_problem(path, size, "the RGB frames are")
    except LayoutError as error:  # unreadable: the layout's message, as the converter's error
        raise RawDataError(path, error.problem) from error
    if problem:
        raise RawDataError(path, problem)


def copy_mask(source: Path, target_stem: Path) -> Path:
    """The mask copied to ``target_stem``.png."""
    target = target_stem.with_name(target_stem.name + source.suffix.lower())
    shutil.copyfile(source, target)
    return target
