"""The dataset layout on disk (docs/DATA_LAYOUT.md): no nerfstudio, the lowest data layer.

- `types`: the vocabulary (LayoutError, folder and file names, frame records);
- `values`: checks of the numbers in metadata files, pose text files;
- `frame_files`: decoding one RGB image, mask, depth map or LiDAR scan;
- `reader.read_layout`: walks a dataset and checks it without decoding images;
- `frames`: the DRB -> nerfstudio world rotation;
- `pose_files`: writing pose text files, and upstream Async-NeRF's timed pose folders.
"""

from async_nerf_ns.layout.frame_files import (
    MILLIMETRES,
    depth_header,
    load_depth_metres,
    load_lidar_points,
    load_mask,
    load_rgb,
)
from async_nerf_ns.layout.reader import LAYOUT_DOC, read_layout
from async_nerf_ns.layout.types import (
    DEPTH_DIR_PREFIXES,
    DEPTH_EXTENSIONS,
    MASK_DIR,
    RGB_EXTENSIONS,
    RGB_METADATA_DIRS,
    RGB_POSE_GT_TRACK,
    Coordinates,
    DatasetLayout,
    DepthFrame,
    LayoutError,
    LayoutWarning,
    LidarScan,
    RgbFrame,
    SplitLayout,
)
from async_nerf_ns.layout.values import ROTATION_TOLERANCE, TIMESTAMP_RESOLUTION_S, read_pose_txt

__all__ = [
    "DEPTH_DIR_PREFIXES",
    "DEPTH_EXTENSIONS",
    "LAYOUT_DOC",
    "MASK_DIR",
    "MILLIMETRES",
    "RGB_EXTENSIONS",
    "RGB_METADATA_DIRS",
    "RGB_POSE_GT_TRACK",
    "ROTATION_TOLERANCE",
    "TIMESTAMP_RESOLUTION_S",
    "Coordinates",
    "DatasetLayout",
    "DepthFrame",
    "LayoutError",
    "LayoutWarning",
    "LidarScan",
    "RgbFrame",
    "SplitLayout",
    "depth_header",
    "load_depth_metres",
    "load_lidar_points",
    "load_mask",
    "load_rgb",
    "read_layout",
    "read_pose_txt",
]
