"""What one training step draws: one cell (round-robin over the trained cells), a batch of that
cell's RGB records and a batch of its depth records, read from the ray shards.

Every draw is a pure function of (seed, draw number): cell = cells[draw % n], and that cell's
``draw // n``-th batch of each stream (`shards.reader.CellRays`). A resumed run therefore continues
exactly where the interrupted one was, with nothing to save but the step. It is also the
``train_pixel_sampler`` of the datamanager: ``num_rays_per_batch`` is what ns-export sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from async_nerf_ns.shards.format import read_manifest
from async_nerf_ns.shards.reader import CellRays

RGB_STREAM, DEPTH_STREAM, LIDAR_STREAM = 0, 1, 2


class CellRaySampler:
    """Round-robin cells; per cell, deterministic batches of its RGB and depth shards."""

    def __init__(
        self,
        rgb_set: Path,
        cells: List[int],
        num_rays_per_batch: int,
        seed: int,
        prefetch: bool = True,
    ) -> None:
        self.rgb_set = Path(rgb_set)
        self.num_rays_per_batch = num_rays_per_batch
        """RGB rays per draw (ns-export sets this)."""
        self.num_depth_rays_per_batch = 0
        self.seed = seed
        self.prefetch = prefetch
        counts = {c["cell"]: c["records"] for c in read_manifest(self.rgb_set)["cells"]}
        self.empty_cells = [k for k in cells if counts.get(k, 0) == 0]
        """Trained cells without a single RGB pixel: skipped (reported by the datamanager)."""
        self.cells = [k for k in cells if counts.get(k, 0) > 0]
        if not self.cells:
            raise RuntimeError(f"none of the cells {cells} sees any training pixel ({self.rgb_set})")
        self.depth_set: Optional[Path] = None
        self.lidar_set: Optional[Path] = None
        self.num_lidar_rays_per_batch = 0
        self._readers: Dict[Tuple[int, int], CellRays] = {}

    def set_depth(self, depth_set: Optional[Path], num_depth_rays_per_batch: int) -> None:
        """Depth shards (at the poses training uses) and depth rays per draw; None: no depth rays."""
        for key in [k for k in self._readers if k[0] == DEPTH_STREAM]:
            self._readers.pop(key).close()
        self.depth_set = None if depth_set is None else Path(depth_set)
        self.num_depth_rays_per_batch = num_depth_rays_per_batch if depth_set is not None else 0

    def set_lidar(self, lidar_set: Optional[Path], num_lidar_rays_per_batch: int) -> None:
        """LiDAR shards (at the poses training uses) and LiDAR rays per draw; None: no LiDAR rays."""
        for key in [k for k in self._readers if k[0] == LIDAR_STREAM]:
            self._readers.pop(key).close()
        self.lidar_set = None if lidar_set is None else Path(lidar_set)
        self.num_lidar_rays_per_batch = num_lidar_rays_per_batch if lidar_set is not None else 0

    def _reader(self, stream: int, cell: int) -> CellRays:
        key = (stream, cell)
        if key not in self._readers:
            shard_set = (self.rgb_set, self.depth_set, self.lidar_set)[stream]
            assert shard_set is not None
            # The streams' seeds: 2s and 2s + 1 for RGB and depth (as before LiDAR existed), 2s + 2^31 for LiDAR.
            seed = self.seed * 2 + stream if stream != LIDAR_STREAM else self.seed * 2 + 2**31
            self._readers[key] = CellRays(shard_set, cell, seed=seed, prefetch=self.prefetch)
        return self._readers[key]

    def cell_of(self, draw: int) -> int:
        # Round-robin: every cell gets the same number of steps, as when cells train in separate
        # processes (Mega-NeRF trains each submodule for the same number of iterations).
        return self.cells[draw % len(self.cells)]

    def sample(self, draw: int) -> Tuple[int, np.ndarray, Optional[np.ndarray]]:
        """(cell, RGB records, depth records or None) of draw number ``draw``."""
        cell = self.cell_of(draw)
        local = draw // len(self.cells)
        rgb = self._reader(RGB_STREAM, cell).batch(local, self.num_rays_per_batch)
        depth = None
        if self.depth_set is not None and self.num_depth_rays_per_batch > 0:
            depth = self._reader(DEPTH_STREAM, cell).batch(local, self.num_depth_rays_per_batch)
        return cell, rgb, depth

    def sample_lidar(self, draw: int) -> Optional[np.ndarray]:
        """The LiDAR records of draw number ``draw`` (same cell as `sample`'s), or None without LiDAR rays."""
        if self.lidar_set is None or self.num_lidar_rays_per_batch <= 0:
            return None
        cell = self.cell_of(draw)
        return self._reader(LIDAR_STREAM, cell).batch(draw // len(self.cells), self.num_lidar_rays_per_batch)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
