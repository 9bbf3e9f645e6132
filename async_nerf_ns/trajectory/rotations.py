"""Rotation conversions and distances used by the trajectory package (the one place for them).

Torch functions are differentiable and batched over leading dimensions; they are what the
time-pose function trains through. Numpy code in this package uses
`scipy.spatial.transform.Rotation` directly (it is the reference implementation) and only
reaches for the helpers at the bottom of this file.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.lie_groups import exp_map_SO3xR3
from scipy.spatial.transform import Rotation
from torch import Tensor

# Keeps sqrt() differentiable at a zero rotation (where the gradient of a norm is undefined).
# It biases an angle by at most sqrt(1e-12) / 2 = 5e-7 rad, far below any error we report.
_NORM_EPS = 1e-12


def rotation_6d_to_matrix(d6: Float[Tensor, "*bs 6"]) -> Float[Tensor, "*bs 3 3"]:
    """Continuous 6-D rotation parametrisation (Zhou et al., CVPR 2019) to a rotation matrix.

    The two 3-vectors are orthonormalised by Gram-Schmidt and completed by their cross product,
    so the result is always a proper rotation (det = +1), whatever the network outputs.
    They are the first two columns of the matrix (see `matrix_to_rotation_6d`).
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(rotation: Float[Tensor, "*bs 3 3"]) -> Float[Tensor, "*bs 6"]:
    """Inverse of `rotation_6d_to_matrix`: the first two columns, concatenated."""
    return torch.cat([rotation[..., :, 0], rotation[..., :, 1]], dim=-1)


def axis_angle_to_matrix(axis_angle: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3 3"]:
    """Exponential map so(3) -> SO(3), reusing nerfstudio's (pytorch3d-derived) implementation."""
    flat = axis_angle.reshape(-1, 3)
    tangent = torch.cat([torch.zeros_like(flat), flat], dim=-1)
    return exp_map_SO3xR3(tangent)[:, :, :3].reshape(*axis_angle.shape[:-1], 3, 3)


def matrix_to_axis_angle(rotation: Float[Tensor, "*bs 3 3"]) -> Float[Tensor, "*bs 3"]:
    """Logarithm map SO(3) -> so(3) for rotations up to (not including) 180 degrees.

    Uses atan2 of the skew and symmetric parts, which is accurate near 0 (acos is not).
    Only used to extrapolate a short relative motion, far from 180 degrees.
    """
    skew = torch.stack(
        [
            rotation[..., 2, 1] - rotation[..., 1, 2],
            rotation[..., 0, 2] - rotation[..., 2, 0],
            rotation[..., 1, 0] - rotation[..., 0, 1],
        ],
        dim=-1,
    )
    sin_times_2 = torch.sqrt((skew * skew).sum(-1) + _NORM_EPS)
    cos_times_2 = rotation[..., 0, 0] + rotation[..., 1, 1] + rotation[..., 2, 2] - 1.0
    angle = torch.atan2(sin_times_2, cos_times_2)
    return skew * (angle / sin_times_2).unsqueeze(-1)


def squared_geodesic_angle(
    rotation_a: Float[Tensor, "*bs 3 3"], rotation_b: Float[Tensor, "*bs 3 3"]
) -> Float[Tensor, "*bs"]:
    """Squared geodesic angle (rad^2); smooth at zero, unlike the angle itself."""
    relative = rotation_a.transpose(-1, -2) @ rotation_b
    axis_angle = matrix_to_axis_angle(relative)
    return (axis_angle * axis_angle).sum(-1)


def squared_chordal_distance(
    rotation_a: Float[Tensor, "*bs 3 3"], rotation_b: Float[Tensor, "*bs 3 3"]
) -> Float[Tensor, "*bs"]:
    """Squared Frobenius distance ||a - b||_F^2 = 8 sin^2(angle / 2), about 2 angle^2 when small."""
    difference = rotation_a - rotation_b
    return (difference * difference).sum(dim=(-1, -2))


def relative_rotation_angles_np(rotations_a: np.ndarray, rotations_b: np.ndarray) -> np.ndarray:
    """Per-pair geodesic angle in radians between two (N, 3, 3) numpy rotation stacks (scipy)."""
    relative = Rotation.from_matrix(rotations_a).inv() * Rotation.from_matrix(rotations_b)
    return relative.magnitude()
