"""Classical pose interpolation baselines, reported next to the time-pose function.

Both interpolate the training poses exactly (so they also reproduce any noise in them).
Outside the span of the fitted timestamps both extrapolate at constant velocity: the motion
over the first (last) fitted interval, translation linearly and rotation at a constant angular
velocity, is continued. (Clamping to the end pose would put a depth frame taken 50 ms after the
last RGB frame of a 10 m/s drone 0.5 m off; scipy's own cubic extrapolation is unbounded.)
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation, RotationSpline, Slerp

from async_nerf_ns.trajectory.timed_poses import prepare_trajectory


def _assemble(translation: np.ndarray, rotation: Rotation) -> np.ndarray:
    poses = np.zeros((translation.shape[0], 3, 4))
    poses[:, :, :3] = rotation.as_matrix().reshape(-1, 3, 3)
    poses[:, :, 3] = translation
    return poses


class _Interpolator:
    """Shared evaluation: interpolate inside the span, extrapolate at constant velocity outside."""

    def __init__(self) -> None:
        self.times: np.ndarray = np.zeros(0)

    def fit(self, timestamps, c2w) -> "_Interpolator":
        """Fits to timestamps (N,) float64 seconds and camera-to-world poses (N, 3, 4)."""
        self.times, poses = prepare_trajectory(timestamps, c2w)
        self._fit(self.times, poses[:, :, 3], Rotation.from_matrix(poses[:, :, :3]))
        return self

    def _fit(self, times: np.ndarray, translation: np.ndarray, rotation: Rotation) -> None:
        raise NotImplementedError

    def _interpolate(self, times: np.ndarray) -> Tuple[np.ndarray, Rotation]:
        raise NotImplementedError

    def __call__(self, timestamps) -> np.ndarray:
        """Poses (M, 3, 4) float64 at timestamps (M,) float64 seconds."""
        if self.times.size == 0:
            raise RuntimeError("call fit() before evaluating an interpolator")
        query = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        first, last = self.times[0], self.times[-1]
        translation, rotation = self._interpolate(np.clip(query, first, last))
        for outside, end, inner in ((query < first, first, self.times[1]), (query > last, last, self.times[-2])):
            if outside.any():
                (end_t, inner_t), end_and_inner = self._interpolate(np.array([end, inner]))
                steps = (query[outside] - end) / (end - inner)
                translation[outside] = end_t + steps[:, None] * (end_t - inner_t)
                step_rotation = end_and_inner[1].inv() * end_and_inner[0]
                extrapolated = end_and_inner[0] * Rotation.from_rotvec(steps[:, None] * step_rotation.as_rotvec())
                rotation_matrices = rotation.as_matrix()
                rotation_matrices[outside] = extrapolated.as_matrix()
                rotation = Rotation.from_matrix(rotation_matrices)
        return _assemble(translation, rotation)


class LinearSlerp(_Interpolator):
    """Piecewise-linear translation (np.interp per axis) and SLERP rotation (scipy Slerp)."""

    def _fit(self, times: np.ndarray, translation: np.ndarray, rotation: Rotation) -> None:
        self._translation = translation
        self._slerp = Slerp(times, rotation)

    def _interpolate(self, times: np.ndarray) -> Tuple[np.ndarray, Rotation]:
        translation = np.stack([np.interp(times, self.times, self._translation[:, k]) for k in range(3)], -1)
        return translation, self._slerp(times)


class CubicSplineInterp(_Interpolator):
    """Cubic spline translation (scipy CubicSpline, not-a-knot) and scipy RotationSpline rotation."""

    def _fit(self, times: np.ndarray, translation: np.ndarray, rotation: Rotation) -> None:
        self._spline = CubicSpline(times, translation, axis=0)
        self._rotation_spline = RotationSpline(times, rotation)

    def _interpolate(self, times: np.ndarray) -> Tuple[np.ndarray, Rotation]:
        return self._spline(times), self._rotation_spline(times)
