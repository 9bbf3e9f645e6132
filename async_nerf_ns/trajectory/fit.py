"""Fitting a time-pose function to timed poses (full-batch Adam, seconds on a CPU)."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from jaxtyping import Float
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from async_nerf_ns.trajectory.timed_poses import prepare_trajectory
from async_nerf_ns.trajectory.rotations import (
    matrix_to_axis_angle,
    squared_chordal_distance,
    squared_geodesic_angle,
)
from async_nerf_ns.trajectory.spline_fit import least_squares_control_points, select_cells
from async_nerf_ns.trajectory.tpf import FittedTPF, TimePoseFunctionConfig


def rotation_loss(
    pred: Float[Tensor, "n 3 3"], target: Float[Tensor, "n 3 3"], kind: str
) -> Float[Tensor, ""]:
    """Mean squared rotation distance on SO(3), in rad^2 for small angles for both kinds."""
    if kind == "geodesic":
        return squared_geodesic_angle(pred, target).mean()
    if kind == "chordal":
        # ||A - B||_F^2 = 8 sin^2(angle / 2) ~ 2 angle^2: halved to match the geodesic's scale.
        return 0.5 * squared_chordal_distance(pred, target).mean()
    raise ValueError(f"rotation_loss must be 'geodesic' or 'chordal', got {kind!r}")


def tpf_losses(
    pred_rotation: Float[Tensor, "n 3 3"],
    pred_translation: Float[Tensor, "n 3"],
    target_rotation: Float[Tensor, "n 3 3"],
    target_translation: Float[Tensor, "n 3"],
    config: TimePoseFunctionConfig,
) -> Dict[str, Tensor]:
    """Weighted loss terms for poses at the (time-sorted) training frames.

    The velocity term compares the motion between consecutive frames, network vs data. It is a
    finite difference on both sides, not an autograd derivative of the network, because (1) the
    data has no instantaneous velocity, only chords between frames, and a tangent differs from a
    chord on a curved path by O(acceleration * dt); (2) it needs no second backward pass. It is the
    velocity times the frame interval, so its units (normalised position; radians) and weight are
    comparable to the pose terms.
    """
    translation = ((pred_translation - target_translation) ** 2).sum(-1).mean()
    rotation = rotation_loss(pred_rotation, target_rotation, config.rotation_loss)
    pred_step = pred_translation[1:] - pred_translation[:-1]
    target_step = target_translation[1:] - target_translation[:-1]
    pred_turn = pred_rotation[:-1].transpose(-1, -2) @ pred_rotation[1:]
    target_turn = target_rotation[:-1].transpose(-1, -2) @ target_rotation[1:]
    velocity = ((pred_step - target_step) ** 2).sum(-1).mean() + rotation_loss(
        pred_turn, target_turn, config.rotation_loss
    )
    return {
        "translation": config.translation_weight * translation,
        "rotation": config.rotation_weight * rotation,
        "velocity": config.velocity_weight * velocity,
    }


def fit_tpf(
    timestamps,
    c2w,
    config: Optional[TimePoseFunctionConfig] = None,
    progress: bool = True,
) -> FittedTPF:
    """Fits a time-pose function to timed poses.

    First the B-spline base, in closed form: knot spacing by cross-validation, then least-squares
    control points for the positions and for the first two rotation columns (the 6-D
    representation). Then the neural residual, by full-batch Adam on the pose and velocity losses.

    Args:
        timestamps: (N,) float64 seconds (epoch times are fine: normalised in float64).
        c2w: (N, 3, 4) (or 4x4) camera-to-world poses, numpy or torch, in any frame and unit.
        config: architecture and schedule; defaults to `TimePoseFunctionConfig()`.
        progress: show a rich progress bar.

    Returns:
        A `FittedTPF` on the CPU in eval mode; `.poses(t)` answers in the frame and units of `c2w`.
    """
    config = config or TimePoseFunctionConfig()
    times, poses = prepare_trajectory(timestamps, c2w)
    columns = np.concatenate([poses[:, :, 0], poses[:, :, 1]], axis=-1)  # the 6-D rotation representation
    # The choice of knots only needs time in [0, 1]: least squares commutes with the position
    # normalisation (an affine map), so the cross-validation can run on the raw positions.
    unit_time = (times - times[0]) / (times[-1] - times[0])
    folds = config.cross_validation_folds
    translation_cells = select_cells(unit_time, poses[:, :, 3], config.knot_spacings, folds)
    rotation_cells = select_cells(unit_time, columns, config.knot_spacings, folds)

    fitted = FittedTPF(config, times.shape[0], translation_cells, rotation_cells)
    fitted.set_normalisation(times, poses)
    normalised_time = fitted.normalise_time(times)
    positions = fitted.normalise_positions(poses[:, :, 3])
    network = fitted.network
    with torch.no_grad():
        control = least_squares_control_points(normalised_time, positions, translation_cells)
        network.translation_spline.table.copy_(torch.as_tensor(control))
        control = least_squares_control_points(normalised_time, columns, rotation_cells)
        network.rotation_spline.table.copy_(torch.as_tensor(control))

    time_tensor = torch.as_tensor(normalised_time, dtype=torch.float32)
    target_translation = torch.as_tensor(positions, dtype=torch.float32)
    target_rotation = torch.as_tensor(poses[:, :, :3], dtype=torch.float32)
    with torch.no_grad():
        base_rotation, base_translation = network.base(time_tensor)
        # Residual outputs are scaled by the base's RMS error per component, so the MLP learns O(1)
        # numbers; floored at float32's resolution of a normalised position.
        network.translation_scale.fill_(max(_rms(base_translation - target_translation), _MIN_RESIDUAL_SCALE))
        angles = matrix_to_axis_angle(base_rotation.transpose(-1, -2) @ target_rotation)
        network.rotation_scale.fill_(max(_rms(angles), _MIN_RESIDUAL_SCALE))

    kept_step = 0
    if config.iterations > 0:
        threads = torch.get_num_threads()
        torch.set_num_threads(config.cpu_threads)
        try:
            kept_step = _fit_residual(fitted, time_tensor, target_rotation, target_translation, config, progress)
        finally:
            torch.set_num_threads(threads)
    fitted.eval()
    fitted.fit_report = {
        "frames": int(times.shape[0]),
        "translation_cells": translation_cells,
        "rotation_cells": rotation_cells,
        "residual_step_kept": kept_step,
    }
    return fitted


#: Smallest residual scale: float32 resolves ~6e-8 of a normalised position in [-1, 1].
_MIN_RESIDUAL_SCALE = 1e-7


def _rms(values: Tensor) -> float:
    return float(torch.sqrt((values.double() ** 2).mean()))


def _fit_residual(
    fitted: FittedTPF,
    time: Tensor,
    target_rotation: Tensor,
    target_translation: Tensor,
    config: TimePoseFunctionConfig,
    progress: bool,
) -> int:
    """Full-batch Adam on the residual network, with the closed-form base fixed; returns the step kept.

    Every `folds`-th frame is held out and the residual is kept at the step where it predicts those
    frames best (step 0 is the base alone): the residual has more freedom than the base, and on a
    smooth trajectory the only thing left for it to fit is the noise the base averaged away.
    """
    validation = torch.arange(time.shape[0]) % config.cross_validation_folds == config.cross_validation_folds - 1
    if time.shape[0] < 2 * config.cross_validation_folds:
        validation[:] = False  # too few frames to hold any out: train on all, keep the last step
    train = ~validation
    optimizer = torch.optim.Adam(fitted.network.residual_parameters(), lr=config.learning_rate)
    decay = (config.final_learning_rate / config.learning_rate) ** (1.0 / config.iterations)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
    best_error, best_step, best_state = float("inf"), 0, None
    fitted.train()
    with Progress(
        TextColumn("[bold]fitting time-pose function"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("fit", total=config.iterations, loss="-")
        for step in range(config.iterations + 1):
            if validation.any() and (step % config.validation_interval == 0 or step == config.iterations):
                with torch.no_grad():
                    rotation, translation = fitted.network(time[validation])
                    losses = tpf_losses(
                        rotation, translation, target_rotation[validation], target_translation[validation], config
                    )
                    error = float(losses["translation"] + losses["rotation"])
                if error < best_error:
                    best_error, best_step = error, step
                    best_state = {k: v.detach().clone() for k, v in fitted.network.state_dict().items()}
                elif step - best_step >= config.patience * config.validation_interval:
                    break
            if step == config.iterations:
                break
            rotation, translation = fitted.network(time[train])
            losses = tpf_losses(rotation, translation, target_rotation[train], target_translation[train], config)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if progress and (step % 50 == 0 or step == config.iterations - 1):
                bar.update(task, completed=step + 1, loss=f"{loss.item():.3e}")
    if best_state is None:  # nothing held out: keep the last step
        return step
    fitted.network.load_state_dict(best_state)
    return best_step
