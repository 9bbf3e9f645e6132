"""LiDAR tracks: scans whose points each have their own time, posed point by point by the time-pose function.

- `scans`: the scans of a split (all LiDAR tracks together) and their times on the RGB clock;
- `rays`: one scan -> world rays (origin, unit direction, range, time) at the poses of a pose function
  evaluated at each point's own time (deskewing), or at the scan's stamp (no deskewing);
- `corrections`: stage 3's moves of LiDAR rays from the fitted TPF's poses to the fine-tuned TPF's.

The layout is in docs/DATA_LAYOUT.md ("LiDAR tracks"); the shards of LiDAR rays in `shards/sets.py`; the
loss in `model/depth_loss.py`; the clock offset of a track in `trajectory/lidar_offset.py`.
"""
