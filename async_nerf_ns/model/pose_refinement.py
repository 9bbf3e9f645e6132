"""Pose corrections for the two sensors of the rig: RGB cameras and asynchronous depth frames.

Both are nerfstudio CameraOptimizers (SO3xR3/SE3 corrections per frame); this wrapper routes each
ray to the right one. A depth ray carries its depth-frame index in ``metadata["depth_frame"]``
(-1 for RGB rays), because its ``camera_indices`` point at an RGB frame for the appearance
embedding. Depth corrections are only applied once joint refinement has started (stage 3).

Optionally (the pipeline's ``finetune_tpf``), a depth ray is first moved from its stage-1 pose to
the current time-pose function's pose (``trajectory``, see trajectory/finetune.py), so that the
depth loss fine-tunes the TPF too; the per-frame correction is applied on top of that.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizer, CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor, nn

from async_nerf_ns.data.ray_keys import DEPTH_FRAME_KEY

DEPTH_POSE_GROUP = "depth_pose_opt"


def _apply(corrections: Tensor, origins: Tensor, directions: Tensor):
    """Apply 3x4 corrections the way CameraOptimizer.apply_to_raybundle does (rotate about the camera)."""
    return origins + corrections[:, :3, 3], torch.bmm(corrections[:, :3, :3], directions[..., None])[..., 0]


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
    ) -> None:
        super().__init__()
        self.rgb = rgb_config.setup(num_cameras=num_rgb, device="cpu")
        self.depth: CameraOptimizer = depth_config.setup(num_cameras=max(num_depth, 1), device="cpu")
        self.depth_active = False
        """Set by the model's stage-3 callback; before that, depth poses are taken as given."""
        self.trajectory: Optional[Callable[[Tensor], Tensor]] = None
        """Depth-frame indices -> 3x4 corrections from the stage-1 poses to the fine-tuned TPF's, when
        the pipeline fine-tunes the TPF (set by the pipeline; not a submodule, the TPF is the pipeline's)."""

    def apply_to_raybundle(self, ray_bundle: RayBundle) -> None:
        depth_frame = ray_bundle.metadata.get(DEPTH_FRAME_KEY)
        if depth_frame is None:
            self.rgb.apply_to_raybundle(ray_bundle)
            return
        depth_frame = depth_frame[..., 0]
        is_depth = depth_frame >= 0
        origins, directions = ray_bundle.origins, ray_bundle.directions
        rgb_rows = torch.nonzero(~is_depth, as_tuple=True)[0]
        depth_rows = torch.nonzero(is_depth, as_tuple=True)[0]
        new_origins, new_directions = origins.clone(), directions.clone()
        if self.rgb.config.mode != "off" and len(rgb_rows):
            corr = self.rgb(ray_bundle.camera_indices[rgb_rows, 0])
            o, d = _apply(corr, origins[rgb_rows], directions[rgb_rows])
            new_origins, new_directions = new_origins.index_copy(0, rgb_rows, o), new_directions.index_copy(0, rgb_rows, d)
        if self.depth_active and len(depth_rows):
            o, d = origins[depth_rows], directions[depth_rows]
            for corrections in self._depth_corrections():
                o, d = _apply(corrections(depth_frame[depth_rows]), o, d)
            new_origins, new_directions = new_origins.index_copy(0, depth_rows, o), new_directions.index_copy(0, depth_rows, d)
        ray_bundle.origins, ray_bundle.directions = new_origins, new_directions

    def _depth_corrections(self) -> List[Callable[[Tensor], Tensor]]:
        """The corrections applied to depth rays in stage 3, in order: TPF fine-tuning, per frame."""
        corrections: List[Callable[[Tensor], Tensor]] = []
        if self.trajectory is not None:
            corrections.append(self.trajectory)
        if self.depth.config.mode != "off":
            corrections.append(self.depth)
        return corrections

    def apply_to_camera(self, camera: Cameras) -> Tensor:
        return self.rgb.apply_to_camera(camera)

    def corrected_depth_poses(self, c2w: Tensor) -> Tensor:
        """Depth-frame poses (N,3,4), given at stage 1, with the learned corrections applied (as to the rays)."""
        frames = torch.arange(c2w.shape[0], device=c2w.device)
        for corrections in self._depth_corrections():
            c2w = _apply_to_poses(corrections(frames), c2w)
        return c2w

    def get_loss_dict(self, loss_dict: Dict) -> None:
        self.rgb.get_loss_dict(loss_dict)
        if self.depth_active:
            depth_losses: Dict = {}
            self.depth.get_loss_dict(depth_losses)
            loss_dict.update({f"depth_pose_{k}": v for k, v in depth_losses.items()})

    def get_metrics_dict(self, metrics_dict: Dict) -> None:
        self.rgb.get_metrics_dict(metrics_dict)
        if self.depth_active:
            depth_metrics: Dict = {}
            self.depth.get_metrics_dict(depth_metrics)
            metrics_dict.update({k.replace("camera_opt", "depth_pose_opt"): v for k, v in depth_metrics.items()})

    def get_param_groups(self, param_groups: Dict[str, List]) -> None:
        self.rgb.get_param_groups(param_groups)
        if self.depth.config.mode != "off":
            param_groups[DEPTH_POSE_GROUP] = list(self.depth.parameters())
