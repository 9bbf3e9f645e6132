"""Names of the per-ray metadata the datamanager attaches to training rays (read by the model)."""

CELL_KEY = "cell"
"""(R, 1) long: the partition cell that renders this training ray. Absent: the merged field renders."""
DEPTH_FRAME_KEY = "depth_frame"
"""(R, 1) long: index of the depth frame a ray comes from, -1 for RGB rays."""
