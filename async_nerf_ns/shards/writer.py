"""Writing a shard set: every image's pixels dealt to the chunk files of the cells they belong to.

Memory stays bounded whatever the number of images: a few images' pixels and masks at a time (the
current one and ``ahead`` being prepared in a background thread), plus a buffer of
``shuffle_buffer_records`` records. Each image's records of a cell are dealt at random and evenly
over all of that cell's chunks as the image arrives (`_stratified_order`, seeded by (seed, image)),
so every chunk holds a random share of every image, as Mega-NeRF's shuffled ray chunks do; when the
buffer is full its pieces are appended to the chunk files.

Resumable: writing happens in ``<set>.partial/``; after every flush the chunk files are fsynced and
``progress.json`` records the next image and every chunk file's length. A run killed at any moment
truncates the chunks back to the recorded lengths and continues from that image; the finished folder
is renamed into place and ``manifest.json`` (written last) marks it complete.

Checksums: every chunk's CRC-32 (files/checksums.py) is computed from the records as they are appended
(in the I/O thread, not by reading the files back) and recorded in the journal with its length, then
in the manifest: a reader that finds other bytes on disk (a flipped bit, a lost write) knows.

A full disk stops the writing with a `files.space.DiskFullError` naming the folder, the free space and
about how much more the set needs; the journal still describes the last complete flush, so running
again after freeing space continues from there.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import math
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from async_nerf_ns.shards.format import (
    FORMAT,
    IMAGE_COUNTS,
    MANIFEST,
    RECORDS,
    cell_folder,
    chunk_path,
    is_complete,
)
from async_nerf_ns.files.atomic import write_json_atomic
from async_nerf_ns.files.checksums import ALGORITHM as CHECKSUM_ALGORITHM
from async_nerf_ns.files.checksums import crc32_bytes
from async_nerf_ns.files.space import naming_full_disk

PROGRESS = "progress.json"

ImagePixels = Tuple[np.ndarray, np.ndarray]
"""One image for the writer: (membership (K, P) bool: cells x pixels, per-pixel values (P,) or (P, C));
pixels that must not be trained on (no depth measurement) have no cell in membership."""


@dataclass
class ShardLayout:
    """Sizes of a shard set being written."""

    num_cells: int
    num_images: int
    chunks_per_cell: int
    shuffle_buffer_records: int


def chunks_for(total_pixels: int, chunk_records: int) -> int:
    """Chunks per cell: enough that a cell holding every pixel has chunks of at most ``chunk_records``."""
    return max(1, math.ceil(total_pixels / max(1, chunk_records)))


_ASSEMBLY = {
    "rgb": np.dtype({"names": ["image", "pixel", "rgb"], "formats": ["<u4", "<u4", "V3"], "offsets": [0, 4, 8], "itemsize": 11}),
    "depth": RECORDS["depth"],
    "lidar": RECORDS["lidar"],
}
"""The record layouts of format.py, with the RGB triple as one raw 3-byte field: filling it from the
image's (P, 3) bytes viewed as (P,) ``V3`` items took ~1/3 of the time of the (3,) uint8 sub-array."""


def _image_records(kind: str, image: int, values: np.ndarray) -> np.ndarray:
    """The records of every pixel of one image, as raw fixed-size items (``V11`` / ``V12``): each cell's
    records are then one `numpy.take` of its pixels, and raw items copy faster than structured ones."""
    records = np.empty(len(values), dtype=_ASSEMBLY[kind])
    records["image"] = image
    records["pixel"] = np.arange(len(values), dtype=np.uint32)
    if kind == "rgb":
        records["rgb"] = np.ascontiguousarray(values, dtype=np.uint8).view("V3").reshape(-1)
    else:
        records[kind] = values
    assert records.dtype.itemsize == RECORDS[kind].itemsize
    return records.view(f"V{RECORDS[kind].itemsize}")


def _deal(
    kind: str,
    image: int,
    membership: np.ndarray,
    values: np.ndarray,
    buffers: List[List[List[np.ndarray]]],
    rng: np.random.Generator,
) -> np.ndarray:
    """Deals an image's records to the chunks of their cells (``buffers[cell][chunk]``, pieces appended):
    each cell's records of the image are spread at random and evenly over all of its chunks
    (`_stratified_order`), so every chunk holds a random share of every image. Returns the number of
    records of each cell."""
    everything = _image_records(kind, image, values)
    counts = np.zeros(len(buffers), dtype=np.int64)
    for cell, chunks in enumerate(buffers):
        pixels = np.flatnonzero(membership[cell])
        counts[cell] = len(pixels)
        if not len(pixels):
            continue
        if len(chunks) == 1:
            chunks[0].append(np.take(everything, pixels))
            continue
        order, sizes = _stratified_order(len(pixels), len(chunks), rng)
        dealt = np.take(everything, np.take(pixels, order))  # (chunks, blocks) records
        for pieces, row, size in zip(chunks, dealt, sizes.tolist()):
            if size:
                pieces.append(row[:size])
    return counts


def _stratified_order(count: int, chunks: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A random, even dealing of ``count`` records over ``chunks`` chunks: (order, sizes), ``order`` of
    shape (chunks, blocks): chunk ``c`` gets records ``order[c, :sizes[c]]`` (the rest of the row is
    padding, a valid index).

    Every block of ``chunks`` consecutive records gives each chunk exactly one of its records, chosen at
    random: block ``b`` is rotated by a random offset ``r_b``, chunk ``c`` gets its record
    ``(c - r_b) mod chunks``. So chunk sizes differ by at most one record per dealing (like an even split
    of a permutation), for ``count / chunks`` random numbers and one gather instead of a full permutation
    (several times cheaper here). Order inside a chunk does not matter: training permutes every chunk
    when it reads it (`reader.CellRays`).
    """
    assert count < 2**31 - 2 * chunks, "more than 2^31 records of one cell in one image"
    blocks = -(-count // chunks)
    rotation = rng.integers(0, chunks, blocks, dtype=np.int32)
    order = np.arange(chunks, dtype=np.int32)[:, None] - rotation[None, :]  # (chunks, blocks): c - r_b
    # (c - r_b) mod chunks: add chunks where negative; (x >> 31) is -1 (all bits) for a negative int32, 0
    # otherwise (a boolean-mask update took ~3x as long here).
    order += np.right_shift(order, 31) & chunks
    order += np.arange(0, blocks * chunks, chunks, dtype=np.int32)[None, :]
    # Only the last block can be partial: its missing records are the last entry of some rows.
    missing = order[:, -1] >= count
    order[missing, -1] = 0
    return order, blocks - missing.astype(np.int64)


def _in_order(function: Callable[[int], Any], indices: range, ahead: int) -> Iterator[Any]:
    """``function(i)`` for each index, in order, computed up to ``ahead`` indices in advance in a background
    thread (0: in the caller's thread). Exceptions surface when their index is reached."""
    if ahead <= 0:
        for index in indices:
            yield function(index)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-images")
    pending: Deque[Future] = deque()
    upcoming = iter(indices)
    try:
        for index in itertools.islice(upcoming, ahead):
            pending.append(pool.submit(function, index))
        while pending:
            result = pending.popleft().result()
            for index in itertools.islice(upcoming, 1):
                pending.append(pool.submit(function, index))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Journal:
    """What is durably on disk in a partial shard set: next image, per-chunk byte lengths, counts."""

    def __init__(self, folder: Path, layout: ShardLayout) -> None:
        self.folder = folder
        self.layout = layout
        self.next_image = 0
        self.lengths: Dict[str, int] = {}
        self.crc32: Dict[str, int] = {}
        self.counts = np.zeros((layout.num_images, layout.num_cells), dtype=np.uint32)
        self.flushes = 0

    def restore(self) -> bool:
        """Back to the last recorded flush: chunk files truncated, later files removed; False if none."""
        path = self.folder / PROGRESS
        if not path.is_file():
            return False
        try:
            state = json.loads(path.read_text())
            counts = np.load(self.folder / f"progress_{IMAGE_COUNTS}")
        except (OSError, ValueError):
            return False
        if counts.shape != self.counts.shape or state.get("chunks_per_cell") != self.layout.chunks_per_cell:
            return False
        if state.get("crc32", {}).keys() != state["lengths"].keys():  # a journal from before checksums
            return False
        self.next_image, self.lengths, self.flushes = state["next_image"], state["lengths"], state["flushes"]
        self.crc32 = state["crc32"]
        self.counts = counts
        for chunk in self.folder.glob("cell_*/chunk_*.bin"):
            name = chunk.relative_to(self.folder).as_posix()
            if name not in self.lengths:
                chunk.unlink()
            elif chunk.stat().st_size != self.lengths[name]:
                with open(chunk, "r+b") as stream:
                    stream.truncate(self.lengths[name])
        return True

    def state(self) -> Dict[str, Any]:
        """A copy of what the journal will say once the data written so far is on disk (`_persist`)."""
        return {
            "next_image": self.next_image,
            "lengths": dict(self.lengths),
            "crc32": dict(self.crc32),
            "flushes": self.flushes,
            "chunks_per_cell": self.layout.chunks_per_cell,
            "counts": self.counts.copy(),
        }


def _persist(folder: Path, writes: List[Tuple[Path, List[np.ndarray]]], state: Dict[str, Any], crc32: Dict[str, int]) -> None:
    """Appends the pieces to their chunk files, continues their CRC-32s (in ``crc32`` and ``state``),
    makes them durable, then records ``state`` in the journal."""
    for path, pieces in writes:
        name = path.relative_to(folder).as_posix()
        crc = crc32.get(name, 0)
        with open(path, "ab") as stream:
            stream.writelines(piece.data for piece in pieces)  # contiguous pieces: no copy
        for piece in pieces:
            crc = crc32_bytes(piece, crc)
        crc32[name] = state["crc32"][name] = crc
    # One sync for all chunk files (thousands on a large capture) before the journal says they are
    # this long; a kill before the journal is rewritten truncates them back on resume.
    os.sync()
    counts_tmp = folder / f".progress_{IMAGE_COUNTS}"
    with open(counts_tmp, "wb") as stream:
        np.save(stream, state["counts"])
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(counts_tmp, folder / f"progress_{IMAGE_COUNTS}")
    write_json_atomic(folder / PROGRESS, {key: value for key, value in state.items() if key != "counts"})


def write_shard_set(
    target: Path,
    kind: str,
    layout: ShardLayout,
    image_pixels: Callable[[int], ImagePixels],
    seed: int,
    description: str,
    extra: Optional[Dict[str, Any]] = None,
    stop_after_flushes: Optional[int] = None,
    ahead: int = 2,
) -> Path:
    """Writes the shard set ``target`` (a folder named ``<kind>-<key>``) unless it is already complete.

    Args:
        image_pixels: image index -> (membership, values) of that image (`ImagePixels`).
        ahead: images whose ``image_pixels`` run in a background thread while the records of the
            current one are dealt and flushed (0: none; memory: that many images' pixels).
        seed: seed of the shuffle (part of what makes the set reproducible).
        extra: recorded in the manifest (e.g. the partition it was cut with).
        stop_after_flushes: for tests of resumption: raise after that many flushes, like a kill would.
    """
    target = Path(target)
    if is_complete(target):
        return target
    staging = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = staging.with_name(staging.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second writer of the same set waits, then finds it complete
        if not is_complete(target):
            staging.mkdir(parents=True, exist_ok=True)
            _write(target, staging, kind, layout, image_pixels, seed, description, extra, stop_after_flushes, ahead)
        # Once the set is complete nobody writes it again: the lock file can go (a waiting writer holds
        # the old file open, finds the set complete and returns).
        lock_path.unlink(missing_ok=True)
    return target


def _write(target, staging, kind, layout, image_pixels, seed, description, extra, stop_after_flushes, ahead) -> Path:
    journal = _Journal(staging, layout)
    if journal.restore():
        CONSOLE.print(f"Resuming {description} at image {journal.next_image} of {layout.num_images} ({staging})")
    else:
        for child in staging.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for cell in range(layout.num_cells):
        cell_folder(staging, cell).mkdir(exist_ok=True)

    buffers: List[List[List[np.ndarray]]] = [[[] for _ in range(layout.chunks_per_cell)] for _ in range(layout.num_cells)]
    buffered = 0
    started = time.perf_counter()
    pixels_done = 0

    # Flushes are written by a background thread (file writes and the sync wait on the disk, not the
    # CPU), one at a time: the buffer being written plus the one being filled, at most.
    io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-io")
    in_flight: List[Future] = []

    def flush(next_image: int) -> None:
        nonlocal buffered
        writes = []
        for cell, chunks in enumerate(buffers):
            for chunk, pieces in enumerate(chunks):
                if pieces:
                    path = chunk_path(staging, cell, chunk)
                    name = path.relative_to(staging).as_posix()
                    journal.lengths[name] = journal.lengths.get(name, 0) + sum(piece.nbytes for piece in pieces)
                    writes.append((path, pieces))
                    chunks[chunk] = []
        buffered = 0
        journal.next_image, journal.flushes = next_image, journal.flushes + 1
        while in_flight:  # the previous flush has updated journal.crc32
            in_flight.pop().result()
        state = journal.state()
        in_flight.append(io.submit(_persist, staging, writes, state, journal.crc32))
        if stop_after_flushes is not None and journal.flushes >= stop_after_flushes:
            in_flight.pop().result()
            raise KeyboardInterrupt(f"stopped after {journal.flushes} flushes (test)")

    def needed_bytes() -> float:
        """About how many more bytes the set needs: its bytes so far per image, for the images left."""
        written = sum(journal.lengths.values())
        return written / max(1, journal.next_image) * (layout.num_images - journal.next_image)

    columns = (TextColumn(f"[bold blue]{description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    full_disk = naming_full_disk(
        staging, f"{description} ({target.name})", needed_bytes,
        "run the same command again: the writing resumes from its last complete flush",
    )
    with full_disk, io, Progress(*columns) as progress:
        task = progress.add_task(description, total=layout.num_images, completed=journal.next_image)
        images = range(journal.next_image, layout.num_images)
        with contextlib.closing(_in_order(image_pixels, images, ahead)) as prepared:
            for image, (membership, values) in zip(images, prepared):
                assert membership.shape[0] == layout.num_cells, (membership.shape, layout.num_cells)
                pixels_done += membership.shape[1]
                counts = _deal(kind, image, membership, values, buffers, np.random.default_rng([seed, image]))
                journal.counts[image] = counts
                buffered += int(counts.sum())
                if buffered >= layout.shuffle_buffer_records:
                    flush(image + 1)
                progress.advance(task)
        if buffered or journal.flushes == 0:
            flush(layout.num_images)
        while in_flight:
            in_flight.pop().result()

    seconds = time.perf_counter() - started
    with naming_full_disk(staging, f"the manifest of {target.name}", 1e6, "run the same command again"):
        cells = _finish(staging, target, kind, layout, journal, seed, seconds, pixels_done, extra)
    total = sum(c["records"] for c in cells)
    CONSOLE.print(
        f"{description}: {total:,} records in {layout.num_cells} cells, {seconds:.1f} s "
        f"({pixels_done / 1e6 / max(seconds, 1e-9):.2f} MP/s) -> {target}"
    )
    return target


def _finish(
    staging: Path, target: Path, kind: str, layout: ShardLayout, journal: _Journal, seed: int, seconds: float,
    pixels_done: int, extra: Optional[Dict[str, Any]],
) -> List[Dict[str, Any]]:
    """Writes the image counts and the manifest (chunk sizes and CRC-32s from the journal), then renames
    the staging folder into place. The journal is removed only once the manifest is written, so a
    failure here (a full disk) is finished by the next run without writing any record again."""
    np.save(staging / IMAGE_COUNTS, journal.counts)
    cells = []
    record_size = RECORDS[kind].itemsize
    for cell in range(layout.num_cells):
        chunks = []
        for path in sorted(cell_folder(staging, cell).glob("chunk_*.bin")):
            name = path.relative_to(staging).as_posix()
            size = path.stat().st_size
            assert size == journal.lengths[name], (path, size, journal.lengths[name])
            chunks.append({"file": name, "records": size // record_size, "crc32": f"{journal.crc32[name]:08x}"})
        cells.append({"cell": cell, "records": int(journal.counts[:, cell].sum()), "chunks": chunks})
        assert sum(c["records"] for c in chunks) == cells[-1]["records"], "chunk files lost records"
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "record_dtype": [list(field) if len(field) > 2 else [field[0], field[1]] for field in RECORDS[kind].descr],
        "record_bytes": record_size,
        "num_cells": layout.num_cells,
        "num_images": layout.num_images,
        "chunks_per_cell": layout.chunks_per_cell,
        "seed": seed,
        "checksum": CHECKSUM_ALGORITHM,
        "cells": cells,
        "write_seconds": seconds,
        "megapixels_written_per_second": pixels_done / 1e6 / max(seconds, 1e-9),
        **(extra or {}),
    }
    write_json_atomic(staging / MANIFEST, manifest)
    (staging / PROGRESS).unlink()
    (staging / f"progress_{IMAGE_COUNTS}").unlink()
    os.rename(staging, target)  # atomic: the set appears complete, manifest included, or not at all
    return cells
