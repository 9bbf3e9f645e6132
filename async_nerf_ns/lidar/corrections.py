"""Stage 3's moves of LiDAR rays from the fitted TPF's poses to the fine-tuned TPF's (``--pipeline.finetune-tpf``).

As for depth frames (`trajectory/finetune.py`), LiDAR rays are written once at the fitted TPF's poses;
with fine-tuning each ray is moved, differentiably in the TPF, to where the current TPF puts its point's
time. Unlike a depth frame's rays a LiDAR ray does not start at the camera (the LiDAR is mounted beside
it), so the move is the rigid motion of the rig at that time applied to the ray: rotation about the
camera, ``o' = R_now R_fit^T (o - c_fit) + c_now``, ``d' = R_now R_fit^T d``, which keeps the lever arm
exact (a translation of the origin alone would not).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from async_nerf_ns.trajectory.tpf import FittedTPF


class LidarRayCorrections:
    """Moves LiDAR rays (by scan index and point time) from the stage-1 TPF's poses to the current TPF's.

    Like `TPFRayCorrections` it borrows the TPFs (the pipeline owns and saves them); until ``retarget``
    the rays are left as they are."""

    def __init__(self, scan_times: np.ndarray) -> None:
        self.scan_times = np.asarray(scan_times, dtype=np.float64)
        """(N,) each training scan's stamp on the RGB clock (its track's offset added), seconds."""
        self.tpf: Optional[FittedTPF] = None
        self.stage1: Optional[FittedTPF] = None
        self._base: Optional[Tensor] = None
        self._rate = 0.0

    def retarget(self, tpf: FittedTPF, stage1: FittedTPF) -> None:
        """Moves from ``stage1``'s poses (the rays') to ``tpf``'s, on ``tpf``'s device."""
        self.tpf, self.stage1 = tpf, stage1
        device = tpf.position_centre.device
        self._base = torch.as_tensor(tpf.normalise_time(self.scan_times), dtype=torch.float32, device=device)
        self._rate = 1.0 / float(tpf.time_span)

    def __call__(self, scan: Tensor, dt: Tensor, origins: Tensor, directions: Tensor) -> Tuple[Tensor, Tensor]:
        """The rays (origins, directions (L, 3) float32) of points of scans ``scan`` (L,) at ``dt`` (L,) seconds
        after their stamps, moved to the current TPF. Device tensors only: no host synchronisation."""
        if self.tpf is None or self.stage1 is None:
            return origins, directions
        assert self._base is not None
        device = origins.device
        normalised = self._base[scan.to(self._base.device)] + dt.to(self._base.device).float() * self._rate
        now = self.tpf.poses_at(normalised).to(device)
        with torch.no_grad():
            fitted = self.stage1.poses_at(normalised).to(device)
        rotation = now[:, :, :3] @ fitted[:, :, :3].transpose(-1, -2)
        moved = torch.bmm(rotation, (origins - fitted[:, :, 3])[..., None])[..., 0] + now[:, :, 3]
        return moved, torch.bmm(rotation, directions[..., None])[..., 0]
