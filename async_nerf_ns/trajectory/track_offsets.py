"""Every depth track's clock offset to the RGB clock, from its frames in the layout: what
``async-nerf-tpf`` reports (trajectory/report.py) and what training poses its depth frames with
(data/datamanager.py, there read from and stored in stage 1's cache, fit_cache.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from async_nerf_ns.files.keys import file_identity
from async_nerf_ns.layout import DepthFrame
from async_nerf_ns.layout.frame_files import load_ray_distance_metres
from async_nerf_ns.trajectory.fit_cache import cached_time_offset
from async_nerf_ns.trajectory.time_offset import PoseFunction, TimeOffsetConfig, TimeOffsetEstimate, estimate_time_offset


def track_time_offsets(
    tracks: Mapping[str, Sequence[DepthFrame]],
    metres_per_unit: float,
    poses_at: PoseFunction,
    config: TimeOffsetConfig,
    given: Mapping[str, float],
    cache: Optional[Tuple[Path, str]] = None,
    label: str = "",
) -> Dict[str, TimeOffsetEstimate]:
    """Each track's offset (`estimate_time_offset`), tracks in the order given, each estimate's message
    printed after ``label``.

    Args:
        tracks: each track's frames, in time order.
        metres_per_unit: the poses' unit (the depth maps are read in metres).
        poses_at: the time-pose function the frames are placed with.
        given: offsets given by the user (seconds; 0 for a track not named), the search's centre.
        cache: (folder, key of the fit, `fit_cache.fit_key`): read the estimate from ``folder`` where it
            was stored, else estimate (loading the depth maps only then) and store it.
    """
    estimates = {}
    for name, frames in tracks.items():
        times = np.array([frame.timestamp for frame in frames], dtype=np.float64)
        intrinsics = torch.tensor(np.array([frame.intrinsics for frame in frames]).reshape(-1, 4)).float()

        def distances(frames: Sequence[DepthFrame] = frames) -> List[Tensor]:
            return [load_ray_distance_metres(frame) / metres_per_unit for frame in frames]

        given_s = float(given.get(name, 0.0))
        if cache is None:
            estimate = estimate_time_offset(name, times, intrinsics, distances(), poses_at, config, given_s)
        else:
            files = file_identity([path for frame in frames for path in (frame.depth_path, frame.metadata_path)])
            estimate = cached_time_offset(cache[0], cache[1], name, times, intrinsics, files, distances, poses_at, config, given_s)
        CONSOLE.print(label + estimate.message)
        estimates[name] = estimate
    return estimates
