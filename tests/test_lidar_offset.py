"""A LiDAR track's clock offset, estimated from its scans (trajectory/lidar_offset.py).

Scene: a ground plane and a few buildings and walls (boxes), ray cast analytically by a 16-beam
spinning LiDAR (10 Hz, 1 degree azimuth steps, each point at its own time in the sweep, 1 cm range
noise) on a drone flying at ~6 m/s. The scans are stamped on a LiDAR clock that is behind the RGB
clock by a known offset, and ``poses_at`` is the true trajectory, so the truth is exact.
"""

from __future__ import annotations

import math
import time
from typing import Callable, List, Tuple

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from async_nerf_ns.layout import LidarScan
from async_nerf_ns.trajectory import lidar_offset
from async_nerf_ns.trajectory.lidar_offset import _prepare, estimate_lidar_time_offset
from async_nerf_ns.trajectory.time_offset import TimeOffsetConfig

METRES_PER_UNIT = 2.0
"""The poses' unit is 2 m: the scan's metres must be converted."""
SWEEP_S = 0.1
BEAMS_DEG = np.linspace(-15.0, 15.0, 16)
AZIMUTH_STEPS = 360
HEIGHT_M = 3.0
SPEED_M_S = 6.0
MAX_RANGE_M = 80.0
BOXES = np.array([
    # (x0, y0, z0, x1, y1, z1) metres: buildings on both sides, cars, a wall across the end, a pillar.
    [2.0, 9.0, 0.0, 12.0, 16.0, 9.0],
    [15.0, 8.0, 0.0, 22.0, 13.0, 6.0],
    [26.0, 10.0, 0.0, 34.0, 18.0, 12.0],
    [0.0, -15.0, 0.0, 9.0, -9.0, 7.0],
    [13.0, -14.0, 0.0, 20.0, -8.0, 10.0],
    [24.0, -12.0, 0.0, 31.0, -7.0, 5.0],
    [8.0, 5.5, 0.0, 12.5, 7.3, 1.5],
    [18.0, -7.0, 0.0, 22.5, -5.2, 1.5],
    [45.0, -20.0, 0.0, 46.0, 20.0, 8.0],
    [-12.0, -20.0, 0.0, -11.0, 20.0, 8.0],
    [17.0, 2.5, 0.0, 17.6, 3.1, 6.0],
])


def _lidar_to_camera() -> np.ndarray:
    """LiDAR axes (x forward, y left, z up) in the camera's (OpenGL: x right, y up, z back), pitched 10 degrees
    down, 10 cm below and 5 cm right of the camera."""
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])  # columns: LiDAR x, y, z in camera axes
    pitch = math.radians(-10.0)
    tilt = np.array([[math.cos(pitch), 0.0, -math.sin(pitch)], [0.0, 1.0, 0.0], [math.sin(pitch), 0.0, math.cos(pitch)]])
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = axes @ tilt
    extrinsic[:3, 3] = [0.05, -0.10, 0.02]
    return extrinsic


LIDAR_TO_CAMERA = _lidar_to_camera()


def trajectory(curved: bool) -> Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Times (M,) -> camera rotations (M, 3, 3) (OpenGL axes, world z up) and positions (M, 3) in metres.

    curved: an S-curve (lateral +-4 m over 6 s: speed 6-7.3 m/s, heading +-35 degrees, yaw rate up to
    ~40 deg/s) with the nose bobbing; else a straight line at constant velocity and attitude. (A turn at
    a constant rate would not do: a constant twist shifts every scan by the same body-frame motion, which
    keeps them consistent, like a constant velocity.)"""

    def poses(times: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        t = np.asarray(times, dtype=np.float64)
        if curved:
            w, w2 = 2 * math.pi / 6.0, 2 * math.pi / 2.5
            position = np.stack([SPEED_M_S * t, 4.0 * np.sin(w * t), HEIGHT_M + 0.4 * np.sin(w2 * t)], axis=-1)
            yaw = np.arctan2(4.0 * w * np.cos(w * t), SPEED_M_S) + 0.1 * np.sin(w2 * t)
            pitch = 0.05 * np.sin(w2 * t + 1.0)
        else:
            position = np.stack([SPEED_M_S * t, np.zeros_like(t), np.full_like(t, HEIGHT_M)], axis=-1)
            yaw = pitch = np.zeros_like(t)
        forward = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=-1)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right, axis=-1, keepdims=True)
        up = np.cross(right, forward)
        return np.stack([right, up, -forward], axis=-1), position

    return poses


def poses_function(curved: bool) -> Callable[[np.ndarray], torch.Tensor]:
    """The time-pose function of the true trajectory: (M, 3, 4) float32, translation in scene units."""
    motion = trajectory(curved)

    def poses_at(times: np.ndarray) -> torch.Tensor:
        rotation, position = motion(times)
        return torch.from_numpy(np.concatenate([rotation, position[..., None] / METRES_PER_UNIT], axis=-1)).float()

    return poses_at


def _cast(origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Distance along each ray to the ground (z = 0) or the nearest box; inf where nothing is hit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(directions[:, 2] < 0, -origins[:, 2] / directions[:, 2], np.inf)
        t1 = (BOXES[None, :, :3] - origins[:, None]) / directions[:, None]
        t2 = (BOXES[None, :, 3:] - origins[:, None]) / directions[:, None]
    near = np.nanmax(np.minimum(t1, t2), axis=-1)
    far = np.nanmin(np.maximum(t1, t2), axis=-1)
    boxes = np.where((far >= near) & (near > 0), near, np.inf).min(axis=1)
    distance = np.minimum(ground, boxes)
    return np.where(distance <= MAX_RANGE_M, distance, np.inf)


def make_scans(curved: bool, offset_s: float, count: int = 30, seed: int = 0) -> Tuple[np.ndarray, List[np.ndarray]]:
    """``count`` scans from t = 0 at 10 Hz: stamps on the LiDAR clock (true time - offset_s) and (P, 4)
    points x, y, z (LiDAR frame, metres), t (seconds after the stamp, 0 to 0.1: the sweep starts at its stamp)."""
    rng = np.random.default_rng(seed)
    motion = trajectory(curved)
    azimuth = np.arange(AZIMUTH_STEPS) * 2 * math.pi / AZIMUTH_STEPS
    elevation = np.radians(BEAMS_DEG)
    az, el = np.meshgrid(azimuth, elevation, indexing="ij")  # a column of beams fires at each azimuth step
    local = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).reshape(-1, 3)
    within = np.repeat(np.arange(AZIMUTH_STEPS) * SWEEP_S / AZIMUTH_STEPS, len(BEAMS_DEG))
    stamps, scans = [], []
    for k in range(count):
        start = k * SWEEP_S
        rotation, position = motion(start + within)
        camera_rotation = rotation @ LIDAR_TO_CAMERA[:3, :3]
        origins = position + np.einsum("mab,b->ma", rotation, LIDAR_TO_CAMERA[:3, 3])
        distance = _cast(origins, np.einsum("mab,mb->ma", camera_rotation, local))
        hit = np.isfinite(distance)
        measured = distance[hit] + rng.normal(0.0, 0.01, hit.sum())
        scans.append(np.concatenate([local[hit] * measured[:, None], within[hit, None]], axis=1))
        stamps.append(start - offset_s)
    return np.array(stamps), scans


SCANS = 30
"""3 s of flight: 220 pairs of scans overlap."""
ESTIMATE_TOLERANCE_S = 0.00025
"""Measured: |estimate - truth| 0.075 ms (+40 ms) and 0.013 ms (-70 ms, given -50 ms), bootstrap std
0.03-0.04 ms; on five more scenes (other seeds, offsets -70 to +40 ms) at most 0.077 ms; margin 3x."""


def _estimate(stamps, scans, poses_at, config: TimeOffsetConfig = TimeOffsetConfig(), given_s: float = 0.0):  # noqa: B008
    return estimate_lidar_time_offset("top", stamps, scans, LIDAR_TO_CAMERA, METRES_PER_UNIT, poses_at, config, given_s)


@pytest.mark.parametrize("offset_ms, given_ms", [(40, 0), (-70, -50)])
def test_the_estimate_finds_a_known_lidar_clock_offset(offset_ms, given_ms):
    truth = offset_ms / 1000
    stamps, scans = make_scans(True, truth, SCANS, seed=abs(offset_ms))
    started = time.perf_counter()
    estimate = _estimate(stamps, scans, poses_function(True), given_s=given_ms / 1000)
    print(f"{offset_ms:+d} ms: error {(estimate.estimate_s - truth) * 1000:+.3f} ms, "
          f"{time.perf_counter() - started:.1f} s: {estimate.message}")
    assert estimate.status == "estimated", estimate.message
    assert abs(estimate.estimate_s - truth) < ESTIMATE_TOLERANCE_S and estimate.applied_s == estimate.estimate_s
    assert estimate.std_s < 0.0002 and estimate.pairs > 150
    assert estimate.message.startswith("LiDAR track 'top': clock offset") and "pairs of scans" in estimate.message
    # The search curve is reported with its minimum at the estimate, and the cost rises away from it.
    offsets, costs = np.array(estimate.curve_offsets_s), np.array(estimate.curve_costs)
    assert abs(offsets[np.argmin(costs)] - estimate.estimate_s) <= 0.002
    assert costs.max() > 3 * costs.min()


def test_a_straight_flight_at_constant_velocity_does_not_determine_the_offset():
    """Every scan's points are moved by the same vector, v x offset, whatever the offset: the scans agree
    equally well at every offset (measured: the cost varies by 1e-7 of its minimum, float rounding,
    against 4x on the curved flight), so the given offset is kept."""
    stamps, scans = make_scans(False, 0.04, SCANS)
    estimate = _estimate(stamps, scans, poses_function(False), given_s=0.01)
    assert estimate.status == "unobservable" and estimate.applied_s == 0.01, estimate.message
    assert "the scans agree equally well" in estimate.message and "static or constant-velocity" in estimate.message
    costs = np.array(estimate.curve_costs)
    assert costs.max() - costs.min() < 1e-5 * costs.min()


def test_too_few_scans_and_estimation_off_are_reported():
    stamps, scans = make_scans(True, 0.04, 2)
    estimate = _estimate(stamps, scans, poses_function(True))
    assert estimate.status == "unobservable" and estimate.applied_s == 0.0
    assert "LiDAR track 'top': only 2 pairs of scans overlap" in estimate.message
    off = _estimate(stamps, scans, poses_function(True), TimeOffsetConfig(estimate=False), given_s=0.02)
    assert off.status == "not estimated" and off.applied_s == 0.02


def test_each_point_is_placed_at_its_own_time():
    """The knot poses blended to each point's time put every point where the true trajectory at its
    own time puts it (measured: at most 0.14 mm off, from the linear blend and float32; placed at its
    scan's stamp instead, a point is 0.36 m off (median), up to 1.6 m)."""
    offset = 0.04
    stamps, scans = make_scans(True, offset, 3)
    poses_at = poses_function(True)
    # 1,500 i-points, so 6,000 points a scan: every point is kept.
    prepared = _prepare(stamps, scans, LIDAR_TO_CAMERA, METRES_PER_UNIT, poses_at, TimeOffsetConfig(points_per_frame=1500), 0.0)
    world, _ = prepared._place(prepared._poses(np.array([offset]), poses_at)[0])
    world = world.astype(np.float64) + _knot_centre(prepared, offset, poses_at)
    motion = trajectory(True)
    for k, scan in enumerate(scans):
        rotation, position = motion(stamps[k] + scan[:, 3] + offset)
        camera = scan[:, :3] @ LIDAR_TO_CAMERA[:3, :3].T + LIDAR_TO_CAMERA[:3, 3]
        truth = (np.einsum("mab,mb->ma", rotation, camera) + position) / METRES_PER_UNIT
        placed = world[k * prepared.surface : k * prepared.surface + prepared.count[k]]
        assert len(placed) == len(scan)
        distance, _ = cKDTree(truth).query(placed)
        assert distance.max() * METRES_PER_UNIT < 5e-4  # metres


def _knot_centre(prepared, offset: float, poses_at) -> np.ndarray:
    """The position `_place` subtracts (the knots' mean), in scene units."""
    poses = prepared._poses(np.array([offset]), poses_at)[0].reshape(-1, 3, 4)
    return poses[:, :, 3].mean(axis=0)


def test_lidar_track_time_offsets_load_the_scans_and_are_cached(tmp_path, monkeypatch):
    """`lidar_track_time_offsets` reads each scan with `load_lidar_points` (a beam without a return, a
    row of zeros, is dropped) and stores the estimate, so that a second process reads it, loading no scan."""
    truth = 0.03
    stamps, points = make_scans(True, truth, 20, seed=3)
    scans = []
    for k, (stamp, scan) in enumerate(zip(stamps, points, strict=True)):
        path, metadata = tmp_path / f"scan_{k:04d}.npy", tmp_path / f"scan_{k:04d}.pt"
        np.save(path, np.concatenate([scan, np.zeros((1, 4))]).astype(np.float32))
        metadata.write_bytes(b"metadata")
        scans.append(LidarScan("top", path.stem, path, metadata, float(stamp), len(scan) + 1, LIDAR_TO_CAMERA))
    config = TimeOffsetConfig(points_per_frame=256)
    poses_at = poses_function(True)
    direct = lidar_offset.lidar_track_time_offsets({"top": scans}, METRES_PER_UNIT, poses_at, config, {})["top"]
    # Measured: 0.062 ms off (256 points a scan, 20 scans: std 0.07 ms).
    assert direct.status == "estimated" and abs(direct.estimate_s - truth) < ESTIMATE_TOLERANCE_S, direct.message
    cache = (tmp_path / "cache", "fit-key")
    cache[0].mkdir()
    stored = lidar_offset.lidar_track_time_offsets({"top": scans}, METRES_PER_UNIT, poses_at, config, {}, cache)["top"]
    assert stored.estimate_s == direct.estimate_s and len(list(cache[0].glob("lidar-time-offset-*.json"))) == 1

    def no_loading(scan):
        raise AssertionError("a cached estimate loads no scan")

    monkeypatch.setattr(lidar_offset, "load_lidar_points", no_loading)
    again = lidar_offset.lidar_track_time_offsets({"top": scans}, METRES_PER_UNIT, poses_at, config, {}, cache)["top"]
    assert again.as_dict() == stored.as_dict()
    # Another given offset is another estimate (it loads the scans).
    with pytest.raises(AssertionError, match="loads no scan"):
        lidar_offset.lidar_track_time_offsets({"top": scans}, METRES_PER_UNIT, poses_at, config, {"top": 0.01}, cache)
