"""Appearance matching after training: each cell renders the rays it shares with its neighbours (their
training margin, from the RGB shards) alone, at eval time (its average appearance), and the colour
transforms of colour_match.py make the neighbours agree; they are stored in the cells' ``colour_transform``
buffers, which the merged field applies (saved with the checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.models.nerfacto import NerfactoModel
from torch import Tensor

from async_nerf_ns.model.cells import TrainingView
from async_nerf_ns.model.colour_match import MatchReport, match_cells
from async_nerf_ns.shards.shared import shared_records

NEIGHBOUR_RATIO = 1.5
"""Cells i, j are neighbours (their margins can overlap) when their centroids are at most this times the
smallest centroid spacing apart on the ground plane: a grid's side and diagonal neighbours (1 and 1.41)."""


def neighbour_pairs(centroids: Tensor) -> List[Tuple[int, int]]:
    """(i, j), i < j, of neighbouring cells (NEIGHBOUR_RATIO)."""
    ground = centroids[:, :2].double().cpu()
    distance = torch.cdist(ground, ground)
    off = distance[~torch.eye(len(ground), dtype=torch.bool)]
    if len(off) == 0:
        return []
    limit = NEIGHBOUR_RATIO * float(off.min())
    return [(i, j) for i in range(len(ground)) for j in range(i + 1, len(ground)) if float(distance[i, j]) <= limit]


@torch.no_grad()
def _render_alone(model, cell: int, bundle: RayBundle, chunk: int) -> Tensor:
    """(N, 3) colours of ``bundle``'s rays rendered by cell ``cell`` alone (nerfacto's eval rendering)."""
    view = TrainingView(model, model.cells[cell])
    if model.collider is not None:  # near and far, as the model's forward sets them
        bundle = model.collider(bundle)
    parts = [NerfactoModel.get_outputs(view, bundle[start : start + chunk])["rgb"] for start in range(0, len(bundle), chunk)]  # type: ignore[arg-type]
    return torch.cat(parts).float()


def fit_colour_transforms(
    model, shard_set: Path, rays_for: Callable[[np.ndarray], RayBundle], rays_per_pair: int, seed: int = 0,
    chunk: int = 4096, min_reduction: float = 0.0,
) -> MatchReport:
    """Fits and sets every cell's colour transform (model in eval mode, restored after); ``rays_for(records)``
    turns RGB shard records into a RayBundle on the model's device. The root is the cell with the most
    training RGB rays; a cell's transform is kept where it takes at least ``min_reduction`` of the residual away."""
    was_training = model.training
    model.eval()
    try:
        renders: Dict[Tuple[int, int], Tuple[Tensor, Tensor]] = {}
        for i, j in neighbour_pairs(model.centroids):
            records = shared_records(shard_set, i, j, rays_per_pair, seed)
            if len(records) == 0:
                continue
            bundle = rays_for(records)
            renders[(i, j)] = (_render_alone(model, i, bundle, chunk).cpu(), _render_alone(model, j, bundle, chunk).cpu())
        pixels = torch.stack([cell.training_pixels[0] for cell in model.cells]).cpu()
        report = match_cells(renders, root=int(pixels.argmax()), num_cells=model.num_cells, min_reduction=min_reduction)
        for cell, transform in zip(model.cells, report.transforms):
            cell.colour_transform.copy_(transform)
        return report
    finally:
        model.train(was_training)
