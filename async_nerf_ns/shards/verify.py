"""Checking a whole shard set on disk (``async-nerf-check``): every chunk against the manifest's record
count and CRC-32, and the files it was written from against what the manifest recorded of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from async_nerf_ns.files.checksums import crc32_file
from async_nerf_ns.shards.format import RECORDS


@dataclass
class ChunkProblem:
    cell: int
    path: Path
    problem: str


def chunk_problems(shard_set: Path, manifest: Dict[str, Any]) -> List[ChunkProblem]:
    """The chunks of a complete set that are missing, of the wrong size or whose CRC-32 differs."""
    record_bytes = RECORDS[manifest["kind"]].itemsize
    problems = []
    for entry in manifest["cells"]:
        for chunk in entry["chunks"]:
            path = Path(shard_set) / chunk["file"]
            expected = int(chunk["records"]) * record_bytes
            if not path.is_file():
                problems.append(ChunkProblem(entry["cell"], path, "missing"))
                continue
            size = path.stat().st_size
            if size != expected:
                problems.append(ChunkProblem(entry["cell"], path, f"{size:,} bytes, the manifest says {expected:,} (truncated?)"))
            elif chunk.get("crc32") is not None and f"{crc32_file(path):08x}" != chunk["crc32"]:
                problems.append(ChunkProblem(entry["cell"], path, f"CRC-32 differs from the manifest's {chunk['crc32']} (bytes changed)"))
    return problems


def has_checksums(manifest: Dict[str, Any]) -> bool:
    return all("crc32" in chunk for entry in manifest["cells"] for chunk in entry["chunks"])


@dataclass
class InputState:
    recorded: int
    """Input files the manifest records (0: a set written before they were recorded)."""
    changed: List[str]
    """Those missing now or of another size or modification time."""


def input_state(manifest: Dict[str, Any]) -> Optional[InputState]:
    """Whether the files the set was written from are still the same (None: not recorded)."""
    rows = manifest.get("inputs")
    if rows is None:
        return None
    changed = []
    for path, size, mtime_ns in rows:
        try:
            stat = Path(path).stat()
        except OSError:
            changed.append(f"{path} (missing)")
            continue
        if stat.st_size != size or stat.st_mtime_ns != mtime_ns:
            changed.append(path)
    return InputState(len(rows), changed)
