"""On-disk format of ray shards.

A *shard set* is one folder ``<kind>-<key>/`` (kind ``rgb``, ``depth`` or ``lidar``; key = hash of everything
that decides its content) holding, per cell ``k``, chunk files ``cell_<k>/chunk_<c>.bin``: raw
little-endian records, no header (``numpy.fromfile(path, dtype)``):

- RGB record, 11 bytes: ``image`` uint32, ``pixel`` uint32 (row * W + column), ``rgb`` 3 x uint8;
- depth record, 12 bytes: ``image`` uint32, ``pixel`` uint32, ``depth`` float32 (distance along the
  ray, scene units);
- LiDAR record, 40 bytes: ``image`` uint32 (the scan), ``pixel`` uint32 (the return's index among the
  scan's returns), ``lidar`` 8 x float32: the ray's origin (3) and unit direction (3) in the world at the
  pose of the point's own time, its range (scene units) and the point's time after its scan's stamp (s).

Records are shuffled when written (a shuffle buffer dealt over all of a cell's chunks), so every chunk
is a random sample of the cell's pixels of all images. ``manifest.json`` is written last, atomically:
a set without it is incomplete and never read. It records per chunk its file, record count and CRC-32
(``crc32``, 8 hex digits of ``zlib.crc32``; absent in sets written before checksums existed). ``image_counts.npy`` (images x cells, uint32) says how
many records each image gave each cell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import numpy as np

FORMAT = "async-nerf-shards/1"
MANIFEST = "manifest.json"
IMAGE_COUNTS = "image_counts.npy"

RGB_RECORD = np.dtype([("image", "<u4"), ("pixel", "<u4"), ("rgb", "u1", (3,))])
DEPTH_RECORD = np.dtype([("image", "<u4"), ("pixel", "<u4"), ("depth", "<f4")])
LIDAR_RECORD = np.dtype([("image", "<u4"), ("pixel", "<u4"), ("lidar", "<f4", (8,))])
RECORDS = {"rgb": RGB_RECORD, "depth": DEPTH_RECORD, "lidar": LIDAR_RECORD}


def cell_folder(shard_set: Path, cell: int) -> Path:
    return Path(shard_set) / f"cell_{cell:03d}"


def chunk_path(shard_set: Path, cell: int, chunk: int) -> Path:
    return cell_folder(shard_set, cell) / f"chunk_{chunk:05d}.bin"


class ShardSetError(ValueError):
    """A shard set that cannot be read (missing, incomplete, damaged); the message names the folder."""


def is_complete(shard_set: Path) -> bool:
    """A set is complete once its manifest (written last) exists."""
    return (Path(shard_set) / MANIFEST).is_file()


def read_manifest(shard_set: Path) -> Dict[str, Any]:
    path = Path(shard_set) / MANIFEST
    if not path.is_file():
        raise ShardSetError(f"{shard_set}: not a complete shard set (no {MANIFEST}; its writing was interrupted?)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise ShardSetError(f"{path}: unreadable ({error})") from error
    if manifest.get("format") != FORMAT:
        raise ShardSetError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def damaged_chunk_message(shard_set: Path, cell: int, path: Path, problem: str) -> str:
    """What a user reads when a chunk on disk is not what was written: the file, the cell, how to fix it."""
    return (
        f"{path} (cell {cell} of shard set {Path(shard_set).name}) is damaged: {problem}. Training stops "
        f"here rather than use its records. Move the set away (mv {shard_set} {shard_set}.damaged) and run "
        f"again: it is written anew from the dataset's images; `async-nerf-check` on the dataset checks "
        f"every chunk."
    )
