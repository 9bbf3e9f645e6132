"""Shard records as rays, planar-to-ray depth conversion, the depth loss and depth metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from async_nerf_ns.layout.frame_files import planar_to_ray_factor
from async_nerf_ns.data.datamanager import _pack_records, ray_indices
from async_nerf_ns.evaluation.depth import depth_errors
from async_nerf_ns.model.depth_loss import depth_loss
from async_nerf_ns.shards.format import RGB_RECORD


def test_shard_records_become_ray_indices_across_images_of_different_sizes():
    # Image 0 is 3 px wide, image 1 is 2 px wide: pixel 5 of image 0 is row 1, column 2; pixel 1 of image 1
    # is row 0, column 1.
    records = np.zeros(3, dtype=RGB_RECORD)
    records["image"], records["pixel"] = [0, 1, 0], [5, 1, 0]
    records["rgb"] = [[255, 0, 7], [1, 2, 3], [0, 128, 0]]
    packed = _pack_records(records, None, pin=False)
    indices = ray_indices(packed, torch.tensor([3, 2]))
    assert indices.tolist() == [[0, 1, 2], [1, 0, 1], [0, 0, 0]]
    # The colour travels in the third column, 8 bits per channel.
    assert [[(int(v) >> shift) & 255 for shift in (0, 8, 16)] for v in packed[:, 2]] == records["rgb"].tolist()


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
