"""Fine-tuning the time-pose function through the depth loss (optional part of stage 3).

Depth rays are generated once, at the depth frames' stage-1 poses (the TPF as fitted). To let the
depth loss move the TPF itself, each depth ray is moved from its frame's stage-1 pose to the
current TPF's pose at the frame's timestamp, differentiably in the TPF's parameters. The move is
expressed as the same kind of 3x4 correction that nerfstudio's CameraOptimizer applies to rays
(rotate the direction, shift the origin), so it composes with the per-frame SO3xR3 corrections of
`model/pose_refinement.py`: pose = per-frame correction o TPF move o stage-1 pose.

Unlike per-frame corrections, a change of the TPF is a change of a smooth trajectory: it moves the
frames near the supervised ones too, including depth frames never trained on (the val split).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from async_nerf_ns.trajectory.tpf import FittedTPF


class TPFRayCorrections:
    """Per-depth-frame 3x4 corrections from the stage-1 poses to the current TPF's poses.

    Holds the TPF being fine-tuned without registering it as a submodule: the TPF belongs to the
    pipeline (saved once, under ``tpf.*``); the pose optimiser only borrows it. Until a TPF is given
    (``retarget``) the corrections are the identity.
    """

    def __init__(self, timestamps: np.ndarray) -> None:
        self.timestamps = np.asarray(timestamps, dtype=np.float64)
        self.tpf: Optional[FittedTPF] = None
        self._normalised: Optional[Tensor] = None
        self._stage1_c2w: Optional[Tensor] = None

    def retarget(self, tpf: FittedTPF, stage1: FittedTPF) -> None:
        """Corrections from ``stage1``'s poses (the depth rays') to ``tpf``'s, on ``tpf``'s device."""
        self.tpf = tpf
        device = tpf.position_centre.device
        self._normalised = torch.as_tensor(tpf.normalise_time(self.timestamps), dtype=torch.float32, device=device)
        with torch.no_grad():
            self._stage1_c2w = stage1.poses(self.timestamps).detach().float().to(device)

    def __len__(self) -> int:
        return len(self.timestamps)

    def __call__(self, frames: Int[Tensor, "m"]) -> Float[Tensor, "m 3 4"]:
        """Corrections (M,3,4) for depth-frame indices (M,): [R_now R_stage1^T | t_now - t_stage1].

        Indexes device tensors only (no host synchronisation): the TPF is evaluated per ray."""
        if self.tpf is None:
            return torch.eye(4, device=frames.device)[None, :3, :4].expand(len(frames), 3, 4)
        assert self._normalised is not None and self._stage1_c2w is not None
        rays_device = frames.device
        frames = frames.to(self._normalised.device)  # the same device in training: no copy
        current = self.tpf.poses_at(self._normalised[frames])
        stage1 = self._stage1_c2w[frames]
        rotation = current[:, :, :3] @ stage1[:, :, :3].transpose(-1, -2)
        translation = current[:, :, 3:] - stage1[:, :, 3:]
        return torch.cat([rotation, translation], dim=-1).to(rays_device)
