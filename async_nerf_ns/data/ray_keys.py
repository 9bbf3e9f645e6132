"""Names of the metadata the datamanager hands to the model: per training ray, and of the dataset."""

CELL_KEY = "cell"
"""(R, 1) long: the partition cell that renders this training ray. Absent: the merged field renders."""
DEPTH_FRAME_KEY = "depth_frame"
"""(R, 1) long: index of the depth frame a ray comes from, -1 for RGB rays."""

DATA_SETUP_KEY = "async_nerf_setup"
"""Key in the training dataset's metadata (which nerfstudio hands to the model) of a dict with the
cells' ``centroids`` (K, 3), ``num_depth_frames`` and ``depth_poses`` (their source); set by the
datamanager."""
