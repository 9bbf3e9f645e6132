"""Appearance matching across cells: a per-cell colour transform so that neighbouring cells render the
region both trained on (the partition's margin) in the same colours.

Cells are trained apart, each with its own appearance embeddings; rendered with their average embedding
they disagree where the light changed between the flights over them (a colour jump at the border). Each
cell gets an affine colour transform ``rgb' = A rgb + b`` (3 x 4) applied to its samples' colours when the
merged field renders. Why a transform and not the embedding: it is fitted in closed form (least squares
on colours both cells render for the same rays, no gradient through the fields), it cannot change
geometry, and exposure and tint changes, the usual cause, are affine in colour; the embedding would be
fitted by gradient descent through every cell's colour network and can move what a cell renders far
from its training data. The transforms are chained from a root cell (the one with the most training
pixels) along a spanning tree of the cell graph (cells that share overlap rays), the most-shared edge
first, so every cell is matched to the root through the neighbours it shares most with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import Tensor

IDENTITY = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)
"""The transform that changes nothing (3 x 4)."""


def apply_transform(transform: Tensor, rgb: Tensor) -> Tensor:
    """``rgb`` (..., 3) through the affine ``transform`` (3, 4), clamped to [0, 1]."""
    return (rgb @ transform[:, :3].T.to(rgb) + transform[:, 3].to(rgb)).clamp(0.0, 1.0)


def apply_transforms(transforms: Tensor, rgb: Tensor) -> Tensor:
    """``rgb`` (N, ..., 3) through per-item transforms (N, 3, 4) or one transform (3, 4), clamped to [0, 1].
    The identity returns ``rgb`` unchanged bit for bit (x * 1 + y * 0 + z * 0 + 0 = x)."""
    if transforms.dim() == 2:
        return apply_transform(transforms, rgb)
    shape = rgb.shape
    flat = rgb.reshape(shape[0], -1, 3)
    transforms = transforms.to(rgb)
    out = torch.einsum("nij,nsj->nsi", transforms[:, :, :3], flat) + transforms[:, None, :, 3]
    return out.clamp(0.0, 1.0).reshape(shape)


def fit_affine(source: Tensor, target: Tensor, ridge: float = 1e-3) -> Tensor:
    """The affine (3, 4) that maps ``source`` colours (N, 3) closest to ``target`` (N, 3) in least squares,
    pulled towards the identity by ``ridge`` x N (so few or flat colours give a near-identity gain)."""
    source, target = source.double(), target.double()
    design = torch.cat([source, torch.ones(len(source), 1, dtype=source.dtype)], dim=1)  # (N, 4)
    weight = ridge * len(source)
    normal = design.T @ design + weight * torch.eye(4, dtype=source.dtype)
    right = design.T @ target + weight * IDENTITY.T.double()
    return torch.linalg.solve(normal, right).T.float()


@dataclass
class MatchReport:
    """What matching found: per cell, its transform, the neighbour it was matched to and the colour
    residual (RMS over RGB in [0, 1]) on the shared rays before and after."""

    root: int
    transforms: Tensor
    """(K, 3, 4)."""
    matched_to: Dict[int, int]
    residual_before: Dict[int, float]
    residual_after: Dict[int, float]
    """With the fitted transform (kept or not)."""
    shared_rays: Dict[int, int]
    kept: Dict[int, bool]
    """Whether the cell's fitted transform was kept (else the identity: it explained too little)."""

    def lines(self) -> List[str]:
        out = [f"appearance matching: root cell {self.root}"]
        for cell in sorted(self.matched_to):
            gain = torch.diagonal(self.transforms[cell][:, :3]).tolist()
            before, after = self.residual_before[cell], self.residual_after[cell]
            head = f"  cell {cell} -> cell {self.matched_to[cell]}: {self.shared_rays[cell]} shared rays, "
            if self.kept[cell]:
                out.append(f"{head}RGB gain {gain[0]:.3f} {gain[1]:.3f} {gain[2]:.3f}, residual {before:.4f} -> {after:.4f}")
            else:
                out.append(f"{head}kept as it is (a transform takes the residual only from {before:.4f} to {after:.4f})")
        return out


def _rms(a: Tensor, b: Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def match_cells(
    renders: Dict[Tuple[int, int], Tuple[Tensor, Tensor]], root: int, num_cells: int, ridge: float = 1e-3,
    min_reduction: float = 0.0,
) -> MatchReport:
    """Transforms (K, 3, 4) from colours rendered on shared rays: ``renders[(i, j)] = (rgb by cell i, rgb by
    cell j)`` for the same rays (N, 3). The root keeps the identity; a tree grown from it (Prim's, the edge
    with the most rays first) matches each new cell j to its tree neighbour i: T_j = fit(rgb_j -> T_i(rgb_i)),
    kept only where it takes at least ``min_reduction`` of the colour residual away (a disagreement a colour
    transform cannot explain, two cells' rendering noise, is left alone: fitting it only moves colours).
    Cells no edge reaches keep the identity."""
    transforms = IDENTITY.repeat(num_cells, 1, 1)
    edges = {**renders, **{(j, i): (b, a) for (i, j), (a, b) in renders.items()}}
    placed, report = {root}, MatchReport(root, transforms, {}, {}, {}, {}, {})
    while True:
        frontier = [(len(edges[e][0]), e) for e in edges if e[0] in placed and e[1] not in placed and len(edges[e][0])]
        if not frontier:
            return report
        _, (i, j) = max(frontier)
        rgb_i, rgb_j = edges[(i, j)]
        target = apply_transform(transforms[i], rgb_i)
        transforms[j] = fit_affine(rgb_j, target, ridge)
        placed.add(j)
        report.matched_to[j] = i
        report.shared_rays[j] = len(rgb_j)
        report.residual_before[j] = _rms(rgb_j, target)
        report.residual_after[j] = _rms(apply_transform(transforms[j], rgb_j), target)
        report.kept[j] = report.residual_after[j] <= (1.0 - min_reduction) * report.residual_before[j]
        if not report.kept[j]:
            transforms[j] = IDENTITY
