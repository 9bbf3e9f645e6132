"""``async-nerf-check DATA``: the layout as the parser reads it, and the derived files in its cache
folder (shard sets: complete, every chunk's size and CRC-32, written from the current files or stale;
the stage-1 cache: readable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Optional

import torch

from async_nerf_ns.check.findings import Report
from async_nerf_ns.files.cache_dir import CACHE_FOLDER, fallback_cache_dir
from async_nerf_ns.files.checksums import checksum_problem, has_checksum
from async_nerf_ns.layout import LayoutError, read_layout
from async_nerf_ns.shards.format import ShardSetError, read_manifest
from async_nerf_ns.shards.verify import chunk_problems, has_checksums, input_state


def is_dataset(path: Path) -> bool:
    return (Path(path) / "coordinates.pt").is_file() or (Path(path) / "train").is_dir()


def cache_folders(data: Path, cache_dir: Optional[Path]) -> List[Path]:
    """Where derived files of ``data`` may be (files/cache_dir.py's rule), those that exist."""
    candidates = [Path(cache_dir)] if cache_dir is not None else [Path(data) / CACHE_FOLDER, fallback_cache_dir(data)]
    return [c for c in candidates if c.is_dir()]


def check_dataset(data: Path, cache_dir: Optional[Path] = None, shard_dirs: Iterable[Path] = ()) -> Report:
    data = Path(data)
    report = Report(str(data), "dataset")
    try:
        layout = read_layout(data)
    except LayoutError as error:
        report.add("layout", error.path if hasattr(error, "path") else data, "error", str(error))
    except (OSError, ValueError) as error:
        report.add("layout", data, "error", f"{type(error).__name__}: {error}")
    else:
        for name, split in layout.splits.items():
            tracks = [f"{track}: {len(frames)} depth frames" for track, frames in split.depth.items()]
            tracks += [f"{track}: {len(scans)} LiDAR scans" for track, scans in split.lidar.items()]
            tracks = ", ".join(tracks) or "no depth"
            report.add("layout", data / name, "ok", f"{len(split.rgb)} RGB frames; {tracks}")
    folders = cache_folders(data, cache_dir)
    shard_roots = [f / "shards" for f in folders if (f / "shards").is_dir()] + [Path(s) for s in shard_dirs]
    if not folders and not shard_roots:
        report.add("derived files", data / CACHE_FOLDER, "ok", "none yet (written by the first ns-train / async-nerf-partition)")
    for root in shard_roots:
        check_shard_root(report, root)
    for folder in folders:
        check_stage1(report, folder / "stage1")
    return report


SHARD_SET_PREFIXES = ("rgb-", "depth-", "lidar-")
"""Folder names of the shard sets (shards/format.py)."""


def check_shard_root(report: Report, root: Path) -> None:
    referenced = set()
    partition = root / "partition.json"
    if partition.is_file():
        try:
            summary = json.loads(partition.read_text())
            referenced = {Path(v).name for v in _strings(summary) if Path(v).name.startswith(SHARD_SET_PREFIXES)}
        except (OSError, ValueError) as error:
            report.add("partition", partition, "warning", f"unreadable ({error})")
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(SHARD_SET_PREFIXES)):
        if folder.name.endswith(".partial"):
            report.add("shard set", folder, "warning", "incomplete: its writing was interrupted (resumed by the next run) or is running")
            continue
        check_shard_set(report, folder, folder.name in referenced)


def _strings(value) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def check_shard_set(report: Report, folder: Path, referenced: bool = False) -> None:
    try:
        manifest = read_manifest(folder)
    except ShardSetError as error:
        report.add("shard set", folder, "error", str(error))
        return
    problems = chunk_problems(folder, manifest)
    for problem in problems:
        report.add("chunk", problem.path, "error", f"cell {problem.cell}: {problem.problem}; move {folder.name} away and rerun to rewrite it")
    records = sum(int(c["records"]) for c in manifest["cells"])
    chunks = sum(len(c["chunks"]) for c in manifest["cells"])
    where = " (the set partition.json names)" if referenced else ""
    if not problems:
        checked = "sizes and CRC-32s match" if has_checksums(manifest) else "sizes match; no checksums recorded (written by an older version)"
        report.add("shard set", folder, "ok", f"{manifest['kind']}: {records:,} records, {manifest['num_cells']} cells, {chunks} chunks; {checked}{where}")
    inputs = input_state(manifest)
    if inputs is None:
        report.add("shard set inputs", folder, "warning", "the files it was written from are not recorded (older version): cannot tell whether it is stale")
    elif inputs.changed:
        report.add(
            "shard set inputs", folder, "warning",
            f"stale: {len(inputs.changed)} of {inputs.recorded} input files changed or missing since it was written "
            f"(e.g. {inputs.changed[0]}); training writes a new set, this one only takes space",
        )


def check_stage1(report: Report, folder: Path) -> None:
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("tpf-*.pt")):
        try:
            problem = checksum_problem(path)
            if problem is not None:
                raise ValueError(problem)
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            report.add("stage-1 fit", path, "warning", f"does not load ({error}); the next run fits it again")
        else:
            report.add("stage-1 fit", path, "ok", "loads" + ("; CRC-32 matches" if has_checksum(path) else "; no checksum recorded"))
    for path in sorted(folder.glob("time-offset-*.json")):
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as error:
            report.add("clock offset", path, "warning", f"unreadable ({error}); the next run estimates it again")
