"""Pose corrections for the two sensors of the rig: RGB cameras and asynchronous depth frames.

Both are nerfstudio CameraOptimizers (SO3xR3/SE3 corrections per frame); this wrapper routes each
ray to the right one. A depth ray carries its depth-frame index in ``metadata["depth_frame"]``
(-1 for RGB rays), because its ``camera_indices`` point at an RGB frame for the appearance
embedding. Depth corrections are only applied once joint refinement has started (stage 3).

Optionally (the pipeline's ``finetune_tpf``), a depth ray is first moved from its stage-1 pose to
the current time-pose function's pose (``trajectory``, see trajectory/finetune.py), so that the
depth loss fine-tunes the TPF too; the per-frame correction is applied on top of that.

Ray geometry stays float32 under mixed precision: the corrections are computed and applied with
autocast off (as nerfstudio keeps a RayBundle's geometry float32), whatever precision the inputs
come in. RGB and depth rays are told apart with ``torch.where`` on the depth-frame index, not with
index lists: no host synchronisation, and no mixed-dtype ``index_copy`` (which CUDA refuses).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional

import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizer, CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor, nn

from async_nerf_ns.data.ray_keys import DEPTH_FRAME_KEY
from async_nerf_ns.model.param_groups import DEPTH_POSE_GROUP

Corrections = Callable[[Tensor], Tensor]
"""Frame indices (M,) -> 3x4 corrections (M, 3, 4)."""


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
    ) -> None:
        super().__init__()
        self.rgb = rgb_config.setup(num_cameras=num_rgb, device="cpu")
        self.depth: CameraOptimizer = depth_config.setup(num_cameras=max(num_depth, 1), device="cpu")
        self.depth_active = False
        """Set by the model on each training batch: whether the batch's cell is in stage 3."""
        self.trajectory = trajectory
        self._first_depth_ray: Optional[int] = None
        """Set within ``depth_rays_from``: where a training batch's depth rays start."""
        """Depth-frame indices -> 3x4 corrections from the stage-1 poses to the fine-tuned TPF's, when
        the pipeline fine-tunes the TPF (owned by the pipeline, which saves the TPF under ``tpf.*``)."""

    def _depth_corrections(self) -> List[Corrections]:
        """The corrections applied to depth rays in stage 3, in order: TPF fine-tuning, per frame."""
        corrections: List[Corrections] = []
        if self.trajectory is not None:
            corrections.append(self.trajectory)
        if self.depth.config.mode != "off":
            corrections.append(self.depth)
        return corrections

    @contextlib.contextmanager
    def depth_rays_from(self, first: Optional[int]) -> Iterator[None]:
        """Within the block, the bundles' depth rays are those from index ``first`` on (a training batch:
        RGB rays, then depth rays): only they are corrected, so the TPF is evaluated for them alone."""
        previous, self._first_depth_ray = self._first_depth_ray, first
        try:
            yield
        finally:
            self._first_depth_ray = previous

    def apply_to_raybundle(self, ray_bundle: RayBundle) -> None:
        depth_frame = ray_bundle.metadata.get(DEPTH_FRAME_KEY)
        rgb_on = self.rgb.config.mode != "off"
        depth_corrections = self._depth_corrections() if self.depth_active and depth_frame is not None else []
        if not rgb_on and not depth_corrections:
            return
        with torch.autocast(device_type=ray_bundle.origins.device.type, enabled=False):
            origins, directions = ray_bundle.origins.float(), ray_bundle.directions.float()
            new_origins, new_directions = origins, directions
            is_depth = None if depth_frame is None else (depth_frame >= 0)
            if rgb_on:
                corrected = _apply(self.rgb(ray_bundle.camera_indices[..., 0]), origins, directions)
                if is_depth is None:
                    new_origins, new_directions = corrected
                else:
                    new_origins = torch.where(is_depth, origins, corrected[0])
                    new_directions = torch.where(is_depth, directions, corrected[1])
            if depth_corrections:
                assert depth_frame is not None and is_depth is not None
                first = self._first_depth_ray
                if first is None:
                    frames = depth_frame[..., 0].clamp(min=0)  # RGB rays (-1) compute a correction that is dropped
                    o, d = origins, directions
                    for corrections in depth_corrections:
                        o, d = _apply(corrections(frames), o, d)
                    new_origins = torch.where(is_depth, o, new_origins)
                    new_directions = torch.where(is_depth, d, new_directions)
                elif first < len(depth_frame):  # the batch's tail: corrected alone, its RGB rays untouched
                    o, d = origins[first:], directions[first:]
                    for corrections in depth_corrections:
                        o, d = _apply(corrections(depth_frame[first:, 0]), o, d)
                    new_origins = torch.cat([new_origins[:first], o])
                    new_directions = torch.cat([new_directions[:first], d])
        ray_bundle.origins, ray_bundle.directions = new_origins, new_directions

    def apply_to_camera(self, camera: Cameras) -> Tensor:
        return self.rgb.apply_to_camera(camera)

    def corrected_depth_poses(self, c2w: Tensor) -> Tensor:
        """Depth-frame poses (N,3,4), given at stage 1, with the learned corrections applied (as to the rays)."""
        frames = torch.arange(c2w.shape[0], device=c2w.device)
        for corrections in self._depth_corrections():
            c2w = _apply_to_poses(corrections(frames).float(), c2w)
        return c2w

    def get_loss_dict(self, loss_dict: Dict) -> None:
        self.rgb.get_loss_dict(loss_dict)
        if self.depth_active:
            depth_losses: Dict = {}
            self.depth.get_loss_dict(depth_losses)
            loss_dict.update({f"depth_pose_{k}": v for k, v in depth_losses.items()})

    def get_metrics_dict(self, metrics_dict: Dict) -> None:
        """nerfstudio's camera-optimiser metrics, as device tensors (nerfstudio's own read them back to
        the host with ``.cpu()`` on every step)."""
        optimizers = [("camera_opt", self.rgb)] + ([("depth_pose_opt", self.depth)] if self.depth_active else [])
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
