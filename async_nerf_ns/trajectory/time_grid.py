"""A multi-resolution feature grid over one dimension (time).

nerfstudio's `HashEncoding` (and tcnn's grid) index 3-D positions, so it cannot take a scalar time
directly; and in 1-D there is nothing to hash: even the finest level of a trajectory has only a few
hundred to a few thousand cells, so every level is a dense table. Written here as a small torch
module instead: one learnable table per level, sampled with linear or cubic B-spline weights.
The cubic B-spline makes the features (and so the poses the MLP decodes from them) twice
continuously differentiable in time, which suits a physical trajectory: velocity and acceleration
are continuous.
"""

from __future__ import annotations

from typing import List, Literal

import numpy as np
import scipy.sparse
import torch
from jaxtyping import Float
from torch import Tensor, nn


def level_resolutions(num_levels: int, min_resolution: int, max_resolution: int) -> List[int]:
    """Cells per level, growing geometrically from `min_resolution` to `max_resolution` (as iNGP)."""
    if num_levels < 1 or min_resolution < 1 or max_resolution < min_resolution:
        raise ValueError(
            f"grid needs num_levels >= 1 and 1 <= min_resolution <= max_resolution, got "
            f"{num_levels}, {min_resolution}, {max_resolution}"
        )
    if num_levels == 1:
        return [max_resolution]
    growth = (max_resolution / min_resolution) ** (1.0 / (num_levels - 1))
    return [int(round(min_resolution * growth**level)) for level in range(num_levels)]


def knot_weights(offset: Float[Tensor, "*bs"], interpolation: Literal["linear", "cubic"]) -> Float[Tensor, "*bs k"]:
    """Weights of the 2 (linear) or 4 (cubic B-spline) knots around a point `offset` in [0, 1]
    into its cell; they sum to 1."""
    s = offset.unsqueeze(-1)
    if interpolation == "linear":
        return torch.cat([1 - s, s], dim=-1)
    s2, s3 = s * s, s * s * s
    return torch.cat([(1 - s) ** 3, 3 * s3 - 6 * s2 + 4, -3 * s3 + 3 * s2 + 3 * s + 1, s3], dim=-1) / 6


def cubic_bspline_basis(time: np.ndarray, cells: int) -> scipy.sparse.csr_matrix:
    """Sparse design matrix (N, cells + 3) of a uniform cubic B-spline on [0, 1] with `cells`
    cells: row n holds the weights (float64) of the 4 control points around time[n] (clamped).

    A curve with control points C (cells + 3, D) is `basis @ C`; it is what a one-level cubic
    `TimeGridEncoding` with table C computes, so least-squares control points can be loaded into it.
    """
    position = np.clip(np.asarray(time, dtype=np.float64), 0.0, 1.0) * cells
    cell = np.minimum(np.floor(position), cells - 1)
    weights = knot_weights(torch.as_tensor(position - cell), "cubic").numpy()
    columns = cell.astype(np.int64)[:, None] + np.arange(4)
    rows = np.repeat(np.arange(position.shape[0]), 4)
    shape = (position.shape[0], cells + 3)
    return scipy.sparse.csr_matrix((weights.reshape(-1), (rows, columns.reshape(-1))), shape=shape)


class TimeGridEncoding(nn.Module):
    """Features of a normalised time in [0, 1] from `num_levels` dense 1-D grids.

    Inputs outside [0, 1] are clamped (callers extrapolate themselves; see `FittedTPF`).
    """

    def __init__(
        self,
        resolutions: List[int],
        features_per_level: int,
        interpolation: Literal["linear", "cubic"] = "cubic",
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if interpolation not in ("linear", "cubic"):
            raise ValueError(f"interpolation must be 'linear' or 'cubic', got {interpolation!r}")
        self.interpolation = interpolation
        self.features_per_level = features_per_level
        # A linear level of R cells has R + 1 knots; a cubic B-spline needs one more on each side.
        self.support = 2 if interpolation == "linear" else 4
        knots = [resolution + self.support - 1 for resolution in resolutions]
        offsets = np.concatenate([[0], np.cumsum(knots)[:-1]])
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        # Tiny random init (as iNGP's hash tables): the MLP starts from a nearly constant input.
        self.table = nn.Parameter(torch.empty(int(sum(knots)), features_per_level).uniform_(-init_scale, init_scale))

    @property
    def out_dim(self) -> int:
        return int(self.resolutions.numel()) * self.features_per_level

    def forward(self, time: Float[Tensor, "*bs"]) -> Float[Tensor, "*bs out_dim"]:
        batch_shape = time.shape
        position = time.reshape(-1, 1).clamp(0.0, 1.0) * self.resolutions  # (N, L), in cells
        cell = torch.clamp(position.floor(), max=self.resolutions - 1)
        weights = knot_weights(position - cell, self.interpolation)  # (N, L, support)
        index = self.offsets + cell.long()  # (N, L)
        index = index.unsqueeze(-1) + torch.arange(self.support, device=time.device)  # (N, L, support)
        features = (self.table[index] * weights.unsqueeze(-1)).sum(dim=-2)  # (N, L, F)
        return features.reshape(*batch_shape, self.out_dim)
