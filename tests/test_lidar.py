"""LiDAR tracks: each point posed at its own time, exact rays, shards, corrections and the free-space loss."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from async_nerf_ns.layout import LayoutError, read_layout
from async_nerf_ns.lidar.corrections import LidarRayCorrections
from async_nerf_ns.lidar.rays import scan_rays
from async_nerf_ns.lidar.scans import LidarScanSet
from async_nerf_ns.model.depth_loss import free_space_loss
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.masks import ray_cell_membership
from async_nerf_ns.shards.config import ShardConfig
from async_nerf_ns.shards.format import cell_folder, read_manifest
from async_nerf_ns.shards.reader import CellRays
from async_nerf_ns.shards.sets import write_lidar_shards
from async_nerf_ns.trajectory.fit import fit_tpf
from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig

sys.path.insert(0, str(Path(__file__).parent))
from layout_factory import LIDAR_TO_CAMERA, write_lidar_track, write_tiny_layout  # noqa: E402
from test_partition import BAND, MARGIN, TWO_CENTROIDS, two_cells  # noqa: E402

SPEED = 6.0
"""Drone speed, m/s: a 100 ms sweep moves the sensor 0.6 m."""
YAW_RATE = math.radians(30.0)
"""A turning rig (rad/s): rotation during the sweep matters too."""


def rig_pose(times: np.ndarray) -> torch.Tensor:
    """Camera-to-world (M, 3, 4), scene units = metres: forward along x at SPEED, yawing about z."""
    times = np.asarray(times, dtype=np.float64)
    poses = np.zeros((len(times), 3, 4))
    poses[:, :, :3] = Rotation.from_euler("z", YAW_RATE * times[:, None]).as_matrix()
    poses[:, 0, 3] = SPEED * times
    poses[:, 2, 3] = 30.0
    return torch.from_numpy(poses)


def _measured(world: np.ndarray, times: np.ndarray, extrinsic: np.ndarray, stamp: float) -> np.ndarray:
    """What the LiDAR measures of world points ``world`` (P, 3) hit at ``times``: (P, 4) sensor-frame x, y, z and
    t, the time after the scan's ``stamp``."""
    poses = rig_pose(times).numpy()
    camera = np.einsum("pba,pb->pa", poses[:, :, :3], world - poses[:, :, 3])  # R^T (X - c)
    sensor = (camera - extrinsic[:3, 3]) @ extrinsic[:3, :3]  # L^-1
    return np.concatenate([sensor, (times - stamp)[:, None]], axis=1)


def test_each_point_is_placed_at_the_pose_of_its_own_time():
    """A 100 ms sweep of a turning rig at 6 m/s: deskewed points land where they were measured (1e-9 m);
    the same points at the scan's stamp are off by up to the distance flown and turned in the sweep."""
    rng = np.random.default_rng(0)
    dt = np.repeat(np.linspace(0.0, 0.1, 50), 8)  # 50 columns of 8 beams, one time per column
    world = rng.uniform([-20, -20, 0], [20, 20, 5], size=(len(dt), 3))
    points = _measured(world, 1.0 + dt, LIDAR_TO_CAMERA, 1.0)
    rays = scan_rays(points, 1.0, LIDAR_TO_CAMERA, rig_pose, pose_scale_factor=1.0)
    np.testing.assert_allclose(rays.points, world, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(rays.directions, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(rays.ranges, np.linalg.norm(points[:, :3], axis=1), atol=1e-12)
    sensor_at = rig_pose(1.0 + dt).numpy()
    np.testing.assert_allclose(rays.origins, np.einsum("pab,b->pa", sensor_at[:, :, :3], LIDAR_TO_CAMERA[:3, 3]) + sensor_at[:, :, 3])
    skewed = scan_rays(points, 1.0, LIDAR_TO_CAMERA, rig_pose, pose_scale_factor=1.0, deskew=False)
    error = np.linalg.norm(skewed.points - world, axis=1)
    assert error.max() > SPEED * 0.1 * 0.9  # the last column: the 0.6 m flown (plus the turn's sweep)
    np.testing.assert_allclose(error[dt == 0], 0.0, atol=1e-9)
    # Scene units: ranges and positions scale with the pose scale factor.
    scaled = scan_rays(points, 1.0, LIDAR_TO_CAMERA, lambda t: rig_pose(t) / torch.tensor([1.0, 1.0, 1.0, 10.0]), 10.0)
    np.testing.assert_allclose(scaled.points * 10.0, world, atol=1e-9)


def test_lidar_track_errors_name_the_file(tmp_path):
    write_tiny_layout(tmp_path)
    write_lidar_track(tmp_path, track="lidar")  # the tiny layout's depth track is called lidar too
    with pytest.raises(LayoutError, match="lidar_lidar.*both called 'lidar'"):
        read_layout(tmp_path)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("extrinsic", "no 'lidar_to_camera' for this scan"),
        ("shape", r"\(N, 4\) array"),
        ("dtype", "float32 or float64"),
        ("metadata", "no metadata file with stem 'scan_0000'"),
        ("sheared", "not a proper rotation"),
    ],
)
def test_bad_lidar_input_is_a_named_error(tmp_path, damage, message):
    write_tiny_layout(tmp_path)
    write_lidar_track(tmp_path)
    train = tmp_path / "train"
    if damage == "extrinsic":
        (train / "lidar_to_camera_top.txt").unlink()
    elif damage == "shape":
        np.save(train / "lidar_top" / "scan_0001.npy", np.zeros((5, 3), np.float32))
    elif damage == "dtype":
        np.save(train / "lidar_top" / "scan_0001.npy", np.zeros((5, 4), np.int32))
    elif damage == "metadata":
        (train / "metadata_lidar_top" / "scan_0000.pt").unlink()
    elif damage == "sheared":
        np.savetxt(train / "lidar_to_camera_top.txt", np.diag([1.0, 2.0, 1.0, 1.0]))
    with pytest.raises(LayoutError, match=message):
        read_layout(tmp_path)


def test_scans_are_read_with_their_returns_times_and_extrinsic(tmp_path):
    write_tiny_layout(tmp_path)
    write_lidar_track(tmp_path, points_per_scan=20)
    write_lidar_track(tmp_path, split="val", times=(10.35,), extrinsic="metadata")
    layout = read_layout(tmp_path)
    scans = LidarScanSet.from_tracks(layout.splits["train"].lidar, 50.0)
    assert [scan.timestamp for scan in scans.scans] == [10.2, 10.7, 11.2]
    points = scans.points(0)
    assert points.shape == (20, 4)  # the empty beam (zeros) is dropped
    np.testing.assert_allclose(np.linalg.norm(points[:, :3], axis=1), 2.0, rtol=1e-6)
    np.testing.assert_allclose(points[[0, -1], 3], [-0.1, 0.0], atol=1e-7)
    np.testing.assert_allclose(scans.scan_times({"top": 0.05}), [10.25, 10.75, 11.25])
    val = layout.splits["val"].lidar["top"][0]
    np.testing.assert_array_equal(val.lidar_to_camera, LIDAR_TO_CAMERA)
    assert torch.isfinite(scans.gt_c2w).all()


def test_lidar_shards_hold_every_return_in_exactly_its_cells(tmp_path):
    """Two cells (hand-checked in test_partition): each return is a record of every cell its ray belongs to,
    with its ray values intact."""
    rng = np.random.default_rng(1)
    scans = []
    for _ in range(3):
        origins = np.column_stack([rng.uniform(-2, 2, 40), rng.uniform(-1, 1, 40), np.full(40, 0.8)])
        directions = rng.normal(size=(40, 3))
        directions[:, 2] = -np.abs(directions[:, 2]) - 0.3
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        values = np.column_stack([origins, directions, rng.uniform(0.5, 3, 40), rng.uniform(0, 0.1, 40)])
        scans.append(values.astype(np.float32))
    geometry = two_cells()
    partition = PartitionConfig(boundary_margin=MARGIN)
    target = write_lidar_shards(
        tmp_path, 3, lambda i: scans[i], 120, ["poses"], [], geometry, partition, ShardConfig(chunk_records=50),
    )
    assert read_manifest(target)["kind"] == "lidar"
    for cell in (0, 1):
        records = np.concatenate([np.fromfile(p, dtype=CellRays(target, cell, 0).dtype) for p in sorted(cell_folder(target, cell).glob("*.bin"))])
        expected = []
        for i, values in enumerate(scans):
            rays = torch.from_numpy(values.astype(np.float64))
            member = ray_cell_membership(rays[:, :3], rays[:, 3:6], TWO_CENTROIDS, BAND, MARGIN, far=math.inf)[:, cell]
            expected += [(i, p) for p in np.flatnonzero(member.numpy())]
        assert sorted(zip(records["image"].tolist(), records["pixel"].tolist())) == sorted(expected)
        assert 0 < len(expected) < 120  # the hand-built rays split between the cells
        for record in records[:10]:
            np.testing.assert_array_equal(record["lidar"], scans[record["image"]][record["pixel"]])


def test_stage3_moves_lidar_rays_with_the_rig_about_the_camera():
    """The TPF fine-tuned to the trajectory rotated by R0 about the world origin: every LiDAR ray (origin
    beside the camera) moves by R0, origin included (a moved origin alone would be off by the lever arm)."""
    times = np.arange(40) * 0.1 + 100.0
    poses = rig_pose(times - 100.0).numpy()
    rotated = poses.copy()
    r0 = Rotation.from_euler("xyz", [3.0, -2.0, 10.0], degrees=True).as_matrix()
    rotated[:, :, :3] = r0 @ poses[:, :, :3]
    rotated[:, :, 3] = poses[:, :, 3] @ r0.T
    config = TimePoseFunctionConfig(iterations=0)
    fitted, moved_tpf = fit_tpf(times, poses, config, progress=False), fit_tpf(times, rotated, config, progress=False)
    corrections = LidarRayCorrections(np.array([100.5, 101.7]))
    scan, dt = torch.tensor([0, 0, 1, 1]), torch.tensor([0.0, 0.05, 0.01, 0.09])
    with torch.no_grad():
        at = fitted.poses(np.array([100.5, 100.55, 101.71, 101.79]))
    mount = torch.tensor(LIDAR_TO_CAMERA[:3, 3], dtype=torch.float32)
    origins = torch.einsum("pab,b->pa", at[:, :, :3], mount) + at[:, :, 3]
    directions = torch.nn.functional.normalize(torch.tensor([[1.0, 0, -1], [0, 1, -1], [1, 1, -2], [-1, 0, -1]]), dim=-1)
    unchanged = corrections(scan, dt, origins, directions)
    assert unchanged[0] is origins  # before retarget: the rays as written
    corrections.retarget(moved_tpf, fitted)
    with torch.no_grad():
        new_o, new_d = corrections(scan, dt, origins, directions)
    r0_t = torch.tensor(r0, dtype=torch.float32)
    torch.testing.assert_close(new_o, origins @ r0_t.T, atol=2e-4, rtol=0)  # spline fit round-off, scene units
    torch.testing.assert_close(new_d, directions @ r0_t.T, atol=1e-4, rtol=0)
    corrections.retarget(fitted, fitted)
    with torch.no_grad():
        same_o, same_d = corrections(scan, dt, origins, directions)
    torch.testing.assert_close(same_o, origins, atol=1e-5, rtol=0)


def test_free_space_loss_counts_only_weight_before_the_return():
    """Hand case: samples ending at 1..5, return at 4 with a 5% margin: samples ending before 3.8 count."""
    ends = torch.arange(1.0, 6.0).reshape(1, 5, 1).repeat(2, 1, 1)
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])[..., None]
    ranges = torch.tensor([[4.0], [4.0]])
    loss = free_space_loss(weights, ends, ranges, margin=0.05)
    assert loss.item() == pytest.approx((0.1 + 0.2 + 0.3 + 0.0) / 2)
    assert free_space_loss(weights, ends, ranges * 0.1, margin=0.05).item() == 0.0


def test_scans_outside_the_rgb_time_span_are_named_in_a_warning(tmp_path):
    from async_nerf_ns.layout import LayoutWarning

    write_tiny_layout(tmp_path)  # train RGB frames at 10.0 ... 12.5 s
    write_lidar_track(tmp_path, times=(9.0, 10.7, 13.0))
    with pytest.warns(LayoutWarning, match=r"lidar_top: 2 of 3 scans of LiDAR track 'top' lie outside"):
        read_layout(tmp_path)
