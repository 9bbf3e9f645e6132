"""Training pixels per cell, planar-to-ray depth conversion, the depth loss and depth metrics."""

from __future__ import annotations

import math

import pytest
import torch

from async_nerf_ns.data.depth_frames import planar_to_ray_factor
from async_nerf_ns.data.pixel_store import PixelStore
from async_nerf_ns.evaluation import depth_errors
from async_nerf_ns.model.depth_loss import depth_loss


def test_pixel_store_draws_only_from_the_cells_pixels_across_images_of_different_sizes():
    # Image 0 is 2x3 (6 pixels), image 1 is 1x2 (2 pixels); values are the flat pixel number.
    values = torch.arange(8, dtype=torch.float32)[:, None]
    mask0 = torch.zeros(2, 3, 2, dtype=torch.bool)
    mask0[1, 2, 0] = True  # image 0, row 1, column 2 -> flat 5, cell 0
    mask0[:, :, 1] = True  # all of image 0 in cell 1
    mask1 = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask1[0, 1, 0] = True  # image 1, row 0, column 1 -> flat 7, cell 0
    store = PixelStore([3, 2], [2, 1], values, [mask0, mask1], valid=values[:, 0] != 4)
    assert store.count(0) == 2 and store.count(1) == 5  # pixel 4 is invalid
    indices, sampled = store.sample(0, 200, torch.Generator().manual_seed(0))
    assert set(sampled[:, 0].tolist()) == {5.0, 7.0}
    for (image, row, col), value in zip(indices.tolist(), sampled[:, 0].tolist()):
        assert (image, row, col) == ((0, 1, 2) if value == 5.0 else (1, 0, 1))
    assert store.locate(torch.tensor([0, 3, 6])).tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]


def test_planar_depth_to_ray_distance_factor_at_pixel_centres():
    # fx = fy = 2, principal point (1, 1): pixel (0, 0) has its centre at (0.5, 0.5), i.e. 0.25 off axis in x and y.
    factor = planar_to_ray_factor(torch.tensor([2.0, 2.0, 1.0, 1.0]), width=2, height=2)
    assert factor.shape == (2, 2)
    assert torch.allclose(factor, torch.full((2, 2), math.sqrt(0.25**2 + 0.25**2 + 1.0)))


def test_depth_loss_on_hand_computed_values():
    pred = torch.tensor([[1.0], [2.0], [5.0]])
    target = torch.tensor([[2.0], [2.0], [0.0]])  # the last has no measurement
    assert depth_loss(pred, target, "l1").item() == pytest.approx(0.5)
    assert depth_loss(pred, target, "log_l1").item() == pytest.approx(0.5 * math.log(2.0))
    assert depth_loss(pred, torch.zeros(3, 1), "l1").item() == 0.0


def test_depth_errors_on_hand_computed_values():
    pred = torch.tensor([10.0, 20.0, 33.0, 7.0])
    measured = torch.tensor([10.0, 25.0, 30.0, 0.0])  # the last is invalid
    errors = depth_errors(pred, measured)
    assert errors["depth_rmse_m"] == pytest.approx(math.sqrt((0 + 25 + 9) / 3))
    assert errors["depth_abs_rel"] == pytest.approx((0 + 0.2 + 0.1) / 3)
    # Ratios max(p/g, g/p): 1, 1.25, 1.1 -> 1.25 is not < 1.25, so 2 of 3 pixels.
    assert errors["depth_delta_1_25"] == pytest.approx(2 / 3)
