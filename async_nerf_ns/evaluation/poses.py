"""Depth-frame pose errors for ns-eval: translation (m) and rotation (deg) against pose_gt, per pose source."""

from __future__ import annotations

from typing import Dict, Mapping

from torch import Tensor

from async_nerf_ns.trajectory.metrics import pose_errors


def flat_pose_errors(prefix: str, poses: Mapping[str, Tensor], gt: Tensor, metres_per_unit: float) -> Dict[str, float]:
    """``{prefix}_{source}_{translation_m|rotation_deg}_{mean|median|max}`` for each pose source."""
    flat: Dict[str, float] = {}
    for source, pred in poses.items():
        errors = pose_errors(pred, gt, metres_per_unit)
        for quantity in ("translation_m", "rotation_deg"):
            for statistic, value in errors[quantity].items():  # type: ignore[union-attr]
                flat[f"{prefix}_{source}_{quantity}_{statistic}"] = value
    return flat
