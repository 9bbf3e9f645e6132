"""Configuration of the Mega-NeRF spatial partition (cells, altitude band, cluster masks).

Frames and units used throughout `async_nerf_ns.partition`:

- *world*: nerfstudio's frame produced by the dataparser, z up, in normalised scene units
  (one unit = `pose_scale_factor` metres). The ground plane is world x-y; altitude is world z.
- *layout altitude*: metres along the layout's up axis, i.e. the value of ``-x`` of a point in
  the layout's real-world DRB frame (x down, so ``-x`` is up), absolute (the same frame as
  ``origin_drb``, not relative to it). A point at world height ``z`` has layout altitude
  ``-origin_drb[0] + pose_scale_factor * z``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass
class PartitionConfig:
    """How the scene is cut into cells and which pixels each cell trains on."""

    grid_dim: Tuple[int, int] = (2, 2)
    """Number of cells along world x and world y (the ground plane). Cells are numbered
    row-major: cell ``k = i * grid_dim[1] + j`` is the i-th along world x and the j-th along
    world y, both counted from the smallest coordinate."""
    ray_altitude_range: Optional[Tuple[float, float]] = None
    """(lowest, highest) altitude of the band that holds the scene content, in metres of layout
    altitude: absolute values of ``-x`` in the layout's real-world DRB frame, the frame of
    ``origin_drb`` (0 m is where that frame has x = 0; the scene origin ``origin_drb`` itself is
    at altitude ``-origin_drb[0]``). Only the part
    of a ray inside this band decides which cells the ray belongs to. None: from
    ``default_band_below`` below the lowest camera to ``default_band_above`` above the highest
    camera (see those fields)."""
    default_band_below: float = 0.5
    """Used only when ``ray_altitude_range`` is None: the band's bottom lies this far below the
    lowest camera, as a fraction of the cameras' ground-plane extent (the longer side of the
    world x-y bounding box of the camera centres). 0.5 suits drone captures, where the ground
    is well within half the flight area's width below the cameras."""
    default_band_above: float = 0.0
    """Used only when ``ray_altitude_range`` is None: the band's top lies this far above the
    highest camera, as a fraction of the cameras' ground-plane extent. 0 = the highest camera."""
    boundary_margin: float = 1.15
    """A point belongs to every cell whose centroid is at most this factor times farther (in
    ground-plane distance) than its nearest centroid; 1 gives disjoint Voronoi cells, larger
    values give overlapping cells that blend better after merging. Must be >= 1."""
    samples_per_ray: int = 256
    """Points sampled uniformly along each ray's segment inside the altitude band (both ends
    included) to decide which cells the ray crosses. More samples miss fewer thin corners of
    cells; the cost of the rays that need sampling (those not decided by distance bounds) grows
    linearly with it."""
    max_ray_length: Optional[float] = None
    """Longest ray segment considered, in metres from the camera: rays nearly parallel to the
    ground would otherwise cross the band over unbounded distances. None: the diagonal of the
    box spanned by the cameras' ground-plane bounding box and the altitude band."""
    centroid_altitude: Optional[float] = None
    """Altitude of the centroids, in metres of layout altitude (see ``ray_altitude_range``).
    Routing and masks use ground-plane distance only, so this only places the centroids in
    plots and in partition.json. None: the middle of the altitude band."""
    chunk_rays: int = 4096
    """Rays processed at once when computing masks; memory grows as about
    ``chunk_rays * number of cells * 100`` bytes (about 6.5 MB for 4096 rays and 16 cells) plus
    a few MB for sampling. It does not change the result."""

    def __post_init__(self) -> None:
        if len(self.grid_dim) != 2 or any(int(n) != n or n < 1 for n in self.grid_dim):
            raise ValueError(f"grid_dim must be two positive integers, got {self.grid_dim}")
        if self.boundary_margin < 1.0:
            raise ValueError(
                f"boundary_margin must be >= 1 (1 = disjoint cells), got {self.boundary_margin}: "
                "below 1 a point would not even belong to its nearest cell"
            )
        if self.samples_per_ray < 2:
            raise ValueError(f"samples_per_ray must be >= 2 (both segment ends), got {self.samples_per_ray}")
        if self.chunk_rays < 1:
            raise ValueError(f"chunk_rays must be >= 1, got {self.chunk_rays}")
        if self.ray_altitude_range is not None and not self.ray_altitude_range[0] < self.ray_altitude_range[1]:
            raise ValueError(
                f"ray_altitude_range must be (lowest, highest) with lowest < highest, got {self.ray_altitude_range}"
            )
        if self.default_band_below < 0 or self.default_band_above < 0:
            raise ValueError(
                "default_band_below and default_band_above must be >= 0, got "
                f"{self.default_band_below} and {self.default_band_above}"
            )
        if self.max_ray_length is not None and self.max_ray_length <= 0:
            raise ValueError(f"max_ray_length must be positive metres, got {self.max_ray_length}")
