"""Writing a shard set: every image's pixels dealt to the chunk files of the cells they belong to.

Memory stays bounded whatever the number of images: one image's pixels and masks at a time, plus a
shuffle buffer of ``shuffle_buffer_records`` records. When the buffer is full it is permuted per cell
and dealt evenly over all of that cell's chunk files (appended), so every chunk holds a random
sample of all images, as Mega-NeRF's shuffled ray chunks do.

Resumable: writing happens in ``<set>.partial/``; after every flush the chunk files are fsynced and
``progress.json`` records the next image and every chunk file's length. A run killed at any moment
truncates the chunks back to the recorded lengths and continues from that image; the finished folder
is renamed into place and ``manifest.json`` (written last) marks it complete.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

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
)
from async_nerf_ns.engine.checkpoints import write_json_atomic

PROGRESS = "progress.json"

ImagePixels = Tuple[np.ndarray, np.ndarray]
"""One image for the writer: (membership (P, K) bool, per-pixel values (P,) or (P, C)); pixels that
must not be trained on (no depth measurement) have no cell in membership."""


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


def _records(kind: str, image: int, membership: np.ndarray, values: np.ndarray, cell: int) -> np.ndarray:
    pixels = np.flatnonzero(membership[:, cell])
    out = np.empty(len(pixels), dtype=RECORDS[kind])
    out["image"] = image
    out["pixel"] = pixels
    out[kind] = values[pixels]
    return out


class _Journal:
    """What is durably on disk in a partial shard set: next image, per-chunk byte lengths, counts."""

    def __init__(self, folder: Path, layout: ShardLayout) -> None:
        self.folder = folder
        self.layout = layout
        self.next_image = 0
        self.lengths: Dict[str, int] = {}
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
        self.next_image, self.lengths, self.flushes = state["next_image"], state["lengths"], state["flushes"]
        self.counts = counts
        for chunk in self.folder.glob("cell_*/chunk_*.bin"):
            name = chunk.relative_to(self.folder).as_posix()
            if name not in self.lengths:
                chunk.unlink()
            elif chunk.stat().st_size != self.lengths[name]:
                with open(chunk, "r+b") as stream:
                    stream.truncate(self.lengths[name])
        return True

    def record(self, next_image: int) -> None:
        self.next_image = next_image
        self.flushes += 1
        for chunk in self.folder.glob("cell_*/chunk_*.bin"):
            self.lengths[chunk.relative_to(self.folder).as_posix()] = chunk.stat().st_size
        counts_tmp = self.folder / f".progress_{IMAGE_COUNTS}"
        with open(counts_tmp, "wb") as stream:
            np.save(stream, self.counts)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(counts_tmp, self.folder / f"progress_{IMAGE_COUNTS}")
        write_json_atomic(
            self.folder / PROGRESS,
            {
                "next_image": next_image,
                "lengths": self.lengths,
                "flushes": self.flushes,
                "chunks_per_cell": self.layout.chunks_per_cell,
            },
        )


def write_shard_set(
    target: Path,
    kind: str,
    layout: ShardLayout,
    image_pixels: Callable[[int], ImagePixels],
    seed: int,
    description: str,
    extra: Optional[Dict[str, Any]] = None,
    stop_after_flushes: Optional[int] = None,
) -> Path:
    """Writes the shard set ``target`` (a folder named ``<kind>-<key>``) unless it is already complete.

    Args:
        image_pixels: image index -> (membership, values) of that image.
        seed: seed of the shuffle (part of what makes the set reproducible).
        extra: recorded in the manifest (e.g. the partition it was cut with).
        stop_after_flushes: for tests of resumption: raise after that many flushes, like a kill would.
    """
    target = Path(target)
    if (target / MANIFEST).is_file():
        return target
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    with open(staging.with_name(staging.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second writer of the same set waits, then finds it complete
        if (target / MANIFEST).is_file():
            return target
        staging.mkdir(parents=True, exist_ok=True)
        return _write(target, staging, kind, layout, image_pixels, seed, description, extra, stop_after_flushes)


def _write(target, staging, kind, layout, image_pixels, seed, description, extra, stop_after_flushes) -> Path:
    journal = _Journal(staging, layout)
    if journal.restore():
        CONSOLE.print(f"Resuming {description} at image {journal.next_image} of {layout.num_images} ({staging})")
    else:
        for child in staging.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for cell in range(layout.num_cells):
        cell_folder(staging, cell).mkdir(exist_ok=True)

    buffers: List[List[np.ndarray]] = [[] for _ in range(layout.num_cells)]
    buffered = 0
    started = time.perf_counter()
    pixels_done = 0

    def flush(next_image: int) -> None:
        nonlocal buffered
        rng = np.random.default_rng([seed, journal.flushes])
        for cell, parts in enumerate(buffers):
            if not parts:
                continue
            records = np.concatenate(parts)
            records = records[rng.permutation(len(records))]
            for chunk, piece in enumerate(np.array_split(records, layout.chunks_per_cell)):
                if len(piece):
                    with open(chunk_path(staging, cell, chunk), "ab") as stream:
                        stream.write(piece.tobytes())
            parts.clear()
        buffered = 0
        # One sync for all chunk files (thousands on a large capture) before the journal says they are
        # this long; a kill before the journal is rewritten truncates them back on resume.
        os.sync()
        journal.record(next_image)
        if stop_after_flushes is not None and journal.flushes >= stop_after_flushes:
            raise KeyboardInterrupt(f"stopped after {journal.flushes} flushes (test)")

    columns = (TextColumn(f"[bold blue]{description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(description, total=layout.num_images, completed=journal.next_image)
        for image in range(journal.next_image, layout.num_images):
            membership, values = image_pixels(image)
            pixels_done += len(membership)
            for cell in range(layout.num_cells):
                records = _records(kind, image, membership, values, cell)
                journal.counts[image, cell] = len(records)
                if len(records):
                    buffers[cell].append(records)
                    buffered += len(records)
            if buffered >= layout.shuffle_buffer_records:
                flush(image + 1)
            progress.advance(task)
        if buffered or journal.flushes == 0:
            flush(layout.num_images)

    seconds = time.perf_counter() - started
    counts = journal.counts
    np.save(staging / IMAGE_COUNTS, counts)
    (staging / PROGRESS).unlink()
    (staging / f"progress_{IMAGE_COUNTS}").unlink()
    cells = []
    for cell in range(layout.num_cells):
        chunks = sorted(cell_folder(staging, cell).glob("chunk_*.bin"))
        record_size = RECORDS[kind].itemsize
        cells.append(
            {
                "cell": cell,
                "records": int(counts[:, cell].sum()),
                "chunks": [{"file": c.relative_to(staging).as_posix(), "records": c.stat().st_size // record_size} for c in chunks],
            }
        )
        assert sum(c["records"] for c in cells[-1]["chunks"]) == cells[-1]["records"], "chunk files lost records"
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "record_dtype": [list(field) if len(field) > 2 else [field[0], field[1]] for field in RECORDS[kind].descr],
        "record_bytes": RECORDS[kind].itemsize,
        "num_cells": layout.num_cells,
        "num_images": layout.num_images,
        "chunks_per_cell": layout.chunks_per_cell,
        "seed": seed,
        "cells": cells,
        "write_seconds": seconds,
        "megapixels_written_per_second": pixels_done / 1e6 / max(seconds, 1e-9),
        **(extra or {}),
    }
    write_json_atomic(staging / MANIFEST, manifest)
    os.rename(staging, target)  # atomic: the set appears complete, manifest included, or not at all
    total = sum(c["records"] for c in cells)
    CONSOLE.print(
        f"{description}: {total:,} records in {layout.num_cells} cells, {seconds:.1f} s "
        f"({pixels_done / 1e6 / max(seconds, 1e-9):.2f} MP/s) -> {target}"
    )
    return target
