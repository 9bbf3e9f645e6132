"""Point -> cell routing: each 3-D point goes to the cell of its nearest centroid on the ground plane.

The merged field calls this on every sample of every ray (one broadcast of squared ground-plane
distances, O(K) per point for K cells); the partition figure colours its top view with it. Ties (a
point exactly as far from two centroids) go to the lower cell index.
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float, Int
from torch import Tensor


def route_to_cells(
    points: Float[Tensor, "*batch 3"], centroids: Float[Tensor, "num_cells 3"]
) -> Int[Tensor, "*batch"]:
    """Index of the centroid nearest to each point by ground-plane (world x-y) distance.

    Squared distances are compared directly (no square root and no matrix-product expansion, so
    equal distances stay exactly equal); ties go to the lowest index, as `torch.argmin` returns
    the first minimum.
    """
    ground = points[..., :2].reshape(-1, 1, 2)
    squared = (ground - centroids[:, :2].to(points)).square().sum(dim=-1)  # (P, K)
    return squared.argmin(dim=-1).reshape(points.shape[:-1])


def border_blend(
    points: Float[Tensor, "*batch 3"], centroids: Float[Tensor, "num_cells 3"], margin: float
) -> Tuple[Int[Tensor, "*batch"], Int[Tensor, "*batch"], Float[Tensor, "*batch"]]:
    """For blending two cells across their border: each point's nearest and second-nearest cells (ground
    plane) and the second's weight, 1/2 on the border falling linearly to 0 where the distance ratio
    (second / nearest) reaches ``margin``, the partition's boundary margin (beyond it the second cell never
    trained; 0 for one cell or margin 1)."""
    ground = points[..., :2].reshape(-1, 1, 2)
    distance = (ground - centroids[:, :2].to(points)).square().sum(dim=-1).sqrt()  # (P, K)
    if distance.shape[1] < 2 or margin <= 1.0:
        nearest = distance.argmin(dim=-1)
        return nearest.reshape(points.shape[:-1]), nearest.reshape(points.shape[:-1]), torch.zeros(points.shape[:-1]).to(points)
    two, index = distance.topk(2, dim=-1, largest=False)
    ratio = two[:, 1] / two[:, 0].clamp(min=1e-12)
    weight = (0.5 * (1.0 - (ratio - 1.0) / (margin - 1.0))).clamp(min=0.0)
    shape = points.shape[:-1]
    return index[:, 0].reshape(shape), index[:, 1].reshape(shape), weight.reshape(shape)
