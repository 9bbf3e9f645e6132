"""Cell-state assembly: one pipeline state from runs that each trained some of the cells.

Every run (``--pipeline.datamanager.cells``, or one cluster task per cell) holds all of the model's
parameters; it trains only its cells, and records which in its ``trained_cells`` buffer. The
assembled state takes:

- **each cell's field** from the run that trained that cell (a cell trained by two runs, or by none,
  is an error);
- **per-frame pose corrections**, the RGB cameras' (``_model.camera_optimizer.rgb.*``) and the depth
  frames' (``_model.camera_optimizer.depth.*``), one table row per frame, row by row: frame ``f``'s
  row comes from the run that trained the cell holding most of that frame's training pixels
  (``pixel_counts``: frames x cells, e.g. the shard sets' ``image_counts.npy``; ties go to the lower
  cell). Without counts, from the runs that moved the row away from its initial value (zero: a run
  that never trained on a frame leaves its row exactly zero): the one that did, or the mean of
  several. A frame that no trained cell sees keeps its initial row;
- **the time-pose function** (``tpf.*``): the mean, parameter by parameter, of the TPFs of the runs
  that fine-tuned it (``--pipeline.finetune-tpf``: their ``tpf.*`` differs from ``stage1_tpf.*``);
  without fine-tuning every run has the same TPF. ``stage1_tpf.*`` (the TPF as stage 1 fitted it,
  ns-eval's reference) must be identical in all runs;
- everything else (centroids, which must match, and buffers) from the first run.

This is not the *merged field* (``async_nerf_ns.model.merged``), which routes samples to cells at
render time; the ``async-nerf-merge`` command and the cluster driver both use this assembly.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from async_nerf_ns.files.checkpoints import atomic_torch_save, checkpoint_name, checkpoints_by_step, remove_checkpoint
from async_nerf_ns.shards.sets import image_counts

TRAINED_CELLS_KEY = "trained_cells"
CENTROIDS_KEY = "_model.centroids"
CELL_STATE_PREFIX = "_model.cells."
"""Pipeline state keys of the cells' fields: ``_model.cells.<k>.field...``."""
FRAME_TABLES = {
    "_model.camera_optimizer.rgb.pose_adjustment": "rgb",
    "_model.camera_optimizer.depth.pose_adjustment": "depth",
}
"""Per-frame parameter tables (one row per frame) -> the kind of frames whose pixel counts decide."""
TPF_PREFIX = "tpf."
STAGE1_TPF_PREFIX = "stage1_tpf."


class AssemblyError(ValueError):
    """The runs cannot be assembled (different partitions or models, a cell trained twice or never)."""


def cell_of_key(key: str) -> int:
    """``_model.cells.3.field.mlp...`` -> 3; -1 for keys that belong to no cell."""
    if not key.startswith(CELL_STATE_PREFIX):
        return -1
    return int(key[len(CELL_STATE_PREFIX) :].split(".", 1)[0])


def cell_owners(
    states: Sequence[Mapping[str, Tensor]], names: Sequence[str], empty_cells: Sequence[int] = ()
) -> List[int]:
    """The run that trained each cell (``empty_cells``, cells without pixels that nobody trains: the
    first run), after checking that the runs can be assembled."""
    if not states:
        raise AssemblyError("no runs to assemble")
    first = states[0]
    owners: List[List[int]] = [[] for _ in range(int(first[TRAINED_CELLS_KEY].numel()))]
    for run, (state, name) in enumerate(zip(states, names)):
        if set(state) != set(first):
            missing, extra = sorted(set(first) - set(state))[:3], sorted(set(state) - set(first))[:3]
            raise AssemblyError(f"{name}: its model differs from {names[0]} (missing {missing}, extra {extra})")
        if state[CENTROIDS_KEY].shape != first[CENTROIDS_KEY].shape or not torch.allclose(
            state[CENTROIDS_KEY], first[CENTROIDS_KEY]
        ):
            raise AssemblyError(f"{name}: its partition centroids differ from {names[0]}: not the same partition")
        for cell in torch.nonzero(state[TRAINED_CELLS_KEY], as_tuple=True)[0].tolist():
            owners[cell].append(run)
    for cell, runs in enumerate(owners):
        if len(runs) > 1:
            raise AssemblyError(f"cell {cell} was trained by several runs: {[names[r] for r in runs]}")
    untrained = [cell for cell, runs in enumerate(owners) if not runs and cell not in empty_cells]
    if untrained:
        raise AssemblyError(f"cells {untrained} were trained by none of the runs {list(names)}")
    return [runs[0] if runs else 0 for runs in owners]


def assemble_frame_table(
    tables: Sequence[Tensor], owners: Sequence[int], pixel_counts: Optional[np.ndarray] = None
) -> Tensor:
    """One per-frame table (frames x D) from each run's table (see the module docstring for the rule).

    Args:
        tables: the table of every run, initial value zero.
        owners: the run that trained each cell.
        pixel_counts: (frames, cells) training pixels of each frame in each cell, or None.
    """
    stacked = torch.stack([t.detach() for t in tables])  # runs x frames x D
    if pixel_counts is not None:
        counts = np.asarray(pixel_counts)
        if counts.shape != (stacked.shape[1], len(owners)):
            raise AssemblyError(
                f"pixel counts of shape {counts.shape} do not fit a table of {stacked.shape[1]} frames and {len(owners)} cells"
            )
        result = stacked[0].clone()
        seen = counts.sum(axis=1) > 0
        runs = torch.as_tensor(np.asarray(owners)[counts.argmax(axis=1)])  # argmax: the first maximum
        frames = torch.nonzero(torch.as_tensor(seen), as_tuple=True)[0]
        result[frames] = stacked[runs[frames], frames]
        return result
    moved = (stacked != 0).flatten(2).any(dim=2)  # runs x frames
    count = moved.sum(dim=0)
    total = (stacked * moved[..., None]).sum(dim=0)
    return torch.where(count[:, None] > 0, total / count.clamp(min=1)[:, None].to(stacked.dtype), stacked[0])


def assemble_tpf(states: Sequence[Mapping[str, Tensor]], names: Sequence[str]) -> Dict[str, Tensor]:
    """The ``tpf.*`` entries: the mean over the runs that fine-tuned the TPF (see the module docstring)."""
    first = states[0]
    keys = [k for k in first if k.startswith(TPF_PREFIX)]
    stage1 = {k: STAGE1_TPF_PREFIX + k[len(TPF_PREFIX) :] for k in keys}
    for state, name in zip(states[1:], names[1:]):
        for key in stage1.values():
            if key in first and not torch.equal(state[key], first[key]):
                raise AssemblyError(f"{name}: its stage-1 time-pose function ({key}) differs from {names[0]}'s")
    tuned = [
        s for s in states if any(stage1[k] in s and not torch.equal(s[k], s[stage1[k]]) for k in keys)
    ]
    if not tuned:
        return {k: first[k] for k in keys}
    out = {}
    for key in keys:
        values = [s[key] for s in tuned]
        out[key] = torch.stack(values).mean(dim=0) if values[0].is_floating_point() else values[0]
    return out


def assemble_cell_states(
    states: Sequence[Mapping[str, Tensor]],
    names: Sequence[str],
    pixel_counts: Optional[Mapping[str, np.ndarray]] = None,
    empty_cells: Sequence[int] = (),
) -> Dict[str, Tensor]:
    """The pipeline state with every part taken from the run(s) that trained it (module docstring).

    Args:
        states: pipeline state dicts (``checkpoint["pipeline"]``) of runs of the same partition.
        names: a name per run for error messages (e.g. its config path).
        pixel_counts: per frame kind (``"rgb"``, ``"depth"``), (frames, cells) training pixel counts;
            a kind without counts uses the moved-rows rule.
        empty_cells: cells without training pixels, which no run trains (taken from the first run).

    Raises:
        AssemblyError: different centroids or keys, a cell trained by two runs or by none, different stage-1 TPFs.
    """
    owners = cell_owners(states, names, empty_cells)
    first = states[0]
    assembled = dict(first)
    for key in first:
        cell = cell_of_key(key)
        if cell >= 0:
            assembled[key] = states[owners[cell]][key]
    for key, kind in FRAME_TABLES.items():
        if key in first:
            counts = None if pixel_counts is None else pixel_counts.get(kind)
            assembled[key] = assemble_frame_table([s[key] for s in states], owners, counts)
    assembled.update(assemble_tpf(states, names))
    assembled[TRAINED_CELLS_KEY] = torch.ones_like(first[TRAINED_CELLS_KEY])
    return assembled


def shard_pixel_counts(prepared: Mapping[str, Optional[Path]]) -> Dict[str, np.ndarray]:
    """(frames, cells) training pixels per frame kind ("rgb", "depth") of prepared shard sets
    (``prepare_training_data``'s ``rgb_shards``/``depth_shards``)."""
    counts = {}
    for kind in ("rgb", "depth"):
        folder = prepared.get(f"{kind}_shards")
        if folder is not None:
            counts[kind] = image_counts(Path(folder))
    return counts


def write_assembled_run(
    config: TrainerConfig, state: Mapping[str, Tensor], step: int, transforms: Optional[Path] = None,
    check: bool = True,
) -> Path:
    """An ordinary nerfstudio run directory at ``config.get_base_dir()``: config.yml (all cells),
    ``nerfstudio_models/step-<step>.ckpt`` and dataparser_transforms.json (copied from ``transforms``).

    With ``check``, it is then loaded back here (``check_assembled_run``); without, the caller checks
    it where the cells' field implementation loads (a cluster driver: on a GPU node). Returns the
    config.yml path.
    """
    config.pipeline.datamanager.cells = None
    config.load_dir, config.load_step, config.load_checkpoint = None, None, None
    base = config.get_base_dir()
    config.save_config(resolve_fields=False)  # the cells' implementation, decided on their nodes
    name = checkpoint_name(step)
    atomic_torch_save(
        {"step": int(step), "pipeline": dict(state), "optimizers": {}, "schedulers": {}, "scalers": {}},
        config.get_checkpoint_dir() / name, resume="run the assembly again (async-nerf-merge / async-nerf-train-cells)",
    )
    for old in checkpoints_by_step(config.get_checkpoint_dir()):  # an earlier assembly of fewer steps
        if old.name != name:
            remove_checkpoint(old)
    if transforms is not None and Path(transforms).exists():
        shutil.copy(transforms, base / "dataparser_transforms.json")
    if check:
        for line in check_assembled_run(base / "config.yml")["appearance"]:
            CONSOLE.print(line)
    return base / "config.yml"


def check_assembled_run(config_path: Path) -> Dict[str, object]:
    """Loads an assembled run back the way ns-eval and ns-viewer load it (nerfstudio's ``eval_setup``);
    the pipeline loads strictly, so a missing or mismatched cell fails here rather than rendering an
    untrained cell (and so do tcnn cells where tinycudann or CUDA is missing: nerfstudio then builds
    torch fields, whose keys differ). The cells' appearance is then matched (``pipeline.match_appearance``)
    and the colour transforms stored in the checkpoint. Returns where it loaded (host, pid, device, the
    configured field implementation), its step and the matching report's lines.
    """
    import os
    import socket

    from nerfstudio.utils.eval_utils import eval_setup

    config, pipeline, checkpoint, step = eval_setup(Path(config_path), test_mode="test")
    report = pipeline.match_appearance()  # the cells were trained apart: matched now that they are together
    if report is not None:
        store_colour_transforms(checkpoint, pipeline.model)
    return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(pipeline.device),
            "implementation": config.pipeline.model.implementation, "step": int(step),
            "appearance": [] if report is None else report.lines()}


def store_colour_transforms(checkpoint: Path, model) -> None:
    """The model's cells' colour transforms written into ``checkpoint`` (atomically, with its CRC-32)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for k, cell in enumerate(model.cells):
        state["pipeline"][f"_model.cells.{k}.colour_transform"] = cell.colour_transform.detach().cpu().clone()
    atomic_torch_save(state, checkpoint, resume="run the assembly again (async-nerf-merge / async-nerf-train-cells)")
