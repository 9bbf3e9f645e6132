"""Time-pose function, classical baselines, rotation helpers and pose metrics.

The helix: radius 1 m, rising 0.2 m per turn, one turn per 10 s, the camera looking along its
direction of travel; sampled at 10 Hz for 20 s from an epoch time (1667117650 s), every 8th frame
held out (never the ends). Units are metres (metres_per_unit = 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation, Slerp

from async_nerf_ns.trajectory.timed_poses import split_every
from examples import trajectories as synthetic
from async_nerf_ns.trajectory.baselines import CubicSplineInterp, LinearSlerp
from async_nerf_ns.trajectory.fit import fit_tpf, rotation_loss
from async_nerf_ns.trajectory.metrics import pose_errors
from async_nerf_ns.trajectory.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
    squared_chordal_distance,
    squared_geodesic_angle,
)
from async_nerf_ns.trajectory.spline_fit import least_squares_control_points, select_cells
from async_nerf_ns.trajectory.time_grid import TimeGridEncoding, cubic_bspline_basis
from async_nerf_ns.trajectory.tpf import FittedTPF, TimePoseFunctionConfig

# 200 residual steps instead of the default 1000 keep each fit at ~2 s; on these smooth
# trajectories the held-out check keeps the base either way (see bench_tpf.py).
FAST = TimePoseFunctionConfig(iterations=200)
NOISE_M, NOISE_DEG = 0.03, 0.3  # SfM-like: 3 cm per axis, 0.3 degrees per axis


@pytest.fixture(scope="module")
def helix():
    times = synthetic.sample_times(20.0, 10.0)
    poses = synthetic.helix(times - times[0])
    train, held_out = split_every(times.shape[0], 8)
    return times, poses, train, held_out


@pytest.fixture(scope="module")
def clean_fit(helix):
    times, poses, train, _ = helix
    return fit_tpf(times[train], poses[train], FAST, progress=False)


@pytest.fixture(scope="module")
def noisy_poses(helix):
    times, poses, _, _ = helix
    return synthetic.add_pose_noise(poses, NOISE_M, np.radians(NOISE_DEG), seed=1)


@pytest.fixture(scope="module")
def noisy_fit(helix, noisy_poses):
    times, _, train, _ = helix
    return fit_tpf(times[train], noisy_poses[train], FAST, progress=False)


def _held_out_errors(predict, helix):
    times, poses, _, held_out = helix
    return pose_errors(predict(times[held_out]), poses[held_out], metres_per_unit=1.0)


def _tpf_predict(fitted):
    def predict(times):
        with torch.no_grad():
            return fitted.poses(times)

    return predict


# --- time-pose function ------------------------------------------------------------------------


def test_clean_helix_held_out_error(clean_fit, helix):
    """Measured 0.00075 mm and 1.2e-5 deg; bounds 0.01 mm and 0.001 deg. In translation also not worse
    than 1.1x each classical baseline's mean: measured linear 1.97 mm (ratio 0.0004), cubic spline
    0.00109 mm (ratio 0.69: a margin of 1.6x to the bound; same with 1 and 2 threads)."""
    errors = _held_out_errors(_tpf_predict(clean_fit), helix)
    assert errors["translation_m"]["mean"] < 1e-5
    assert errors["rotation_deg"]["mean"] < 1e-3
    times, poses, train, _ = helix
    tpf = errors["translation_m"]["mean"]
    for baseline in (LinearSlerp(), CubicSplineInterp()):
        reference = _held_out_errors(baseline.fit(times[train], poses[train]), helix)["translation_m"]["mean"]
        assert tpf <= 1.1 * reference, (type(baseline).__name__, tpf, reference)


def test_noisy_helix_beats_baselines(noisy_fit, noisy_poses, helix):
    """With 3 cm / 0.3 deg noise on the training poses, the baselines reproduce the noise (linear:
    35 mm, 0.35 deg; cubic: 53 mm, 0.59 deg) while the TPF averages it (14 mm, 0.16 deg): ratios
    measured 0.41 (translation) and 0.47 (rotation) to the best baseline; required below 0.6."""
    times, _, train, _ = helix
    tpf = _held_out_errors(_tpf_predict(noisy_fit), helix)
    for baseline in (LinearSlerp(), CubicSplineInterp()):
        reference = _held_out_errors(baseline.fit(times[train], noisy_poses[train]), helix)
        assert tpf["translation_m"]["mean"] < 0.6 * reference["translation_m"]["mean"]
        assert tpf["rotation_deg"]["mean"] < 0.6 * reference["rotation_deg"]["mean"]


def test_tpf_rotations_are_proper(noisy_fit, helix):
    """Inside and outside the fitted span (extrapolated), det = 1 and R^T R = I to 1e-5."""
    times = helix[0]
    query = np.linspace(times[0] - 2.0, times[-1] + 2.0, 333)
    with torch.no_grad():
        rotations = noisy_fit.poses(query)[:, :, :3].double()
    identity = torch.eye(3, dtype=torch.float64).expand_as(rotations)
    assert torch.allclose(rotations.transpose(1, 2) @ rotations, identity, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(333, dtype=torch.float64), atol=1e-5)


def test_state_dict_round_trip_and_gradients(noisy_fit, helix):
    """A rebuilt TPF answers identically; poses are differentiable w.r.t. every parameter group
    (base splines and residual network), so a depth loss can fine-tune them later."""
    times = helix[0][::7]
    state = noisy_fit.state_dict()
    rebuilt = FittedTPF.from_state_dict(FAST, state)
    with torch.no_grad():
        assert torch.equal(rebuilt.poses(times), noisy_fit.poses(times))
    rebuilt.poses(times).sum().backward()
    for name, parameter in rebuilt.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    spline_grad = rebuilt.network.translation_spline.table.grad
    assert spline_grad.abs().sum() > 0


def test_epoch_timestamps_keep_millisecond_resolution():
    """Two poses 1 ms apart at t = 1.7e9 s (float32 resolution there: 128 s; float64: 2.4e-7 s)
    must get distinct normalised times, 1e-4 apart to float64 precision."""
    times = np.array([1.7e9, 1.7e9 + 0.001, 1.7e9 + 10.0])
    fitted = FittedTPF(FAST, 3, 1, 1)
    fitted.set_normalisation(times, np.zeros((3, 3, 4)))
    normalised = fitted.normalise_time(times)
    assert normalised[1] == pytest.approx(1e-4, rel=1e-3)


def test_residual_learns_what_a_coarse_base_misses(helix):
    """Forcing the base to a single cubic (1 cell) over two helix turns leaves ~0.9 m of error;
    200 residual steps must remove most of it (measured: 885 mm -> 191 mm; required < 400 mm)."""
    times, poses, train, _ = helix
    coarse = TimePoseFunctionConfig(iterations=0, knot_spacings=(1e9,))
    base_only = _held_out_errors(_tpf_predict(fit_tpf(times[train], poses[train], coarse, progress=False)), helix)
    coarse.iterations = 200
    with_residual = _held_out_errors(_tpf_predict(fit_tpf(times[train], poses[train], coarse, progress=False)), helix)
    assert base_only["translation_m"]["mean"] > 0.5
    assert with_residual["translation_m"]["mean"] < 0.4


def test_knot_spacing_follows_the_noise(helix, noisy_poses):
    """Cross-validation picks a dense spline on clean data (<= 4 frames per knot) and a sparse one
    on noisy data (>= 8 frames per knot); measured 2 and 16 frames per knot for translation."""
    times, poses, train, _ = helix
    normalised = (times[train] - times[train][0]) / (times[train][-1] - times[train][0])
    spacings = TimePoseFunctionConfig().knot_spacings
    clean = select_cells(normalised, poses[train][:, :, 3], spacings, folds=5)
    noisy = select_cells(normalised, noisy_poses[train][:, :, 3], spacings, folds=5)
    frames = train.shape[0] - 1
    assert frames / clean <= 4
    assert frames / noisy >= 8


def test_extrapolation_continues_constant_velocity():
    """A camera moving at 2 m/s along x while yawing at 10 deg/s: 1 s past the last frame all
    three methods must be 2 m further and 10 deg more yawed (to 1e-4 m and 0.01 deg)."""
    times = np.arange(30) * 0.1 + 1000.0
    yaw = np.radians(10.0) * (times - times[0])
    poses = np.zeros((30, 3, 4))
    poses[:, :, :3] = Rotation.from_euler("z", yaw[:, None]).as_matrix()
    poses[:, 0, 3] = 2.0 * (times - times[0])
    query = np.array([times[-1] + 1.0, times[0] - 1.0])
    expected = np.zeros((2, 3, 4))
    expected[:, :, :3] = Rotation.from_euler("z", np.radians(10.0) * (query - times[0])[:, None]).as_matrix()
    expected[:, 0, 3] = 2.0 * (query - times[0])
    fitted = fit_tpf(times, poses, TimePoseFunctionConfig(iterations=0), progress=False)
    for predict in (_tpf_predict(fitted), LinearSlerp().fit(times, poses), CubicSplineInterp().fit(times, poses)):
        errors = pose_errors(predict(query), expected, 1.0)
        assert errors["translation_m"]["max"] < 1e-4
        assert errors["rotation_deg"]["max"] < 0.01


def test_bad_trajectories_are_rejected():
    poses = np.tile(np.eye(4)[:3], (3, 1, 1))
    with pytest.raises(ValueError, match="duplicate timestamps"):
        fit_tpf(np.array([1.0, 2.0, 2.0]), poses, FAST, progress=False)
    with pytest.raises(ValueError, match="3 timestamps but 2 poses"):
        LinearSlerp().fit(np.array([1.0, 2.0, 3.0]), poses[:2])
    with pytest.raises(ValueError, match="at least two"):
        CubicSplineInterp().fit(np.array([1.0]), poses[:1])


# --- baselines -----------------------------------------------------------------------------------


def test_baselines_midpoint_of_two_poses():
    """Two poses 90 deg apart about z and 2 m apart along x: half-way in time both baselines give
    scipy's SLERP half-way rotation (45 deg) and exactly the translation midpoint (1, 0, 0)."""
    rotations = Rotation.from_euler("z", [[0.0], [90.0]], degrees=True)
    poses = np.zeros((2, 3, 4))
    poses[:, :, :3] = rotations.as_matrix()
    poses[1, :, 3] = [2.0, 0.0, 0.0]
    times = np.array([10.0, 12.0])
    expected = Slerp(times, rotations)([11.0]).as_matrix()[0]
    for baseline in (LinearSlerp().fit(times, poses), CubicSplineInterp().fit(times, poses)):
        midpoint = baseline(np.array([11.0]))[0]
        np.testing.assert_allclose(midpoint[:, :3], expected, atol=1e-12)
        np.testing.assert_array_equal(midpoint[:, 3], [1.0, 0.0, 0.0])
        assert np.degrees(Rotation.from_matrix(midpoint[:, :3]).magnitude()) == pytest.approx(45.0)


# --- metrics -------------------------------------------------------------------------------------


def test_pose_errors_hand_computed():
    """gt is pred moved 1 unit along x and turned 90 deg about z: with 2.5 m per unit the errors
    are exactly 2.5 m and 90 deg."""
    pred = np.eye(4)[:3][None].repeat(2, axis=0)
    gt = pred.copy()
    gt[:, :, :3] = Rotation.from_euler("z", 90.0, degrees=True).as_matrix()
    gt[:, 0, 3] = 1.0
    errors = pose_errors(pred, gt, metres_per_unit=2.5)
    assert errors["translation_m"] == {"mean": 2.5, "median": 2.5, "max": 2.5}
    assert errors["rotation_deg"]["mean"] == pytest.approx(90.0, abs=1e-12)
    assert errors["count"] == 2
    np.testing.assert_allclose(errors["translation_m_per_frame"], [2.5, 2.5])


# --- rotation helpers, grid, splines -------------------------------------------------------------


def test_rotation_conversions_agree_with_scipy():
    rotations = Rotation.random(64, random_state=0)
    matrices = torch.as_tensor(rotations.as_matrix())
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(matrices)), matrices)
    torch.testing.assert_close(axis_angle_to_matrix(torch.as_tensor(rotations.as_rotvec())), matrices)
    rotation_vectors = torch.as_tensor(rotations.as_rotvec())
    torch.testing.assert_close(matrix_to_axis_angle(matrices), rotation_vectors, atol=1e-8, rtol=0)


def test_rotation_distances():
    """0.3 rad about z: geodesic angle 0.3; chordal ||A - B||^2 = 8 sin^2(0.15); the two losses
    agree (squared angle vs half the chordal) to second order: 0.09 vs 0.0893."""
    a = torch.as_tensor(Rotation.random(5, random_state=1).as_matrix())
    b = a @ torch.as_tensor(Rotation.from_rotvec([0.0, 0.0, 0.3]).as_matrix())
    torch.testing.assert_close(squared_geodesic_angle(a, b).sqrt(), torch.full((5,), 0.3, dtype=torch.float64))
    chordal = torch.full((5,), 8 * np.sin(0.15) ** 2, dtype=torch.float64)
    torch.testing.assert_close(squared_chordal_distance(a, b), chordal)
    assert float(rotation_loss(a, b, "geodesic")) == pytest.approx(0.09)
    assert float(rotation_loss(a, b, "chordal")) == pytest.approx(4 * np.sin(0.15) ** 2)


def test_geodesic_loss_has_finite_gradient_at_zero():
    """The loss sits at zero for a perfect fit: its gradient there must be finite (0), not NaN."""
    tangent = torch.zeros(4, 3, requires_grad=True)
    rotation_loss(axis_angle_to_matrix(tangent), torch.eye(3).expand(4, 3, 3), "geodesic").backward()
    assert torch.equal(tangent.grad, torch.zeros(4, 3))


def test_cubic_bspline_reproduces_lines():
    """A uniform cubic B-spline reproduces straight lines exactly when its control points are the
    line sampled at the knot centres (i - 1) / cells, and its weights sum to 1."""
    cells = 7
    time = np.linspace(0.0, 1.0, 101)
    basis = cubic_bspline_basis(time, cells).toarray()
    np.testing.assert_allclose(basis.sum(axis=1), 1.0, atol=1e-12)
    control = 3.0 * (np.arange(cells + 3) - 1) / cells - 2.0
    np.testing.assert_allclose(basis @ control, 3.0 * time - 2.0, atol=1e-12)
    fitted = least_squares_control_points(time, (3.0 * time - 2.0)[:, None], cells)
    np.testing.assert_allclose(basis @ fitted[:, 0], 3.0 * time - 2.0, atol=1e-7)
    encoding = TimeGridEncoding([cells], 1, "cubic", init_scale=0.0)
    with torch.no_grad():
        encoding.table.copy_(torch.as_tensor(control[:, None]))
    np.testing.assert_allclose(encoding(torch.as_tensor(time)).detach().numpy()[:, 0], 3.0 * time - 2.0, atol=1e-6)
