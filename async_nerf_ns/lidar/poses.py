"""The pose function LiDAR rays are placed with at set-up, and what identifies it.

The training LiDAR rays are computed once, on the host, from stage 1's TPF and the tracks' clock
offsets, and written to shards keyed by them: a CPU copy of the TPF gives the same rays whatever device
the run trains on (a resumed CUDA run finds the shards a CPU run wrote, and vice versa).
"""

from __future__ import annotations

import copy
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from async_nerf_ns.files.keys import content_key
from async_nerf_ns.trajectory.tpf import FittedTPF


class CpuPoseFunction:
    """``times (M,) float64 s -> (M, 3, 4)`` poses of a frozen CPU copy of a TPF."""

    def __init__(self, tpf: FittedTPF) -> None:
        self.tpf = copy.deepcopy(tpf).cpu().requires_grad_(False)

    def __call__(self, times: np.ndarray) -> Tensor:
        with torch.no_grad():
            return self.tpf.poses(times)


def cpu_pose_function(tpf: FittedTPF) -> CpuPoseFunction:
    return CpuPoseFunction(tpf)


def lidar_poses_key(tpf: FittedTPF, offsets: Mapping[str, float], deskew: bool) -> str:
    """The TPF's state, the tracks' clock offsets and deskewing: what decides where the LiDAR rays lie."""
    state = [f"{name}:" for name in tpf.state_dict()] + list(tpf.state_dict().values())
    return content_key("lidar-poses/1", *state, repr(sorted(offsets.items())), f"deskew={bool(deskew)}")
