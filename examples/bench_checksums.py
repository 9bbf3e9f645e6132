"""What the shard checksums cost (issue 19): writing a shard set and reading its first epoch, with the
CRC-32s (files/checksums.py) and without them, in one process, alternately.

    python examples/bench_checksums.py [--images 100] [--pixels 20000] [--repeats 5] [--folder /tmp/bench_checksums]

The set: ``--images`` synthetic images of ``--pixels`` pixels and 2 cells (cell 0 holds every pixel,
cell 1 half: 1.5 x images x pixels RGB records, default 3 M, 33 MB), written by the real writer
(`shards.writer.write_shard_set`, its journal, syncs and manifest); "without" replaces the CRC-32 by a
no-op. Reading: every batch of 4,096 records of both cells' first epoch through `shards.reader.CellRays`
(prefetch on, as training reads), the files in the page cache in both cases (just written), so the
ratio is the CPU cost of the check, the worst case; on a disk-bound read the check hides behind the
read. Prints seconds per repeat, medians and the overhead in % of the time without.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import async_nerf_ns.shards.reader as reader
import async_nerf_ns.shards.writer as writer
from async_nerf_ns.shards.format import read_manifest


def _image_pixels(pixels: int):
    def image(index: int):
        membership = np.ones((2, pixels), dtype=bool)
        membership[1, : pixels // 2] = False
        return membership, np.random.default_rng(index).integers(0, 256, (pixels, 3), dtype=np.uint8)

    return image


def write(folder: Path, images: int, pixels: int, checksums: bool) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    original = writer.crc32_bytes
    if not checksums:
        writer.crc32_bytes = lambda data, value=0: 0
    try:
        layout = writer.ShardLayout(2, images, writer.chunks_for(images * pixels, 1 << 20), 1 << 21)
        started = time.perf_counter()
        writer.write_shard_set(folder / "rgb-bench", "rgb", layout, _image_pixels(pixels), 0, "bench", ahead=2)
        return time.perf_counter() - started
    finally:
        writer.crc32_bytes = original


def read_first_epoch(shard_set: Path, checksums: bool) -> float:
    reader._VERIFIED.clear()
    started = time.perf_counter()
    for cell in (0, 1):
        rays = reader.CellRays(shard_set, cell, seed=1)
        if not checksums:
            rays.checksums = [None] * len(rays.checksums)
        for step in range(-(-len(rays) // 4096)):
            rays.batch(step, 4096)
        rays.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--pixels", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/bench_checksums"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    times = {(what, on): [] for what in ("write", "read") for on in (True, False)}
    for repeat in range(args.repeats):
        for on in (repeat % 2 == 0, repeat % 2 == 1):  # alternate which goes first
            times[("write", on)].append(write(args.folder, args.images, args.pixels, on))
            shard_set = args.folder / "rgb-bench"
            times[("read", on)].append(read_first_epoch(shard_set, on))
    manifest = read_manifest(shard_set)
    records = sum(c["records"] for c in manifest["cells"])
    print(f"{records:,} records ({records * 11 / 1e6:.0f} MB), {args.repeats} repeats")
    for what in ("write", "read"):
        with_, without = statistics.median(times[(what, True)]), statistics.median(times[(what, False)])
        print(
            f"{what:5s}: with CRC-32 {with_:.3f} s, without {without:.3f} s (median), overhead {100 * (with_ / without - 1):+.1f}%"
            f"  [with: {', '.join(f'{t:.3f}' for t in times[(what, True)])}; without: {', '.join(f'{t:.3f}' for t in times[(what, False)])}]"
        )
    shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
