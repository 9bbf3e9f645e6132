"""The LiDAR scans of a split, all tracks together: what training and evaluation iterate over.

Tracks come in name order, each in time order, so a scan's index is stable for a dataset; a scan's
time on the RGB clock is its stamp plus its track's clock offset (seconds), and each point's time is
that plus the point's own ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import numpy as np
from torch import Tensor

from async_nerf_ns.layout import LidarScan, load_lidar_points
from async_nerf_ns.layout.frames import stack_poses_world


@dataclass
class LidarScanSet:
    """Every scan of one split's LiDAR tracks (`LidarScan` records of the layout)."""

    scans: List[LidarScan]
    pose_scale_factor: float
    """Metres per scene unit."""

    @classmethod
    def from_tracks(cls, tracks: Mapping[str, Sequence[LidarScan]], pose_scale_factor: float) -> "LidarScanSet":
        return cls([scan for name in sorted(tracks) for scan in tracks[name]], float(pose_scale_factor))

    def __len__(self) -> int:
        return len(self.scans)

    @property
    def track_names(self) -> List[str]:
        return sorted({scan.track for scan in self.scans})

    @property
    def stamps(self) -> np.ndarray:
        """(N,) float64: each scan's stamp on its LiDAR's clock."""
        return np.array([scan.timestamp for scan in self.scans], dtype=np.float64)

    def scan_times(self, offsets: Optional[Mapping[str, float]] = None) -> np.ndarray:
        """(N,) float64: each scan's stamp on the RGB clock (its track's offset added; 0 for tracks not named)."""
        offsets = offsets or {}
        return self.stamps + np.array([float(offsets.get(scan.track, 0.0)) for scan in self.scans], dtype=np.float64)

    @property
    def gt_c2w(self) -> Tensor:
        """(N, 3, 4) float32 true camera poses at the scans' stamps (world frame); NaN where missing."""
        return stack_poses_world([scan.pose_gt for scan in self.scans])

    def files(self) -> List[Path]:
        """Every file whose content decides the scans' rays (scan files and their metadata)."""
        return [path for scan in self.scans for path in (scan.points_path, scan.metadata_path)]

    def points(self, index: int) -> np.ndarray:
        """(M, 4) float64 returns of scan ``index``: x, y, z (LiDAR frame, metres), t (seconds after its stamp)."""
        return load_lidar_points(self.scans[index])

    @property
    def total_rows(self) -> int:
        """Rows in all scan files (returns and empty beams), from the headers: a bound on the returns."""
        return sum(scan.num_rows for scan in self.scans)
