"""Point -> cell routing: each 3-D point goes to the cell of its nearest centroid on the ground plane.

The merged field calls this on every sample of every ray (one broadcast of squared ground-plane
distances, O(K) per point for K cells); the partition figure colours its top view with it. Ties (a
point exactly as far from two centroids) go to the lower cell index.
"""

from __future__ import annotations

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
