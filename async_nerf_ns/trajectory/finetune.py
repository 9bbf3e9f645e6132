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

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from async_nerf_ns.trajectory.tpf import FittedTPF


class TPFRayCorrections:
    """Per-depth-frame 3x4 corrections from the stage-1 poses to the current TPF's poses.

    Holds the TPF being fine-tuned without registering it as a submodule: the TPF belongs to the
    pipeline (saved once, under ``tpf.*``); the pose optimiser only borrows it.
    """

    def __init__(
        self, tpf: FittedTPF, timestamps: np.ndarray, stage1_c2w: Float[Tensor, "n 3 4"], device: torch.device | str = "cpu"
    ) -> None:
        assert len(timestamps) == len(stage1_c2w), "one timestamp per stage-1 pose"
        self.tpf = tpf
        self.timestamps = np.asarray(timestamps, dtype=np.float64)
        self.stage1_c2w = stage1_c2w.detach().float().to(device)
        """On the device of the rays they correct (the model's)."""

    def __len__(self) -> int:
        return len(self.timestamps)

    def __call__(self, frames: Int[Tensor, "m"]) -> Float[Tensor, "m 3 4"]:
        """Corrections (M,3,4) for depth-frame indices (M,): [R_now R_stage1^T | t_now - t_stage1]."""
        unique, inverse = torch.unique(frames, return_inverse=True)
        current = self.tpf.poses(self.timestamps[unique.cpu().numpy()]).to(frames.device)
        stage1 = self.stage1_c2w[unique]
        rotation = current[:, :, :3] @ stage1[:, :, :3].transpose(-1, -2)
        translation = current[:, :, 3:] - stage1[:, :, 3:]
        return torch.cat([rotation, translation], dim=-1)[inverse]
