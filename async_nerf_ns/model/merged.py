"""The merged field: all cells behind one router (viewer, ns-eval, ns-render).

The model hands nerfacto's ``get_outputs`` a field and proposal density functions that route through a
`CellRouter`: every 3-D sample goes to the cell of its nearest centroid (ground-plane distance, as in
Mega-NeRF); samples are grouped by cell, each group is evaluated by its cell alone and the results are
scattered back, so a sample costs one cell evaluation whatever the number of cells. Each sample's colour
then goes through its cell's colour transform (appearance matching, colour_match.py; the identity, which
changes no bit, until matching sets it). A training batch
never comes here: it is rendered by its own cell's parts (the model's `TrainingView`).

These are plain objects, not nn.Modules: the cells' parameters stay registered once, under the
model's ``cells``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from torch import Tensor, nn

from async_nerf_ns.model.colour_match import apply_transforms
from async_nerf_ns.partition.routing import border_blend, route_to_cells


def _scatter_by_cell(cell_ids: Tensor, num_cells: int, evaluate: Callable[[int, Tensor], Dict]) -> Dict:
    """Evaluate each cell on the flat indices routed to it and put the outputs back in the items' order.

    One sort groups the items by cell, and one read of the groups' bounds (``searchsorted`` over the
    sorted ids, then ``tolist``) is the call's only wait for the device, whatever the number of cells: a
    cell's group is a slice of the order. (A loop of ``nonzero(cell_ids == k)`` waits once per cell, and
    ``bincount`` would wait for its own output size before the bounds are read.)
    """
    order = torch.argsort(cell_ids, stable=True)
    boundaries = torch.arange(num_cells + 1, device=cell_ids.device, dtype=cell_ids.dtype)
    bounds = torch.searchsorted(cell_ids[order], boundaries).tolist()
    parts: Dict[str, List[Tensor]] = {}
    for cell in range(num_cells):
        start, end = bounds[cell], bounds[cell + 1]
        if start == end:
            continue
        for name, value in evaluate(cell, order[start:end]).items():
            parts.setdefault(name, []).append(value)
    merged: Dict = {}
    for name, values in parts.items():
        grouped = torch.cat([v.to(values[0].dtype) for v in values]) if len(values) > 1 else values[0]
        merged[name] = torch.empty_like(grouped).index_copy_(0, order, grouped)
    return merged


def in_viewer_thread() -> bool:
    """nerfstudio's viewer renders in its own thread (RenderStateMachine); evaluations, ns-render and
    training run elsewhere, so viewer-only render modes never reach them."""
    from nerfstudio.viewer.render_state_machine import RenderStateMachine

    return isinstance(threading.current_thread(), RenderStateMachine)


CELL_COLOURS = torch.tensor(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75], [227, 119, 194],
     [127, 127, 127], [188, 189, 34], [23, 190, 207]], dtype=torch.float32,
) / 255.0
"""Colour of cell k: CELL_COLOURS[k % 10] (matplotlib's tab10, as in partition.png)."""


@dataclass
class ViewMode:
    """What the viewer renders of the merged field (never the model's training or evaluation)."""

    only_cell: Optional[int] = None
    """Only this cell: the other cells' samples have zero density."""
    tint: bool = False
    """Each sample's colour mixed half and half with its cell's colour (CELL_COLOURS)."""


class CellRouter:
    """The cells, their centroids, and the viewer's view mode."""

    def __init__(self, cells: nn.ModuleList, centroids: Callable[[], Tensor], blend_margin: Optional[float] = None) -> None:
        self.cells = cells
        self.blend_margin = blend_margin
        """With a margin: samples near a border are rendered by both nearest cells, blended (``border_blend``);
        None: each sample by its nearest cell alone."""
        self._centroids = centroids
        """Reads the owner's centroids buffer at each call: ``.to(device)`` and ``load_state_dict`` replace
        or fill it, and a copy kept here would go stale (and be copied to the device on every call)."""
        self.view = ViewMode()
        """Set by the viewer's render-mode control; applied only to renders of the viewer's thread."""

    def viewer_mode(self) -> ViewMode:
        """The view mode for this render: the viewer's, in the viewer's thread; else none."""
        if (self.view.only_cell is None and not self.view.tint) or not in_viewer_thread():
            return ViewMode()
        return self.view

    @property
    def centroids(self) -> Tensor:
        return self._centroids()

    def cell_ids(self, positions: Tensor) -> Tensor:
        return route_to_cells(positions.detach(), self.centroids)

    def colour_transforms(self) -> Tensor:
        """(K, 3, 4): each cell's colour transform (appearance matching; the identity before it)."""
        return torch.stack([cell.colour_transform for cell in self.cells])


class MergedField:
    """A nerfacto field's ``forward`` over all cells."""

    def __init__(self, router: CellRouter) -> None:
        self.router = router

    def forward(self, ray_samples: RaySamples, compute_normals: bool = False) -> Dict[FieldHeadNames, Tensor]:
        cells = self.router.cells
        mode = self.router.viewer_mode()
        if len(cells) == 1 and mode == ViewMode():
            outputs = cells[0].field.forward(ray_samples, compute_normals=compute_normals)
            outputs[FieldHeadNames.RGB] = apply_transforms(cells[0].colour_transform, outputs[FieldHeadNames.RGB])
            return outputs
        shape = ray_samples.shape
        flat = ray_samples.flatten()
        positions = flat.frustums.get_positions()
        blend = self.router.blend_margin is not None and mode == ViewMode()
        if blend:
            cell_ids, second, weight = border_blend(positions.detach(), self.router.centroids, self.router.blend_margin)
        else:
            cell_ids = self.router.cell_ids(positions)
        merged = self._evaluate(flat, cell_ids, compute_normals)
        if blend:
            self._blend_second_cell(merged, flat, second, weight, compute_normals)
        if mode.only_cell is not None:
            density = merged[FieldHeadNames.DENSITY]
            merged[FieldHeadNames.DENSITY] = torch.where((cell_ids == mode.only_cell)[:, None], density, torch.zeros_like(density))
        if mode.tint:
            colour = CELL_COLOURS.to(flat.frustums.origins)[cell_ids % len(CELL_COLOURS)]
            merged[FieldHeadNames.RGB] = 0.5 * merged[FieldHeadNames.RGB] + 0.5 * colour
        return {name: value.reshape(*shape, *value.shape[1:]) for name, value in merged.items()}

    __call__ = forward

    def _evaluate(self, flat: RaySamples, cell_ids: Tensor, compute_normals: bool) -> Dict:
        """Each sample by the cell ``cell_ids`` names, its colour through that cell's colour transform."""
        cells = self.router.cells

        def evaluate(cell: int, index: Tensor) -> Dict:
            return cells[cell].field.forward(flat[index], compute_normals=compute_normals)

        merged = _scatter_by_cell(cell_ids, len(cells), evaluate)
        merged[FieldHeadNames.RGB] = apply_transforms(self.router.colour_transforms()[cell_ids], merged[FieldHeadNames.RGB])
        return merged

    def _blend_second_cell(self, merged: Dict, flat: RaySamples, second: Tensor, weight: Tensor, compute_normals: bool) -> None:
        """Density and colour of the samples in a border band (``weight`` > 0) mixed with their second cell's:
        ``(1 - w) first + w second``. Finding the band waits for the device once (its size)."""
        band = torch.nonzero(weight > 0)[:, 0]
        if len(band) == 0:
            return
        other = self._evaluate(flat[band], second[band], compute_normals)
        w = weight[band][:, None]
        for name in (FieldHeadNames.DENSITY, FieldHeadNames.RGB):
            mine = merged[name]
            mixed = ((1.0 - w) * mine[band] + w * other[name].to(mine.dtype)).to(mine.dtype)
            merged[name] = mine.index_copy(0, band, mixed)

    def density_fn(self, positions: Tensor, times: Optional[Tensor] = None) -> Tensor:
        """Density of the radiance fields (not the proposal networks) at ``positions``, all cells merged
        whatever the viewer shows (the occupancy grid is filled from it)."""
        fns = [cell.field.density_fn for cell in self.router.cells]
        return _routed_density(self.router, fns, positions, times, apply_view=False)


def _routed_density(
    router: CellRouter, fns: List[Callable], positions: Tensor, times: Optional[Tensor], apply_view: bool = True
) -> Tensor:
    only_cell = router.viewer_mode().only_cell if apply_view else None
    if len(fns) == 1 and only_cell is None:
        return fns[0](positions, times)
    shape = positions.shape[:-1]
    flat = positions.reshape(-1, 3)
    flat_times = None if times is None else times.reshape(-1, times.shape[-1])
    cell_ids = router.cell_ids(flat)

    def evaluate(cell: int, index: Tensor) -> Dict:
        cell_times = None if flat_times is None else flat_times[index]
        return {"density": fns[cell](flat[index], cell_times)}

    density = _scatter_by_cell(cell_ids, len(fns), evaluate)["density"]
    if only_cell is not None:  # the proposal samplers put their samples into that cell too
        density = torch.where((cell_ids == only_cell)[:, None], density, torch.zeros_like(density))
    return density.reshape(*shape, *density.shape[1:])


class MergedDensityFn:
    """Proposal iteration ``iteration``'s density function over all cells."""

    def __init__(self, router: CellRouter, iteration: int) -> None:
        self.router = router
        self.iteration = iteration

    def __call__(self, positions: Tensor, times: Optional[Tensor] = None) -> Tensor:
        fns = [cell.density_fns[self.iteration] for cell in self.router.cells]
        return _routed_density(self.router, fns, positions, times)
