"""Names of what a training batch carries besides nerfstudio's ``image`` and ``indices``.

Whether a ray is a depth ray has one representation, its position: a training batch's ray bundle holds
its RGB rays (as many as ``batch["image"]`` has rows), then its D depth rays (`depth_ray_start`). So the
split is known on the host, and code that treats the two kinds apart slices the bundle (no device wait).

- ``batch[CELL_BATCH_KEY]``: the partition cell the batch belongs to, a Python int (the model renders
  the batch with that cell alone);
- ``batch[DEPTH_FRAME_KEY]``: (D,) long, the depth frame of each depth ray (for its pose corrections);
- ``batch[DEPTH_BATCH_KEY]``: (D, 1) measured distance along each depth ray, scene units.
"""

from typing import Dict


DEPTH_FRAME_KEY = "depth_frame"
CELL_BATCH_KEY = "cell"
DEPTH_BATCH_KEY = "depth"


def depth_ray_start(batch: Dict) -> int:
    """Index of a training batch's first depth ray in its ray bundle (= its number of RGB rays)."""
    return len(batch["image"])
