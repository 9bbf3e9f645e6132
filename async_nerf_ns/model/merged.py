"""All cells behind one router: what the viewer, ns-eval and ns-render see.

Every 3-D point goes to the cell of its nearest centroid (ground-plane distance, as in Mega-NeRF);
points are grouped by cell, each group is evaluated by its cell alone and the results are scattered
back, so a point costs one cell evaluation whatever the number of cells. These are plain objects,
not nn.Modules: the cells' parameters stay registered once, under the model's ``cells``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from torch import Tensor, nn

from async_nerf_ns.partition.routing import route_to_cells


def _scatter_by_cell(
    cell_ids: Tensor, num_items: int, evaluate: Callable[[int, Tensor], Dict]
) -> Dict:
    """Evaluate each cell on the flat indices routed to it and scatter the outputs into full tensors."""
    merged: Dict = {}
    for cell in torch.unique(cell_ids).tolist():
        index = torch.nonzero(cell_ids == cell, as_tuple=True)[0]
        for name, value in evaluate(cell, index).items():
            if name not in merged:
                merged[name] = value.new_zeros((num_items, *value.shape[1:]))
            merged[name] = merged[name].index_copy(0, index, value)
    return merged


class MergedField:
    """A nerfacto field's ``forward`` over all cells, routing each sample to its cell."""

    def __init__(self, cells: nn.ModuleList, centroids: Tensor) -> None:
        self.cells = cells
        self.centroids = centroids

    def forward(self, ray_samples: RaySamples, compute_normals: bool = False) -> Dict[FieldHeadNames, Tensor]:
        if len(self.cells) == 1:
            return self.cells[0].field.forward(ray_samples, compute_normals=compute_normals)
        shape = ray_samples.shape
        flat = ray_samples.flatten()
        cell_ids = route_to_cells(flat.frustums.get_positions().detach(), self.centroids)

        def evaluate(cell: int, index: Tensor) -> Dict:
            return self.cells[cell].field.forward(flat[index], compute_normals=compute_normals)

        merged = _scatter_by_cell(cell_ids, len(flat), evaluate)
        return {name: value.reshape(*shape, *value.shape[1:]) for name, value in merged.items()}

    __call__ = forward


class MergedDensityFn:
    """Proposal iteration ``i``'s density function over all cells (same routing as the field)."""

    def __init__(self, cells: nn.ModuleList, centroids: Tensor, iteration: int) -> None:
        self.cells = cells
        self.centroids = centroids
        self.iteration = iteration

    def __call__(self, positions: Tensor, times: Optional[Tensor] = None) -> Tensor:
        fns = [cell.density_fns[self.iteration] for cell in self.cells]
        if len(fns) == 1:
            return fns[0](positions, times)
        shape = positions.shape[:-1]
        flat = positions.reshape(-1, 3)
        flat_times = None if times is None else times.reshape(-1, times.shape[-1])
        cell_ids = route_to_cells(flat.detach(), self.centroids)

        def evaluate(cell: int, index: Tensor) -> Dict:
            cell_times = None if flat_times is None else flat_times[index]
            return {"density": fns[cell](flat[index], cell_times)}

        density = _scatter_by_cell(cell_ids, flat.shape[0], evaluate)["density"]
        return density.reshape(*shape, *density.shape[1:])


def merged_density_fns(cells: nn.ModuleList, centroids: Tensor, num_iterations: int) -> List[MergedDensityFn]:
    return [MergedDensityFn(cells, centroids, i) for i in range(num_iterations)]
