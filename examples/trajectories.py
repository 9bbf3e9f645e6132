"""Analytic camera trajectories with known poses at any time, for tests and benchmarks.

Poses are camera-to-world (N, 3, 4) float64 in a z-up world with OpenGL camera axes (x right,
y up, looking along -z), in metres unless a scale is given. The time-pose function and the
baselines do not care about the world frame; these only need to be smooth and realistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.spatial.transform import Rotation

#: Step for the central differences that turn an analytic position into a heading. Its error
#: (h^2 / 6 times the third derivative, ~1e-9 m/s here) is far below anything measured.
_DERIVATIVE_STEP_S = 1e-4


@dataclass
class Trajectory:
    """Timed poses: timestamps (N,) float64 seconds, c2w (N, 3, 4) float64, metres per unit."""

    timestamps: np.ndarray
    c2w: np.ndarray
    metres_per_unit: float


def look_rotation(yaw: np.ndarray, pitch_down: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Camera-to-world rotations (N, 3, 3) of an OpenGL camera in a z-up world.

    The camera looks along heading `yaw` (radians, counter-clockwise from +x), tilted down by
    `pitch_down` and rolled by `roll` about its viewing direction.
    """
    forward = np.stack([np.cos(pitch_down) * np.cos(yaw), np.cos(pitch_down) * np.sin(yaw), -np.sin(pitch_down)], -1)
    right = np.stack([np.sin(yaw), -np.cos(yaw), np.zeros_like(yaw)], -1)
    back = -forward
    up = np.cross(back, right)
    level = np.stack([right, up, back], axis=-1)
    return level @ Rotation.from_rotvec(np.stack([0 * roll, 0 * roll, roll], -1)).as_matrix()


def _poses(position: Callable[[np.ndarray], np.ndarray], times: np.ndarray, rotation_fn) -> np.ndarray:
    poses = np.zeros((times.shape[0], 3, 4))
    poses[:, :, 3] = position(times)
    velocity = (position(times + _DERIVATIVE_STEP_S) - position(times - _DERIVATIVE_STEP_S)) / (2 * _DERIVATIVE_STEP_S)
    poses[:, :, :3] = rotation_fn(times, velocity)
    return poses


def helix(
    times: np.ndarray, radius: float = 1.0, rise_per_turn: float = 0.2, period_s: float = 10.0
) -> np.ndarray:
    """Poses on a helix about the z axis, the camera looking along its direction of travel."""

    def position(t: np.ndarray) -> np.ndarray:
        angle = 2 * np.pi * t / period_s
        return np.stack([radius * np.cos(angle), radius * np.sin(angle), rise_per_turn * t / period_s], -1)

    def rotation(t: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        yaw = np.arctan2(velocity[:, 1], velocity[:, 0])
        climb = np.arctan2(velocity[:, 2], np.linalg.norm(velocity[:, :2], axis=-1))
        return look_rotation(yaw, -climb, np.zeros_like(t))

    return _poses(position, times, rotation)


def drone_flight(times: np.ndarray) -> np.ndarray:
    """A survey-like drone flight in metres: an orbit of about 190 m x 130 m with wiggles, at
    50-70 m altitude, about 1.2 laps in 100 s.

    The speed varies between about 3 and 11 m/s (a warped clock); the camera yaws with the
    heading plus a slow pan, is tilted down 35-55 degrees and rolls a few degrees.
    """
    omega = 2 * np.pi / 80.0

    def warped(t: np.ndarray) -> np.ndarray:
        return t + 2.5 * np.sin(2 * np.pi * t / 45.0)

    def position(t: np.ndarray) -> np.ndarray:
        s = warped(t)
        x = 90 * np.cos(omega * s) + 6 * np.sin(3.1 * omega * s)
        y = 60 * np.sin(omega * s) + 5 * np.cos(2.3 * omega * s + 0.4)
        z = 60 + 8 * np.sin(2 * np.pi * s / 41)
        return np.stack([x, y, z], -1)

    def rotation(t: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        yaw = np.arctan2(velocity[:, 1], velocity[:, 0]) + 0.3 * np.sin(2 * np.pi * t / 13)
        pitch_down = np.radians(45 + 10 * np.sin(2 * np.pi * t / 29))
        roll = np.radians(3 * np.sin(2 * np.pi * t / 11))
        return look_rotation(yaw, pitch_down, roll)

    return _poses(position, times, rotation)


def sample_times(
    duration_s: float, rate_hz: float, start_s: float = 1667117650.0, jitter_s: float = 0.0, seed: int = 0
) -> np.ndarray:
    """Capture times (float64 seconds since the epoch) at `rate_hz`, with uniform clock jitter."""
    count = int(round(duration_s * rate_hz)) + 1
    jitter = np.random.default_rng(seed).uniform(-jitter_s, jitter_s, count)
    return start_s + np.arange(count) / rate_hz + jitter


def add_pose_noise(
    c2w: np.ndarray, translation_sigma: float, rotation_sigma_rad: float, seed: int = 0
) -> np.ndarray:
    """SfM-like noise: Gaussian offsets per axis (in pose units) and a random small rotation.

    The rotation noise is applied in the camera frame (c2w R -> R exp(w)) with w ~ N(0, sigma^2 I).
    """
    rng = np.random.default_rng(seed)
    noisy = np.array(c2w, dtype=np.float64, copy=True)
    noisy[:, :, 3] += rng.normal(0.0, translation_sigma, (c2w.shape[0], 3))
    perturbation = Rotation.from_rotvec(rng.normal(0.0, rotation_sigma_rad, (c2w.shape[0], 3)))
    noisy[:, :, :3] = (Rotation.from_matrix(c2w[:, :, :3]) * perturbation).as_matrix()
    return noisy


def drone_benchmark(
    duration_s: float = 100.0, rate_hz: float = 10.0, metres_per_unit: float = 100.0, seed: int = 0
) -> Trajectory:
    """`drone_flight` sampled with 5 ms clock jitter, in scene units of `metres_per_unit` metres."""
    times = sample_times(duration_s, rate_hz, jitter_s=0.005, seed=seed)
    poses = drone_flight(times - times[0])
    poses[:, :, 3] = (poses[:, :, 3] - poses[:, :, 3].mean(0)) / metres_per_unit
    return Trajectory(times, poses, metres_per_unit)
