"""Least-squares cubic B-spline curves over normalised time, with the knot spacing chosen by
cross-validation. They are the smooth base of the time-pose function (see `tpf.py`).

A least-squares spline with a knot every few frames averages the pose noise of the frames
around each knot, while an interpolating spline (`baselines.CubicSplineInterp`) reproduces it.
How many frames a knot may average depends on the noise and on how fast the camera moves, which
differ per dataset, so the spacing is picked by K-fold cross-validation over the training frames:
the spacing whose curve best predicts frames it was not fitted to. On clean data that is a dense
spacing (error at the level of an interpolating spline); on noisy data a sparse one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from async_nerf_ns.trajectory.time_grid import cubic_bspline_basis

#: Weight of a second-difference penalty on the control points, relative to the data term. It
#: only keeps the normal equations regular where a knot interval holds no frame (a gap, or a
#: cross-validation fold); at 1e-9 it changes a fit to data of unit scale by ~1e-9.
_REGULARISATION = 1e-9


def least_squares_control_points(time: np.ndarray, values: np.ndarray, cells: int) -> np.ndarray:
    """Control points (cells + 3, D), float64, of the uniform cubic B-spline on [0, 1] with `cells`
    cells that is closest (least squares) to `values` (N, D) at normalised times `time` (N,)."""
    basis = cubic_bspline_basis(time, cells)
    second_difference = scipy.sparse.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(cells + 1, cells + 3))
    normal = basis.T @ basis
    scale = max(float(normal.diagonal().mean()), 1e-12)
    system = (normal + _REGULARISATION * scale * (second_difference.T @ second_difference)).tocsc()
    solution = scipy.sparse.linalg.spsolve(system, basis.T @ values)
    return np.asarray(solution, dtype=np.float64).reshape(cells + 3, -1)


def cells_for_spacing(num_frames: int, frames_per_knot: float) -> int:
    """Number of spline cells for a knot every `frames_per_knot` frames (at least one)."""
    return max(1, int(round((num_frames - 1) / frames_per_knot)))


def cross_validation_error(time: np.ndarray, values: np.ndarray, cells: int, folds: int) -> float:
    """Mean squared error on held-out frames: frame i is held out in fold i % folds."""
    fold_of = np.arange(time.shape[0]) % folds
    squared = 0.0
    for fold in range(folds):
        held_out = fold_of == fold
        control = least_squares_control_points(time[~held_out], values[~held_out], cells)
        squared += float(((cubic_bspline_basis(time[held_out], cells) @ control - values[held_out]) ** 2).sum())
    return squared / time.shape[0]


def select_cells(time: np.ndarray, values: np.ndarray, frames_per_knot: Sequence[float], folds: int) -> int:
    """The number of cells, among the spacings `frames_per_knot`, with the lowest
    cross-validation error; ties go to the sparser spline (the smoother curve)."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    candidates = sorted({cells_for_spacing(time.shape[0], spacing) for spacing in frames_per_knot})
    if len(candidates) == 1 or time.shape[0] < 2 * folds:
        return candidates[0]
    errors = [cross_validation_error(time, values, cells, folds) for cells in candidates]
    return candidates[int(np.argmin(errors))]
