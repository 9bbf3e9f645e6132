"""Stage 1 as derived files of the dataset: the time-pose function fit and the depth and LiDAR tracks' clock offsets.

The fit (2-5 s on the example, longer on thousands of frames) and each track's offset estimate
(seconds) are stored next to the ray shards, keyed by everything they depend on (the RGB frames'
timestamps and poses and the TPF options; for an offset also the fit, the depth or LiDAR files, their
stamps, the given offset and the estimator's options), so that every process that trains on the same data (a
resumed run, each cell task of a cluster run, the partition command) uses the very same function and
offsets, and the depth-frame poses and depth shards derived from them agree.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.files.atomic import write_json_atomic
from async_nerf_ns.files.checkpoints import atomic_torch_save
from async_nerf_ns.files.checksums import checksum_problem
from async_nerf_ns.files.keys import content_key
from async_nerf_ns.trajectory.fit import fit_tpf
from async_nerf_ns.trajectory.time_offset import PoseFunction, TimeOffsetConfig, TimeOffsetEstimate, estimate_time_offset
from async_nerf_ns.trajectory.tpf import FittedTPF, TimePoseFunctionConfig

STAGE1_FORMAT = "stage1-tpf-v1"
TIME_OFFSET_FORMAT = "stage1-time-offset-v1"


def fit_key(timestamps: np.ndarray, c2w: torch.Tensor, config: TimePoseFunctionConfig) -> str:
    """The key of a fit: the timed poses and every option of the TPF."""
    return content_key(STAGE1_FORMAT, np.asarray(timestamps, dtype=np.float64), c2w, repr(sorted(dataclasses.asdict(config).items())))


def cached_fit(folder: Path, timestamps: np.ndarray, c2w: torch.Tensor, config: TimePoseFunctionConfig) -> FittedTPF:
    """The TPF fitted to (timestamps, c2w): read from ``folder`` if this fit was stored, else fitted and stored."""
    path = Path(folder) / f"tpf-{fit_key(timestamps, c2w, config)}.pt"
    if path.is_file():
        try:
            problem = checksum_problem(path)
            if problem is not None:
                raise ValueError(problem)
            tpf = FittedTPF.from_state_dict(config, torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:  # a damaged file: fit again and replace it
            CONSOLE.print(f"[yellow]Stage 1: {path} does not load ({error}); fitting again")
        else:
            CONSOLE.print(f"Stage 1: time-pose function from {path}")
            return tpf
    CONSOLE.print(f"Stage 1: fitting the time-pose function to {len(timestamps)} RGB frames")
    tpf = fit_tpf(timestamps, c2w, config)
    atomic_torch_save(tpf.state_dict(), path)
    return tpf


def cached_time_offset(
    folder: Path,
    fit: str,
    name: str,
    times: np.ndarray,
    intrinsics: torch.Tensor,
    files: bytes,
    distances: Callable[[], Sequence[torch.Tensor]],
    poses_at: PoseFunction,
    config: TimeOffsetConfig,
    given_s: float,
) -> TimeOffsetEstimate:
    """A track's clock offset (`estimate_time_offset`): read from ``folder`` if this estimate was
    stored, else estimated (``distances()`` loads the depth maps only then) and stored.

    Args:
        fit: the key of the TPF fit (`fit_key`) the estimate is made with.
        files: what identifies the track's depth files (`files.keys.file_identity`).
    """
    key = content_key(
        TIME_OFFSET_FORMAT, fit, name, np.asarray(times, dtype=np.float64), intrinsics, files, repr(given_s),
        repr(sorted(dataclasses.asdict(config).items())),
    )
    return cached_estimate(
        Path(folder) / f"time-offset-{key}.json",
        lambda: estimate_time_offset(name, times, intrinsics, list(distances()), poses_at, config, given_s),
    )


def cached_estimate(path: Path, estimate: Callable[[], TimeOffsetEstimate]) -> TimeOffsetEstimate:
    """The clock offset estimate stored at ``path`` (named by a content key), else ``estimate()``, stored
    there (`cached_time_offset`; `lidar_offset.cached_lidar_time_offset`)."""
    if path.is_file():
        try:
            return TimeOffsetEstimate(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:  # a damaged file: estimate again and replace it
            CONSOLE.print(f"[yellow]Stage 1: {path} does not load ({error}); estimating again")
    result = estimate()
    write_json_atomic(path, result.as_dict())
    return result
