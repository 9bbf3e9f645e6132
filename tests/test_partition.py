"""The Mega-NeRF partition (async_nerf_ns/partition): centroids, routing, masks, cache (the command: test_shards.py)."""

from __future__ import annotations

import math

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from scipy.spatial.transform import Rotation

from async_nerf_ns.partition.cache import cluster_mask_cache_key
from async_nerf_ns.partition.centroids import grid_centroids
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import altitude_to_world_z, resolve_geometry, world_z_to_altitude
from async_nerf_ns.partition.masks import compute_cluster_masks, image_rays, ray_band_segments, ray_cell_membership
from async_nerf_ns.partition.routing import route_to_cells

TWO_CENTROIDS = torch.tensor([[-1.0, 0.0, 0.5], [1.0, 0.0, 0.5]])
"""Cells 0 and 1 on the ground plane at x = -1 and x = +1 (their z plays no part)."""
BAND = (0.0, 1.0)
MARGIN = 1.15


def membership(origins, directions, far=math.inf, samples=64):
    o = torch.tensor(origins, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.tensor(directions, dtype=torch.float64), dim=-1)
    return ray_cell_membership(o, d, TWO_CENTROIDS, BAND, MARGIN, samples, far=far).tolist()


# ---------------------------------------------------------------------------------------------
# Masks: hand-computed cases with two centroids at x = -1 and x = +1, band 0 <= z <= 1, margin 1.15.
# A ground point at x belongs to cell k if |x - c_k| <= 1.15 * min_j |x - c_j| (here y = 0).


def test_camera_high_above_one_cell_looking_down_belongs_to_that_cell_only():
    # Vertical ray at x = -1.5: every point has d0 = 0.5, d1 = 2.5, ratio 5 > 1.15 -> cell 0 only.
    assert membership([[-1.5, 0.0, 3.0]], [[0.0, 0.0, -1.0]]) == [[True, False]]


def test_ray_crossing_the_band_from_one_cell_to_the_other_belongs_to_both():
    # Direction (3, 0, -1): from z = 2 at x = -4.5 it enters the band top (z = 1) at x = -1.5 and leaves
    # the bottom (z = 0) at x = +1.5. At x = -1.5 only cell 0 qualifies, at x = +1.5 only cell 1 -> both.
    assert membership([[-4.5, 0.0, 2.0]], [[3.0, 0.0, -1.0]]) == [[True, True]]


def test_vertical_ray_inside_the_margin_belongs_to_both_cells():
    # x = -0.05: d0 = 0.95, d1 = 1.05 <= 1.15 * 0.95 = 1.0925 -> both.
    # x = -0.20: d0 = 0.80, d1 = 1.20 >  1.15 * 0.80 = 0.92   -> cell 0 only (the margin is narrow).
    rays = [[-0.05, 0.0, 5.0], [-0.2, 0.0, 5.0]]
    assert membership(rays, [[0.0, 0.0, -1.0]] * 2) == [[True, True], [True, False]]


def test_rays_that_never_enter_the_band_belong_to_no_cell():
    # Horizontal at z = 3 (above the band, parallel to it); looking up from z = 2 (the band is behind);
    # looking down from z = -1 (below the band, moving away from it).
    rays = [[0.0, 0.0, 3.0], [-1.0, 0.0, 2.0], [1.0, 0.0, -1.0]]
    directions = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]
    assert membership(rays, directions) == [[False, False]] * 3


def test_camera_inside_the_band_starts_its_segment_at_the_camera():
    # Camera at (-1.5, 0, 0.5), inside the band, looking along +x. The segment starts at the camera and is
    # cut at `far` (it never leaves the band): far = 1 ends at x = -0.5 (d0 = 0.5 < d1 = 1.5: cell 0 only);
    # far = 2 ends at x = +0.5 (d1 = 0.5: cell 1 there) -> both.
    # Looking straight down from (1.3, 0, 0.5) the segment runs from the camera to z = 0 at x = 1.3: cell 1.
    assert membership([[-1.5, 0.0, 0.5]], [[1.0, 0.0, 0.0]], far=1.0) == [[True, False]]
    assert membership([[-1.5, 0.0, 0.5]], [[1.0, 0.0, 0.0]], far=2.0) == [[True, True]]
    assert membership([[1.3, 0.0, 0.5]], [[0.0, 0.0, -1.0]]) == [[False, True]]


def test_ray_inside_the_band_without_end_is_an_error():
    with pytest.raises(ValueError, match="finite far"):
        membership([[0.0, 0.0, 0.5]], [[1.0, 0.0, 0.0]])


def test_band_segments_of_a_slanted_ray():
    # From (0, 0, 3) along (0, 0.6, -0.8) (unit): z = 3 - 0.8 t reaches 1 at t = 2.5 and 0 at t = 3.75.
    start, end, valid = ray_band_segments(
        torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.6, -0.8]]), BAND, near=0.0, far=10.0
    )
    assert start.item() == pytest.approx(2.5) and end.item() == pytest.approx(3.75) and bool(valid)


def brute_force_membership(origins, directions, centroids, z_range, margin, samples, far):
    """The rule written plainly: every cell at every sample (what the bounds in masks.py must reproduce)."""
    start, end, valid = ray_band_segments(origins, directions, z_range, 0.0, far)
    start, end = torch.where(valid, start, 0.0), torch.where(valid, end, 0.0)
    t = start[:, None] + (end - start)[:, None] * torch.linspace(0, 1, samples, dtype=origins.dtype)
    points = origins[:, None, :2] + t[..., None] * directions[:, None, :2]  # (R, S, 2)
    dist2 = (points[:, :, None, :] - centroids[:, :2].to(origins.dtype)).square().sum(dim=-1)  # (R, S, K)
    return (dist2 <= margin**2 * dist2.amin(dim=-1, keepdim=True)).any(dim=1) & valid[:, None]


@pytest.mark.parametrize("margin", [1.0, 1.15, 1.5])
def test_bounds_skip_work_but_never_change_the_result(margin):
    # 3000 random rays (many long, oblique, starting inside and outside the band) over a 3 x 4 grid: the
    # fast path must give exactly the masks of sampling all 12 cells at all 33 samples.
    generator = torch.Generator().manual_seed(7)
    origins = torch.rand(3000, 3, generator=generator, dtype=torch.float64) * torch.tensor([4.0, 4.0, 3.0]) - 2.0
    directions = torch.nn.functional.normalize(torch.randn(3000, 3, generator=generator, dtype=torch.float64), dim=-1)
    centroids = grid_centroids(torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0]]), (3, 4))
    expected = brute_force_membership(origins, directions, centroids, (-0.5, 0.5), margin, 33, far=3.0)
    got = ray_cell_membership(origins, directions, centroids, (-0.5, 0.5), margin, 33, far=3.0, chunk_rays=700)
    assert torch.equal(got, expected)
    assert 3000 < int(expected.sum()) < 3000 * 12  # not a trivial case: some rays in several cells


def test_image_rays_match_nerfstudio_generate_rays():
    # The direct pinhole path must give nerfstudio's rays: random rotations, off-centre principal points,
    # three image sizes in one (jagged) Cameras.
    rotations = torch.tensor(Rotation.random(3, random_state=1).as_matrix(), dtype=torch.float32)
    c2w = torch.cat([rotations, torch.randn(3, 3, 1, generator=torch.Generator().manual_seed(0))], dim=-1)
    cameras = Cameras(
        camera_to_worlds=c2w,
        fx=torch.tensor([[50.0], [40.0], [30.0]]),
        fy=torch.tensor([[55.0], [41.0], [33.0]]),
        cx=torch.tensor([[20.0], [10.0], [7.0]]),
        cy=torch.tensor([[12.0], [9.0], [5.0]]),
        width=torch.tensor([[37], [21], [13]]),
        height=torch.tensor([[25], [17], [11]]),
    )
    for index in range(3):
        origins, directions = image_rays(cameras, index)
        reference = cameras[index : index + 1].generate_rays(camera_indices=0)
        assert origins.shape == reference.origins.shape == (int(cameras.height[index]), int(cameras.width[index]), 3)
        assert torch.allclose(origins, reference.origins, atol=1e-6)
        assert torch.allclose(directions, reference.directions, atol=1e-6)


def looking_down_cameras(xs, width=4, height=2, focal=4.0, altitude=3.0) -> Cameras:
    """Cameras at (x, 0, altitude) looking straight down; identity rotation (image right = world +x)."""
    c2w = torch.zeros(len(xs), 3, 4)
    c2w[:, :, :3] = torch.eye(3)
    c2w[:, 0, 3] = torch.tensor(xs, dtype=torch.float32)
    c2w[:, 2, 3] = altitude
    return Cameras(camera_to_worlds=c2w, fx=focal, fy=focal, cx=width / 2, cy=height / 2, width=width, height=height)


def test_image_masks_split_a_camera_between_the_cells():
    # A camera at x = 0, z = 3 looking down with 4 columns, fx = 4: column directions have x slopes
    # -0.375, -0.125, 0.125, 0.375, so inside the band (z from 1 to 0, i.e. 2 to 3 below the camera)
    # columns reach x in [-0.75, -1.125], [-0.25, -0.375], [0.25, 0.375], [0.75, 1.125]. The inner columns
    # are at least 0.25 from the border x = 0: ratio >= 1.25 / 0.75 > 1.15 even with the rows' y offset
    # (|y| <= 0.375), so the left two columns are cell 0 only and the right two cell 1 only.
    config = PartitionConfig(grid_dim=(2, 1), samples_per_ray=16)
    masks = compute_cluster_masks(looking_down_cameras([0.0]), TWO_CENTROIDS, config, BAND, show_progress=False)
    expected = torch.zeros(2, 4, 2, dtype=torch.bool)
    expected[:, :2, 0] = True
    expected[:, 2:, 1] = True
    assert len(masks) == 1 and torch.equal(masks[0], expected)


def test_image_masks_of_cameras_of_different_sizes():
    # Jagged cameras: a 4x2 image at x = -1.5 whose rays reach at most x = -0.375 in the band (slope 0.375,
    # 3 below the camera): d1 / d0 >= 1.375 / 0.625 = 2.2 -> cell 0 only; and a 3x5 image at x = +1.5 whose
    # rays stay in x >= 0.75 (slope 0.25) with |y| <= 1.5 (slope 0.5): d0^2 / d1^2 >= 5.31 / 2.31 > 1.15^2
    # -> cell 1 only.
    left, right = looking_down_cameras([-1.5]), looking_down_cameras([1.5], width=3, height=5)
    cameras = Cameras(
        camera_to_worlds=torch.cat([left.camera_to_worlds, right.camera_to_worlds]),
        fx=4.0,
        fy=4.0,
        cx=torch.tensor([[2.0], [1.5]]),
        cy=torch.tensor([[1.0], [2.5]]),
        width=torch.tensor([[4], [3]]),
        height=torch.tensor([[2], [5]]),
    )
    config = PartitionConfig(grid_dim=(2, 1), samples_per_ray=16)
    masks = compute_cluster_masks(cameras, TWO_CENTROIDS, config, BAND, show_progress=False)
    assert [tuple(m.shape) for m in masks] == [(2, 4, 2), (5, 3, 2)]
    assert masks[0][..., 0].all() and not masks[0][..., 1].any()
    assert masks[1][..., 1].all() and not masks[1][..., 0].any()


# ---------------------------------------------------------------------------------------------
# Centroids, routing, geometry


def test_grid_centroids_cover_the_camera_extent_row_major():
    # Cameras span x in [-2, 2], y in [0, 1]: 2 x 2 cells of 2 x 0.5, centres x = -1, 1 and y = 0.25, 0.75;
    # row-major: index = i * 2 + j with i along x.
    cameras = torch.tensor([[-2.0, 0.0, 5.0], [2.0, 1.0, 7.0], [0.3, 0.4, 6.0]])
    centroids = grid_centroids(cameras, (2, 2), altitude=0.25)
    expected = torch.tensor([[-1.0, 0.25, 0.25], [-1.0, 0.75, 0.25], [1.0, 0.25, 0.25], [1.0, 0.75, 0.25]])
    assert torch.allclose(centroids, expected)
    with pytest.raises(ValueError, match="grid_dim\\[1\\] = 1"):
        grid_centroids(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), (2, 2))  # no spread along y


def test_routing_on_a_3x3_grid_including_ties():
    # Cameras over [0, 3]^2 -> centroids at 0.5, 1.5, 2.5 on each axis; cell = 3 i + j.
    centroids = grid_centroids(torch.tensor([[0.0, 0.0, 0.0], [3.0, 3.0, 0.0]]), (3, 3))
    points = torch.tensor(
        [
            [0.5, 0.5, 9.0],  # centre of cell (0, 0) -> 0 (altitude ignored)
            [2.4, 0.6, 0.0],  # cell (2, 0) -> 6
            [1.4, 2.6, 0.0],  # cell (1, 2) -> 5
            [1.0, 0.5, 0.0],  # on the border of cells 0 and 3 (both 0.5 away): lower index -> 0
            [1.0, 1.0, 0.0],  # corner of cells 0, 1, 3, 4: lowest -> 0
            [2.0, 2.0, 0.0],  # corner of cells 4, 5, 7, 8: lowest -> 4
            [2.0, 2.5, 0.0],  # border of 5 and 8 -> 5
            [-100.0, 100.0, 0.0],  # far outside: nearest is the corner cell (0, 2) -> 2
        ]
    )
    assert route_to_cells(points, centroids).tolist() == [0, 6, 5, 0, 0, 4, 5, 2]
    # The batch shape is kept.
    assert route_to_cells(points.reshape(2, 4, 3), centroids).tolist() == [[0, 6, 5, 0], [0, 4, 5, 2]]


def test_geometry_converts_metres_of_altitude_to_world_z():
    # origin_drb x = 100 m, 50 m per unit: altitude a (= -x_drb in metres) is world z = (a + 100) / 50, so
    # the band (-100 m, -75 m) is z in (0, 0.5); and back.
    origin, scale = torch.tensor([100.0, -20.0, 5.0], dtype=torch.float64), 50.0
    assert altitude_to_world_z(-75.0, origin, scale) == pytest.approx(0.5)
    assert world_z_to_altitude(0.5, origin, scale) == pytest.approx(-75.0)
    cameras = torch.tensor([[-1.0, 0.0, 0.2], [1.0, 0.5, 0.6]])
    geometry = resolve_geometry(PartitionConfig(ray_altitude_range=(-100.0, -75.0)), cameras, origin, scale)
    assert geometry.z_range == pytest.approx((0.0, 0.5))
    assert geometry.altitude_range_m == pytest.approx((-100.0, -75.0))
    # Default band: from 0.5 x the ground extent (2) below the lowest camera (0.2) to the highest (0.6):
    # z in (-0.8, 0.6); default ray length: diagonal of 2 x 0.5 x 1.4 = sqrt(4 + 0.25 + 1.96).
    geometry = resolve_geometry(PartitionConfig(), cameras, origin, scale)
    assert geometry.z_range == pytest.approx((-0.8, 0.6))
    assert geometry.max_ray_length == pytest.approx(math.sqrt(6.21))
    assert float(geometry.centroids[0, 2]) == pytest.approx(-0.1)  # centroids sit mid-band by default
    # Centroid 0 (-0.5, 0.125, -0.1) in world is DRB (-z, x, -y) = (0.1, -0.5, -0.125).
    assert geometry.centroids_drb()[0].tolist() == pytest.approx([0.1, -0.5, -0.125], abs=1e-6)
    with pytest.raises(ValueError, match="third row"):
        resolve_geometry(PartitionConfig(), cameras, origin, scale, drb_to_world=torch.eye(3))


def test_config_rejects_a_margin_below_one():
    with pytest.raises(ValueError, match="boundary_margin must be >= 1"):
        PartitionConfig(boundary_margin=0.9)


# ---------------------------------------------------------------------------------------------
# The key of the masks (part of every shard set's key)


def test_mask_key_changes_with_what_decides_the_masks_only():
    cameras = looking_down_cameras([0.0, -1.5])
    config = PartitionConfig(grid_dim=(2, 1), samples_per_ray=16)
    key = cluster_mask_cache_key(cameras, TWO_CENTROIDS, config, BAND)
    # chunk_rays does not change the result, so it does not change the key either.
    same = PartitionConfig(grid_dim=(2, 1), samples_per_ray=16, chunk_rays=3)
    assert cluster_mask_cache_key(cameras, TWO_CENTROIDS, same, BAND) == key
    wider = PartitionConfig(grid_dim=(2, 1), samples_per_ray=16, boundary_margin=1.7)
    assert cluster_mask_cache_key(cameras, TWO_CENTROIDS, wider, BAND) != key
    moved = looking_down_cameras([0.0, -1.4])
    assert cluster_mask_cache_key(moved, TWO_CENTROIDS, config, BAND) != key
    more_samples = PartitionConfig(grid_dim=(2, 1), samples_per_ray=17)
    assert cluster_mask_cache_key(cameras, TWO_CENTROIDS, more_samples, BAND) != key
