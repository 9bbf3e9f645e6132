"""A cell's training batches from its shard chunks, as a pure function of (seed, cell, step).

The cell's records form an endless sequence of epochs; epoch ``e`` visits the cell's chunks in an
order drawn from ``(seed, cell, e)`` and each chunk's records in an order drawn from
``(seed, cell, e, chunk)``. Batch ``s`` is records ``[s * B, (s + 1) * B)`` of that sequence, so a
run resumed at step ``s`` draws exactly what the uninterrupted run drew (no sampler state to save),
and every record is used once per epoch (no replacement). Only the chunk being read and the next
one are in memory; the next is loaded in a background thread while the current one is consumed.

The first time a process reads a chunk, its bytes are checked against the CRC-32 the manifest
records (sets written before checksums existed have none and are read unchecked): a chunk that
changed on disk raises `ShardSetError` naming the file, the cell and how to rewrite the set, before
any of its records is returned, so training stops rather than train on them.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from async_nerf_ns.files.checksums import crc32_bytes
from async_nerf_ns.shards.format import RECORDS, ShardSetError, damaged_chunk_message, read_manifest

_VERIFIED: Set[Tuple[str, str]] = set()
"""(chunk file, CRC-32) pairs this process has checked: each chunk is checked once per process."""


class CellRays:
    """Batches of one cell of one shard set."""

    def __init__(self, shard_set: Path, cell: int, seed: int, prefetch: bool = True) -> None:
        self.shard_set = Path(shard_set)
        manifest = read_manifest(self.shard_set)
        if not 0 <= cell < manifest["num_cells"]:
            raise ShardSetError(f"{shard_set}: has cells 0..{manifest['num_cells'] - 1}, not {cell}")
        self.cell = cell
        self.seed = seed
        self.dtype = RECORDS[manifest["kind"]]
        entry = manifest["cells"][cell]
        chunks = [c for c in entry["chunks"] if c["records"]]
        self.chunks: List[Tuple[Path, int]] = [(self.shard_set / c["file"], int(c["records"])) for c in chunks]
        self.checksums: List[Optional[str]] = [c.get("crc32") for c in chunks]
        self.num_records = sum(n for _, n in self.chunks)
        self._sizes = np.array([n for _, n in self.chunks], dtype=np.int64)
        self._loaded: Dict[Tuple[int, int], np.ndarray] = {}
        self._pending: Dict[Tuple[int, int], Future] = {}
        self._pool: Optional[ThreadPoolExecutor] = ThreadPoolExecutor(max_workers=1) if prefetch else None

    def __len__(self) -> int:
        return self.num_records

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.cell, epoch]).permutation(len(self.chunks))

    def _read(self, epoch: int, chunk: int) -> np.ndarray:
        path, count = self.chunks[chunk]
        try:
            records = np.fromfile(path, dtype=self.dtype)
        except OSError as error:
            raise ShardSetError(f"{path}: cannot read shard chunk ({error})") from error
        if len(records) != count or path.stat().st_size != count * self.dtype.itemsize:
            problem = f"{path.stat().st_size:,} bytes, the manifest says {count:,} records of {self.dtype.itemsize} bytes"
            raise ShardSetError(damaged_chunk_message(self.shard_set, self.cell, path, problem))
        expected = self.checksums[chunk]
        if expected is not None and (str(path), expected) not in _VERIFIED:
            actual = f"{crc32_bytes(records):08x}"
            if actual != expected:
                problem = f"CRC-32 {actual}, the manifest says {expected} (its bytes changed after it was written)"
                raise ShardSetError(damaged_chunk_message(self.shard_set, self.cell, path, problem))
            _VERIFIED.add((str(path), expected))
        return records[np.random.default_rng([self.seed, self.cell, epoch, chunk]).permutation(count)]

    def _chunk(self, epoch: int, chunk: int) -> np.ndarray:
        key = (epoch, chunk)
        if key not in self._loaded:
            future = self._pending.pop(key, None)
            self._loaded[key] = future.result() if future is not None else self._read(epoch, chunk)
        for old in [k for k in self._loaded if k != key]:  # keep memory to the chunk in use (+ prefetch)
            del self._loaded[old]
        return self._loaded[key]

    def _prefetch(self, epoch: int, position: int) -> None:
        if self._pool is None:
            return
        if position + 1 < len(self.chunks):
            key = (epoch, int(self._order(epoch)[position + 1]))
        else:
            key = (epoch + 1, int(self._order(epoch + 1)[0]))
        if key not in self._loaded and key not in self._pending:
            self._pending = {key: self._pool.submit(self._read, *key)}

    def records(self, start: int, count: int) -> np.ndarray:
        """Records ``[start, start + count)`` of the endless epoch sequence."""
        if self.num_records == 0:
            return np.zeros(0, dtype=self.dtype)
        pieces = []
        while count > 0:
            epoch, offset = divmod(start, self.num_records)
            order = self._order(epoch)
            ends = np.cumsum(self._sizes[order])
            position = int(np.searchsorted(ends, offset, side="right"))
            chunk = int(order[position])
            within = offset - (int(ends[position - 1]) if position else 0)
            records = self._chunk(epoch, chunk)
            take = min(count, len(records) - within)
            pieces.append(records[within : within + take])
            if within + take >= len(records) - max(1, len(records) // 4):
                self._prefetch(epoch, position)
            start, count = start + take, count - take
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def batch(self, step: int, size: int) -> np.ndarray:
        """The records of this cell's ``step``-th batch of ``size`` records."""
        return self.records(step * size, size)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
