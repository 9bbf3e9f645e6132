"""Rays two cells both trained on: the (image, pixel) records found in both cells' RGB shards (the
partition's margin, where the cells overlap), for matching the cells' appearance after training.

Memory stays bounded: a sample of one cell's records (the shards are shuffled, so its first records are
a random sample) is looked up in the other cell's records, read a block at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from async_nerf_ns.shards.reader import CellRays

BLOCK_RECORDS = 1 << 20
"""Records of the other cell read per lookup."""


def _keys(records: np.ndarray) -> np.ndarray:
    return (records["image"].astype(np.uint64) << np.uint64(32)) | records["pixel"].astype(np.uint64)


def shared_records(shard_set: Path, first: int, second: int, max_records: int, seed: int = 0) -> np.ndarray:
    """Up to ``max_records`` RGB records of cell ``first`` whose (image, pixel) is also a record of cell
    ``second``, drawn from a sample of ``8 x max_records`` of ``first``'s records (seeded)."""
    mine, theirs = CellRays(shard_set, first, seed, prefetch=False), CellRays(shard_set, second, seed, prefetch=False)
    try:
        sample = mine.records(0, min(len(mine), 8 * max_records))
        keys = _keys(sample)
        found = np.zeros(len(sample), dtype=bool)
        for start in range(0, len(theirs), BLOCK_RECORDS):
            found |= np.isin(keys, _keys(theirs.records(start, min(BLOCK_RECORDS, len(theirs) - start))))
    finally:
        mine.close()
        theirs.close()
    shared = sample[found]
    if len(shared) > max_records:
        shared = shared[np.random.default_rng([seed, first, second]).choice(len(shared), max_records, replace=False)]
    return shared
