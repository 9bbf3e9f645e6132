"""What ns-eval reports of the LiDAR tracks: range accuracy on the val scans and the scans' pose errors.

Range: every val scan's returns (up to ``points_per_scan`` of them, evenly spaced in the scan's order) as
rays at the poses of stage 1's TPF (as fitted: every run on a dataset is judged at the same poses, as val
depth frames are at their true poses) at each point's own time plus its track's clock offset, rendered by
the merged field; the expected ray termination against the measured range, metres.
Poses: where `pose_gt_lidar_TRACK/` gives the camera's true pose at a scan's stamp, the error of the TPF's
pose there: ``tpf`` (as fitted), ``tpf_without_offset`` (when an offset is applied) and ``tpf+refine`` (the
fine-tuned TPF, ``--pipeline.finetune-tpf``), train and val scans, as for depth frames.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
from nerfstudio.cameras.rays import RayBundle

from async_nerf_ns.data.stage1 import Stage1
from async_nerf_ns.evaluation.poses import flat_pose_errors
from async_nerf_ns.lidar.poses import cpu_pose_function
from async_nerf_ns.lidar.rays import PoseFunction, scan_rays
from async_nerf_ns.lidar.scans import LidarScanSet

POINTS_PER_SCAN = 4096
"""Returns of each val scan rendered for the range metrics (bounds ns-eval's time on dense LiDARs)."""


def range_errors(predicted_m: torch.Tensor, measured_m: torch.Tensor) -> Dict[str, float]:
    """RMSE and mean absolute error (m) and mean relative error of rendered against measured ranges."""
    pred, gt = predicted_m.double(), measured_m.double()
    return {
        "lidar_range_rmse_m": float(torch.sqrt(torch.mean((pred - gt) ** 2))),
        "lidar_range_mae_m": float(torch.mean(torch.abs(pred - gt))),
        "lidar_range_abs_rel": float(torch.mean(torch.abs(pred - gt) / gt)),
    }


@torch.no_grad()
def evaluate_lidar_scans(model, scans: LidarScanSet, poses_at: PoseFunction, offsets: Dict[str, float],
                         points_per_scan: int = POINTS_PER_SCAN) -> Dict[str, float]:
    """Range metrics of ``scans`` rendered by ``model`` (see the module docstring)."""
    times = scans.scan_times(offsets)
    predicted, measured = [], []
    for index in range(len(scans)):
        points = scans.points(index)
        if not len(points):
            continue
        points = points[:: max(1, math.ceil(len(points) / points_per_scan))]
        rays = scan_rays(points, float(times[index]), scans.scans[index].lidar_to_camera, poses_at, scans.pose_scale_factor)
        count = len(rays)
        ones = torch.ones((count, 1, 1), device=model.device)
        bundle = RayBundle(
            origins=torch.from_numpy(rays.origins).float().to(model.device)[:, None],
            directions=torch.from_numpy(rays.directions).float().to(model.device)[:, None],
            pixel_area=ones * 1e-5,
            camera_indices=torch.zeros((count, 1, 1), dtype=torch.long, device=model.device),
            metadata={"directions_norm": ones},
        )
        outputs = model.get_outputs_for_camera_ray_bundle(bundle)
        predicted.append(outputs["expected_depth"].reshape(-1).cpu())
        measured.append(torch.from_numpy(rays.ranges).float())
    if not predicted:
        return {}
    scale = scans.pose_scale_factor
    metrics = range_errors(torch.cat(predicted) * scale, torch.cat(measured) * scale)
    metrics["lidar_eval_scans"], metrics["lidar_eval_points"] = float(len(predicted)), float(sum(len(m) for m in measured))
    return metrics


def lidar_pose_errors(split: str, scans: LidarScanSet, stage1: Stage1) -> Dict[str, float]:
    """``lidar_pose_{split}_{tpf|tpf_without_offset|tpf+refine}_...``: the TPFs' poses at the scans' stamps
    against pose_gt."""
    gt = scans.gt_c2w
    keep = torch.isfinite(gt).reshape(len(scans), -1).all(dim=1)
    fitted = stage1.fitted
    if fitted is None or not bool(keep.any()):
        return {}
    offsets = stage1.time_offsets()
    times = scans.scan_times(offsets)[keep.numpy()]
    with torch.no_grad():
        poses = {"tpf": fitted.poses(times).cpu()}
        if any(offsets.get(name, 0.0) for name in scans.track_names):
            poses["tpf_without_offset"] = fitted.poses(scans.stamps[keep.numpy()]).cpu()
        if stage1.stage1_tpf is not None and stage1.tpf is not None:
            poses["tpf+refine"] = stage1.tpf.poses(times).cpu()
    return flat_pose_errors(f"lidar_pose_{split}", poses, gt[keep], scans.pose_scale_factor)


def lidar_metrics(model, stage1: Stage1, train_scans, val_scans) -> Dict[str, float]:
    """Range metrics on the val scans (with a TPF) and pose errors of train and val scans with pose_gt."""
    metrics: Dict[str, float] = {}
    if val_scans is not None and stage1.fitted is not None:
        offsets = stage1.time_offsets()
        metrics.update(evaluate_lidar_scans(model, val_scans, cpu_pose_function(stage1.fitted), offsets))
    for split, scans in (("train", train_scans), ("val", val_scans)):
        if scans is not None:
            metrics.update(lidar_pose_errors(split, scans, stage1))
    return metrics

