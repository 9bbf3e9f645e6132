"""The layout's world frame and nerfstudio's: the one DRB -> world rotation.

The layout stores poses in a normalised DRB world (x down, y right, z back); nerfstudio works in a
z-up world. ``DRB_TO_WORLD`` maps one to the other: world x = DRB y (right), world y = -DRB z
(forward), world z = -DRB x (up). Camera axes (OpenGL) are the same in both. Every module that
converts between the two frames (the dataparser, the partition, the converter's ENU axes, plots)
uses this matrix.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

DRB_TO_WORLD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
"""p_world = DRB_TO_WORLD @ p_drb (a proper rotation, det +1)."""
WORLD_UP_IN_DRB = tuple(DRB_TO_WORLD[2])
"""World z is the layout's up axis, -x of DRB: the third row of the DRB -> world rotation."""


def drb_c2w_to_world(c2w_drb: Float[np.ndarray, "*bs 3 4"]) -> Float[np.ndarray, "*bs 3 4"]:
    """Camera-to-world from the normalised DRB world to nerfstudio's world; camera axes unchanged."""
    return np.einsum("ij,...jk->...ik", DRB_TO_WORLD, np.asarray(c2w_drb, dtype=np.float64))


def drb_points_to_world(points_drb: Float[np.ndarray, "*bs 3"]) -> Float[np.ndarray, "*bs 3"]:
    """Points (or directions) from DRB axes to world axes."""
    return np.einsum("ij,...j->...i", DRB_TO_WORLD, np.asarray(points_drb, dtype=np.float64))


def stack_poses_world(poses: List[Optional[np.ndarray]]) -> Float[Tensor, "num 3 4"]:
    """float32 (N, 3, 4) world-frame poses; NaN where a pose is None."""
    out = np.full((len(poses), 3, 4), np.nan)
    for i, pose in enumerate(poses):
        if pose is not None:
            out[i] = drb_c2w_to_world(pose)
    return torch.from_numpy(out).float()
