"""Names of what a training batch carries besides nerfstudio's ``image`` and ``indices``.

Whether a ray is a depth ray has one representation, its position: a training batch's ray bundle holds
its RGB rays (as many as ``batch["image"]`` has rows), then its D depth-frame rays (`depth_ray_start`),
then its L LiDAR rays (`lidar_ray_start`). So the split is known on the host, and code that treats the
kinds apart slices the bundle (no device wait).

- ``batch[CELL_BATCH_KEY]``: the partition cell the batch belongs to, a Python int (the model renders
  the batch with that cell alone);
- ``batch[DEPTH_FRAME_KEY]``: (D,) long, the depth frame of each depth ray (for its pose corrections);
- ``batch[DEPTH_BATCH_KEY]``: (D, 1) measured distance along each depth ray, scene units;
- ``batch[LIDAR_RANGE_KEY]``: (L, 1) each LiDAR ray's range to its return, scene units;
- ``batch[LIDAR_SCAN_KEY]``: (L,) long, the scan of each LiDAR ray; ``batch[LIDAR_DT_KEY]``: (L,) float32, its
  point's time after the scan's stamp, seconds (for the stage-3 move of the ray with the fine-tuned TPF).
"""

from typing import Dict


DEPTH_FRAME_KEY = "depth_frame"
CELL_BATCH_KEY = "cell"
DEPTH_BATCH_KEY = "depth"
LIDAR_RANGE_KEY = "lidar_range"
LIDAR_SCAN_KEY = "lidar_scan"
LIDAR_DT_KEY = "lidar_dt"


def depth_ray_start(batch: Dict) -> int:
    """Index of a training batch's first depth ray in its ray bundle (= its number of RGB rays)."""
    return len(batch["image"])


def lidar_ray_start(batch: Dict) -> int:
    """Index of a training batch's first LiDAR ray in its ray bundle (after its RGB and depth-frame rays)."""
    depth = batch.get(DEPTH_BATCH_KEY)
    return depth_ray_start(batch) + (0 if depth is None else len(depth))
