"""Pose corrections for the two sensors of the rig: RGB cameras and asynchronous depth frames.

Both are nerfstudio CameraOptimizers (SO3xR3/SE3 corrections per frame); this wrapper routes each
ray to the right one. A training batch's rays are its RGB rays, then its depth rays (the one
representation of "depth ray", `async_nerf_ns.data.ray_keys`): RGB corrections (by camera index) go to
the first rays, depth corrections (by the depth frames the batch names) to the last ones, once joint
refinement has started for the batch's cell (stage 3). A depth ray's ``camera_indices`` name the RGB
frame whose appearance embedding renders it, nothing else.

Optionally (the pipeline's ``finetune_tpf``), a depth ray is first moved from its stage-1 pose to
the current time-pose function's pose (``trajectory``, see trajectory/finetune.py), so that the
depth loss fine-tunes the TPF too; the per-frame correction is applied on top of that. LiDAR rays come
last in a batch and are moved the same way, each at its point's own time (``lidar_trajectory``,
lidar/corrections.py).

Ray geometry stays float32 under mixed precision: the corrections are computed and applied with
autocast off (as nerfstudio keeps a RayBundle's geometry float32), whatever precision the inputs
come in. The RGB and depth rays are slices at a position known on the host: no host synchronisation,
and no mixed-dtype ``index_copy`` (which CUDA refuses).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizer, CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor, nn

from async_nerf_ns.lidar.corrections import LidarRayCorrections
from async_nerf_ns.model.param_groups import DEPTH_POSE_GROUP

Corrections = Callable[[Tensor], Tensor]
"""Frame indices (M,) -> 3x4 corrections (M, 3, 4)."""
LidarRays = Tuple[Tensor, Tensor]
"""A batch's LiDAR rays: their scans (L,) long and their points' times after the scans' stamps (L,) seconds."""


def _apply(corrections: Tensor, origins: Tensor, directions: Tensor):
    """Apply 3x4 corrections the way CameraOptimizer.apply_to_raybundle does (rotate about the camera)."""
    corrections = corrections.float()
    rotated = torch.bmm(corrections[:, :3, :3], directions[..., None])[..., 0]
    return origins + corrections[:, :3, 3], rotated


def _apply_to_poses(corrections: Tensor, c2w: Tensor) -> Tensor:
    """The pose change that `_apply` makes to the rays of poses c2w (N,3,4)."""
    return torch.cat([corrections[:, :3, :3] @ c2w[:, :3, :3], c2w[:, :3, 3:] + corrections[:, :3, 3:]], dim=-1)


class RigPoseOptimizer(nn.Module):
    """RGB pose corrections (``camera_opt``) and depth-frame pose corrections (``depth_pose_opt``)."""

    def __init__(
        self,
        rgb_config: CameraOptimizerConfig,
        depth_config: CameraOptimizerConfig,
        num_rgb: int,
        num_depth: int,
        trajectory: Optional[Corrections] = None,
        lidar_trajectory: Optional[LidarRayCorrections] = None,
    ) -> None:
        super().__init__()
        self.rgb = rgb_config.setup(num_cameras=num_rgb, device="cpu")
        self.depth: CameraOptimizer = depth_config.setup(num_cameras=max(num_depth, 1), device="cpu")
        self.trajectory = trajectory
        """Depth-frame indices -> 3x4 corrections from the stage-1 poses to the fine-tuned TPF's, when
        the pipeline fine-tunes the TPF (owned by the pipeline, which saves the TPF under ``tpf.*``)."""
        self.lidar_trajectory = lidar_trajectory
        """LiDAR rays -> moved to the fine-tuned TPF (same condition; `lidar/corrections.py`). LiDAR rays have no
        per-scan corrections: a scan's points are tied to the trajectory at their own times."""

    def _depth_corrections(self) -> List[Corrections]:
        """The corrections applied to depth rays in stage 3, in order: TPF fine-tuning, per frame."""
        corrections: List[Corrections] = []
        if self.trajectory is not None:
            corrections.append(self.trajectory)
        if self.depth.config.mode != "off":
            corrections.append(self.depth)
        return corrections

    def for_batch(
        self, depth_frames: Optional[Tensor], stage3: bool, lidar: Optional[LidarRays] = None
    ) -> "BatchPoseCorrections":
        """The corrections of one training batch, called as nerfacto calls its camera optimiser."""
        return BatchPoseCorrections(self, depth_frames, stage3, lidar)

    def apply_to_raybundle(
        self, ray_bundle: RayBundle, depth_frames: Optional[Tensor] = None, stage3: bool = False,
        lidar: Optional[LidarRays] = None,
    ) -> None:
        """Corrects a flat bundle's rays: its last ``len(lidar[0])`` rays are LiDAR rays of those scans at those
        times, the ``len(depth_frames)`` rays before them depth rays of those depth frames (both corrected in
        ``stage3`` only), the rays before them RGB rays."""
        num_lidar = 0 if lidar is None else len(lidar[0])
        num_depth = 0 if depth_frames is None else len(depth_frames)
        total = ray_bundle.origins.shape[0]
        first, lidar_first = total - num_depth - num_lidar, total - num_lidar
        rgb_on = self.rgb.config.mode != "off"
        depth_corrections = self._depth_corrections() if stage3 and num_depth else []
        lidar_on = stage3 and num_lidar > 0 and self.lidar_trajectory is not None
        if not rgb_on and not depth_corrections and not lidar_on:
            return
        with torch.autocast(device_type=ray_bundle.origins.device.type, enabled=False):
            origins, directions = ray_bundle.origins.float(), ray_bundle.directions.float()
            rgb_o, rgb_d = origins[:first], directions[:first]
            if rgb_on:
                rgb_o, rgb_d = _apply(self.rgb(ray_bundle.camera_indices[:first, 0]), rgb_o, rgb_d)
            depth_o, depth_d = origins[first:lidar_first], directions[first:lidar_first]
            for corrections in depth_corrections:
                depth_o, depth_d = _apply(corrections(depth_frames), depth_o, depth_d)
            lidar_o, lidar_d = origins[lidar_first:], directions[lidar_first:]
            if lidar_on:
                assert lidar is not None and self.lidar_trajectory is not None
                lidar_o, lidar_d = self.lidar_trajectory(lidar[0], lidar[1], lidar_o, lidar_d)
        ray_bundle.origins = torch.cat([rgb_o, depth_o, lidar_o])
        ray_bundle.directions = torch.cat([rgb_d, depth_d, lidar_d])

    def apply_to_camera(self, camera: Cameras) -> Tensor:
        return self.rgb.apply_to_camera(camera)

    def corrected_depth_poses(self, c2w: Tensor) -> Tensor:
        """Depth-frame poses (N,3,4), given at stage 1, with the learned corrections applied (as to the rays)."""
        frames = torch.arange(c2w.shape[0], device=c2w.device)
        for corrections in self._depth_corrections():
            c2w = _apply_to_poses(corrections(frames).float(), c2w)
        return c2w

    def get_loss_dict(self, loss_dict: Dict, stage3: bool = False) -> None:
        self.rgb.get_loss_dict(loss_dict)
        if stage3:
            depth_losses: Dict = {}
            self.depth.get_loss_dict(depth_losses)
            loss_dict.update({f"depth_pose_{k}": v for k, v in depth_losses.items()})

    def get_metrics_dict(self, metrics_dict: Dict, stage3: bool = False) -> None:
        """nerfstudio's camera-optimiser metrics, as device tensors (nerfstudio's own read them back to
        the host with ``.cpu()`` on every step); the depth corrections' in stage 3."""
        optimizers = [("camera_opt", self.rgb)] + ([("depth_pose_opt", self.depth)] if stage3 else [])
        for prefix, optimizer in optimizers:
            if optimizer.config.mode == "off":
                continue
            adjustment = optimizer.pose_adjustment.detach()
            translation, rotation = adjustment[:, :3].norm(dim=-1), torch.rad2deg(adjustment[:, 3:].norm(dim=-1))
            metrics_dict[f"{prefix}_translation_max"] = translation.max()
            metrics_dict[f"{prefix}_translation_mean"] = translation.mean()
            metrics_dict[f"{prefix}_rotation_mean"] = rotation.mean()
            metrics_dict[f"{prefix}_rotation_max"] = rotation.max()

    def get_param_groups(self, param_groups: Dict[str, List]) -> None:
        self.rgb.get_param_groups(param_groups)
        if self.depth.config.mode != "off":
            param_groups[DEPTH_POSE_GROUP] = list(self.depth.parameters())


class BatchPoseCorrections:
    """A `RigPoseOptimizer` for one training batch: its depth rays' frames and whether its cell is in stage 3,
    behind the calls nerfacto makes to its camera optimiser."""

    def __init__(
        self, rig: RigPoseOptimizer, depth_frames: Optional[Tensor], stage3: bool, lidar: Optional[LidarRays] = None
    ) -> None:
        self.rig, self.depth_frames, self.stage3, self.lidar = rig, depth_frames, stage3, lidar

    def apply_to_raybundle(self, ray_bundle: RayBundle) -> None:
        self.rig.apply_to_raybundle(ray_bundle, self.depth_frames, self.stage3, self.lidar)

    def get_loss_dict(self, loss_dict: Dict) -> None:
        self.rig.get_loss_dict(loss_dict, self.stage3)

    def get_metrics_dict(self, metrics_dict: Dict) -> None:
        self.rig.get_metrics_dict(metrics_dict, self.stage3)
