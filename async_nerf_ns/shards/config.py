"""Where and how the per-cell ray shards are written (``--pipeline.datamanager.shards.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class ShardConfig:
    """Where and how the per-cell ray shards are written."""

    shard_dir: Optional[Path] = None
    """Folder of the shard sets (one sub-folder per set, named by kind and key). Default: the
    dataset's cache folder (DATA/.async_nerf_cache/shards, or a temporary folder when DATA is
    read-only). On a cluster, put it on storage every node mounts at the same path."""
    chunk_records: int = 1 << 20
    """Largest chunk file, in records (11 bytes per RGB record, 12 per depth record): training holds
    the chunk being read plus the next one in memory per stream, so this bounds the data part of its
    RAM (default: ~12 MB per chunk)."""
    shuffle_buffer_records: int = 1 << 22
    """Records held in memory before they are appended to the chunk files (one flush); bounds the
    writer's memory (11-12 bytes per record, twice: the buffer being written and the one being
    filled, ~100 MB by default). It does not decide how well the set is shuffled: each image's
    records are dealt at random and evenly over all of its cell's chunks as the image arrives, and
    training shuffles each chunk again when reading."""
    prefetch: bool = True
    """Load the next chunk in a background thread while training reads the current one."""
    seed: int = 0
    """Seed of the write-time dealing of records over chunks (image i uses (seed, i)); part of the key."""
