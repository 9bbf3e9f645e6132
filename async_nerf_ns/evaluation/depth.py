"""Depth accuracy for ns-eval: val depth frames rendered at their poses against their measurements.

Metres, distance along each pixel's ray, valid pixels only: RMSE, AbsRel and the fraction of pixels
with max(pred/gt, gt/pred) < 1.25.
"""

from __future__ import annotations

from typing import Dict

import torch
from jaxtyping import Float
from nerfstudio.models.base_model import Model
from torch import Tensor

from async_nerf_ns.data.depth_frames import DepthFrameSet


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
