"""What ns-eval reports beyond image metrics: depth accuracy and depth-frame pose errors.

Depth metrics (metres, distance along each pixel's ray, valid pixels only): RMSE, AbsRel and the
fraction of pixels with max(pred/gt, gt/pred) < 1.25. Pose errors: translation (m) and rotation
(deg) of depth-frame poses against pose_gt, for each pose source the pipeline knows.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch
from jaxtyping import Float
from nerfstudio.models.base_model import Model
from torch import Tensor

from async_nerf_ns.data.depth_frames import DepthFrameSet
from async_nerf_ns.trajectory.metrics import pose_errors


def depth_errors(predicted_m: Float[Tensor, "n"], measured_m: Float[Tensor, "n"]) -> Dict[str, float]:
    """RMSE (m), AbsRel and delta<1.25 over pixels with a measurement (> 0)."""
    valid = measured_m > 0
    pred, gt = predicted_m[valid].double(), measured_m[valid].double()
    ratio = torch.maximum(pred / gt, gt / pred.clamp_min(1e-9))
    return {
        "depth_rmse_m": float(torch.sqrt(torch.mean((pred - gt) ** 2))),
        "depth_abs_rel": float(torch.mean(torch.abs(pred - gt) / gt)),
        "depth_delta_1_25": float(torch.mean((ratio < 1.25).double())),
    }


@torch.no_grad()
def evaluate_depth_frames(model: Model, frames: DepthFrameSet) -> Dict[str, float]:
    """Renders every depth frame at its pose and compares expected ray termination with the measurement."""
    predicted, measured = [], []
    cameras = frames.cameras.to(model.device)
    for i in range(len(frames)):
        outputs = model.get_outputs_for_camera(cameras[i : i + 1])
        predicted.append(outputs["expected_depth"].reshape(-1).cpu())
        measured.append(frames.ray_distance(i).reshape(-1))
    scale = frames.pose_scale_factor
    metrics = depth_errors(torch.cat(predicted) * scale, torch.cat(measured) * scale)
    metrics["depth_frames"] = float(len(frames))
    return metrics


def flat_pose_errors(prefix: str, poses: Mapping[str, Tensor], gt: Tensor, metres_per_unit: float) -> Dict[str, float]:
    """``{prefix}_{source}_{translation_m|rotation_deg}_{mean|median|max}`` for each pose source."""
    flat: Dict[str, float] = {}
    for source, pred in poses.items():
        errors = pose_errors(pred, gt, metres_per_unit)
        for quantity in ("translation_m", "rotation_deg"):
            for statistic, value in errors[quantity].items():  # type: ignore[union-attr]
                flat[f"{prefix}_{source}_{quantity}_{statistic}"] = value
    return flat
