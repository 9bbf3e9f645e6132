"""Raw poses into the layout's frame: axis conventions and scene normalisation.

The layout stores poses in a DRB world (x down, y right, z back) with OpenGL camera axes (x right,
y up, z back), centred on `origin_drb` and divided by `pose_scale_factor`. A raw capture's poses
come in one of `POSE_CONVENTIONS`; the world mapping is `ENU_TO_DRB` (DRB = (-z, x, -y) of a
z-up world, the inverse of `layout/frames.py`'s `DRB_TO_WORLD`), a proper rotation.
"""

from __future__ import annotations

from typing import Literal, Tuple

import numpy as np
from jaxtyping import Float

from async_nerf_ns.layout.frames import DRB_TO_WORLD

PoseConvention = Literal["opengl-enu", "opencv-enu", "drb"]
POSE_CONVENTIONS: Tuple[str, ...] = ("opengl-enu", "opencv-enu", "drb")
"""opengl-enu: world x east, y north, z up; camera x right, y up, z back (nerfstudio, Blender).
opencv-enu: same world; camera x right, y down, z forward (COLMAP, most SLAM systems).
drb: world x down, y right, z back, camera OpenGL: the layout's own axes, in metres, not centred."""
ENU_TO_DRB = DRB_TO_WORLD.T
"""p_drb = ENU_TO_DRB @ p_enu: DRB x = -z (down), y = x (east = right), z = -y (south = back)."""
OPENCV_TO_OPENGL_CAMERA = np.diag([1.0, -1.0, -1.0])
"""R_opengl = R_opencv @ OPENCV_TO_OPENGL_CAMERA (flip the camera's y and z axes; its own inverse)."""


def raw_c2w_to_drb(c2w: Float[np.ndarray, "*bs 3 4"], convention: str) -> Float[np.ndarray, "*bs 3 4"]:
    """Raw camera-to-world (metres, `convention`) -> DRB world, OpenGL camera axes, metres."""
    c2w = np.asarray(c2w, dtype=np.float64)[..., :3, :]
    if convention == "drb":
        return c2w.copy()
    if convention not in ("opengl-enu", "opencv-enu"):
        raise ValueError(f"unknown pose convention '{convention}'; expected one of {POSE_CONVENTIONS}")
    rotation = np.einsum("ij,...jk->...ik", ENU_TO_DRB, c2w[..., :3])
    if convention == "opencv-enu":
        rotation = rotation @ OPENCV_TO_OPENGL_CAMERA
    position = np.einsum("ij,...j->...i", ENU_TO_DRB, c2w[..., 3])
    return np.concatenate([rotation, position[..., None]], axis=-1)


def scene_normalisation(positions_drb: Float[np.ndarray, "n 3"]) -> Tuple[np.ndarray, float]:
    """(origin_drb, pose_scale_factor): bounding-box midpoint and largest distance from it."""
    positions_drb = np.asarray(positions_drb, dtype=np.float64)
    origin = (positions_drb.min(axis=0) + positions_drb.max(axis=0)) / 2
    scale = float(np.linalg.norm(positions_drb - origin, axis=-1).max())
    return origin, scale


def normalise_c2w(c2w_drb: Float[np.ndarray, "3 4"], origin_drb: np.ndarray, scale: float) -> np.ndarray:
    """c2w[:, 3] = (position_drb - origin_drb) / pose_scale_factor; rotation unchanged."""
    out = np.array(c2w_drb, dtype=np.float64)
    out[:, 3] = (out[:, 3] - origin_drb) / scale
    return out
