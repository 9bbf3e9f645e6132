"""Combining cells trained in separate runs into one checkpoint (Mega-NeRF's merge step).

Each run trains a subset of the cells (``--pipeline.cells``) and records which in its
``trained_cells`` buffer; every run holds all cells' parameters, untrained ones at their
initial values. The merged state takes each cell from the run that trained it and everything
else (time-pose function, pose corrections, partition buffers) from the first run.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import torch
from torch import Tensor

TRAINED_CELLS_KEY = "trained_cells"
CENTROIDS_KEY = "_model.centroids"
CELL_PREFIX = "_model.cells."


class MergeError(ValueError):
    """The runs cannot be merged (different partitions, a cell trained twice or never)."""


def cell_of_key(key: str) -> int:
    """``_model.cells.3.field.mlp...`` -> 3; -1 for keys that belong to no cell."""
    if not key.startswith(CELL_PREFIX):
        return -1
    return int(key[len(CELL_PREFIX) :].split(".", 1)[0])


def merge_cell_states(states: Sequence[Mapping[str, Tensor]], names: Sequence[str]) -> Dict[str, Tensor]:
    """The pipeline state with every cell taken from the run that trained it.

    Args:
        states: pipeline state dicts (``checkpoint["pipeline"]``) of runs of the same partition.
        names: a name per run for error messages (e.g. its config path).

    Raises:
        MergeError: the runs have different centroids or keys, a cell is trained by two runs, or by none.
    """
    if not states:
        raise MergeError("no runs to merge")
    first = states[0]
    owners: List[List[int]] = [[] for _ in range(int(first[TRAINED_CELLS_KEY].numel()))]
    for run, (state, name) in enumerate(zip(states, names)):
        if set(state) != set(first):
            missing, extra = sorted(set(first) - set(state))[:3], sorted(set(state) - set(first))[:3]
            raise MergeError(f"{name}: its model differs from {names[0]} (missing {missing}, extra {extra})")
        if state[CENTROIDS_KEY].shape != first[CENTROIDS_KEY].shape or not torch.allclose(
            state[CENTROIDS_KEY], first[CENTROIDS_KEY]
        ):
            raise MergeError(f"{name}: its partition centroids differ from {names[0]}: not the same partition")
        for cell in torch.nonzero(state[TRAINED_CELLS_KEY], as_tuple=True)[0].tolist():
            owners[cell].append(run)
    for cell, runs in enumerate(owners):
        if len(runs) > 1:
            raise MergeError(f"cell {cell} was trained by several runs: {[names[r] for r in runs]}")
    untrained = [cell for cell, runs in enumerate(owners) if not runs]
    if untrained:
        raise MergeError(f"cells {untrained} were trained by none of the runs {list(names)}")

    merged = dict(first)
    for key in first:
        cell = cell_of_key(key)
        if cell >= 0:
            merged[key] = states[owners[cell][0]][key]
    merged[TRAINED_CELLS_KEY] = torch.ones_like(first[TRAINED_CELLS_KEY])
    return merged
