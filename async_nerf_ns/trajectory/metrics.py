"""Pose errors in physical units: translation in metres, rotation in degrees."""

from __future__ import annotations

from typing import Dict, Union

import numpy as np
import torch

from async_nerf_ns.trajectory.rotations import relative_rotation_angles_np

PoseArray = Union[np.ndarray, torch.Tensor]


def _as_numpy_poses(poses: PoseArray, name: str) -> np.ndarray:
    array = poses.detach().cpu().numpy() if isinstance(poses, torch.Tensor) else np.asarray(poses)
    array = array.astype(np.float64)
    if array.ndim != 3 or array.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"{name}: expected poses of shape (N, 3, 4) or (N, 4, 4), got {array.shape}")
    return array[:, :3, :4]


def pose_errors(pred: PoseArray, gt: PoseArray, metres_per_unit: float) -> Dict[str, object]:
    """Per-frame and summary errors between predicted and true camera-to-world poses.

    Args:
        pred: (N, 3, 4) predicted c2w, in scene units (the same frame as `gt`).
        gt: (N, 3, 4) true c2w.
        metres_per_unit: the dataset's `pose_scale_factor` (metres per scene unit).

    Returns:
        `translation_m` and `rotation_deg` dicts with `mean`, `median`, `max` (floats), the
        per-frame arrays `translation_m_per_frame` and `rotation_deg_per_frame`, and `count`.
        Translation error is the distance between camera centres; rotation error is the geodesic
        angle of the relative rotation (angle of pred^T gt).
    """
    pred_np = _as_numpy_poses(pred, "pred")
    gt_np = _as_numpy_poses(gt, "gt")
    if pred_np.shape[0] != gt_np.shape[0]:
        raise ValueError(f"pred has {pred_np.shape[0]} poses but gt has {gt_np.shape[0]}")
    if pred_np.shape[0] == 0:
        raise ValueError("pose_errors needs at least one pose")
    translation = np.linalg.norm(pred_np[:, :, 3] - gt_np[:, :, 3], axis=-1) * metres_per_unit
    rotation = np.degrees(relative_rotation_angles_np(pred_np[:, :, :3], gt_np[:, :, :3]))
    return {
        "count": int(translation.shape[0]),
        "translation_m": summarise(translation),
        "rotation_deg": summarise(rotation),
        "translation_m_per_frame": translation,
        "rotation_deg_per_frame": rotation,
    }


def summarise(values: np.ndarray) -> Dict[str, float]:
    """Mean, median and max of a 1-D array, as Python floats (JSON-ready)."""
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), "max": float(np.max(values))}


def summary_only(errors: Dict[str, object]) -> Dict[str, object]:
    """The JSON-friendly part of `pose_errors` output (drops the per-frame arrays)."""
    return {key: value for key, value in errors.items() if not key.endswith("_per_frame")}
