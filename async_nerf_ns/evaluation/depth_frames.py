"""What ns-eval reports of the depth frames: the tracks' clock offsets, depth accuracy of the val frames,
and the train/val frames' pose errors per pose source (prior, TPF, TPF without its clock offset, and
after stage 3's refinement) against pose_gt; and of the LiDAR tracks (evaluation/lidar.py)."""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from async_nerf_ns.data.datamanager import AsyncNerfDataManager
from async_nerf_ns.data.dataparser import METADATA_KEY
from async_nerf_ns.data.depth_frames import DepthFrameSet, concat_tracks
from async_nerf_ns.data.scene_metadata import DepthTrackData
from async_nerf_ns.data.stage1 import TIME_OFFSETS_KEY, DepthPoseSource, Stage1, frame_poses
from async_nerf_ns.evaluation.depth import evaluate_depth_frames
from async_nerf_ns.evaluation.lidar import lidar_metrics
from async_nerf_ns.evaluation.poses import flat_pose_errors
from async_nerf_ns.lidar.scans import LidarScanSet

OFFSET_COLUMNS = ("depth_time_offset_s", "depth_time_offset_estimate_s", "depth_time_offset_std_s")
"""Metric names of the clock-offset table's columns (one entry per track and column that has a value)."""


@torch.no_grad()
def depth_and_pose_metrics(model, stage1: Stage1, data: AsyncNerfDataManager) -> Dict[str, float]:
    """Depth metrics on val depth frames (rendered at their GT poses when every frame has one, else at the
    configured source) and pose errors of train/val depth frames per pose source."""
    scale, configured = data.scene.pose_scale_factor, data.config.depth_poses
    val_scene = data.eval_dataset.metadata[METADATA_KEY]
    val_track = concat_tracks(val_scene) if val_scene.depth_tracks else None
    was_training = model.training
    model.eval()
    metrics = time_offset_metrics(stage1)
    if val_track is not None:
        source = "gt" if _all_gt(val_track) else configured
        metrics.update(evaluate_depth_frames(model, DepthFrameSet(val_track, stage1.depth_poses(val_track, source), scale)))
        # Writers take numbers only: which poses the depth evaluation used is in the name.
        metrics[f"depth_eval_at_{source}_poses"] = 1.0
    for split, track in (("train", data.depth_track), ("val", val_track)):
        if track is not None and _all_gt(track):
            poses = _pose_sources(model, stage1, configured, split, track)
            metrics.update(flat_pose_errors(f"depth_pose_{split}", poses, track.gt_c2w, scale))
    val_scans = LidarScanSet.from_tracks(val_scene.lidar_tracks, scale) if val_scene.lidar_tracks else None
    metrics.update(lidar_metrics(model, stage1, data.lidar_scans, val_scans))
    model.train(was_training)
    return metrics


def time_offset_metrics(stage1: Stage1) -> Dict[str, float]:
    """``depth_time_offset[_estimate|_std]_s_{track}``: the clock-offset table's entries that have a value."""
    table = getattr(stage1, TIME_OFFSETS_KEY)
    return {
        f"{what}_{name}": float(table[row, column])
        for row, name in enumerate(stage1.track_names)
        for column, what in enumerate(OFFSET_COLUMNS)
        if torch.isfinite(table[row, column])
    }


def _all_gt(track: DepthTrackData) -> bool:
    return bool(torch.isfinite(track.gt_c2w).all())


def _pose_sources(model, stage1: Stage1, configured: DepthPoseSource, split: str, track: DepthTrackData) -> Dict[str, Tensor]:
    """A split's depth-frame poses per source: the prior, the fitted TPF's (with and, when an offset is
    applied, without the clock offsets), and the refined ones (train: the configured source's poses after
    the pose optimiser; val: a fine-tuned TPF's, the only thing that moves frames never trained on)."""
    poses: Dict[str, Tensor] = {}
    if torch.isfinite(track.prior_c2w).all():
        poses["prior"] = track.prior_c2w
    if stage1.tpf is not None:
        poses["tpf"] = stage1.depth_poses(track, "tpf")
        if any(stage1.time_offsets().values()):  # what the offset is worth
            poses["tpf_without_offset"] = frame_poses(track, "tpf", stage1.fitted)
    if split == "train" and configured in poses:
        base = poses[configured].to(model.device)
        poses[f"{configured}+refine"] = model.camera_optimizer.corrected_depth_poses(base).cpu()
    elif split == "val" and stage1.stage1_tpf is not None and stage1.tpf is not None:
        poses["tpf+refine"] = stage1.tpf.poses(stage1.depth_times(track)).cpu()
    return poses
