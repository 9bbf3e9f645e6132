"""The driver's last step: every cell's final checkpoint (its DONE.json) into one nerfstudio run,
``RUN/assembled/<method>/``, with the config its tasks decided, checked by loading it back."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Dict, Sequence

import torch
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.cluster.assemble import assemble_cell_states, shard_pixel_counts, write_assembled_run
from async_nerf_ns.cluster.cell_task import IMPLEMENTATION, num_cells
from async_nerf_ns.cluster.errors import ClusterError
from async_nerf_ns.files.run_folder import DONE, cell_dir, read_json


def assemble_run(
    run_dir: Path, config: TrainerConfig, prepared: Dict[str, Any], empty: Sequence[int],
    check: Callable[[Path], Dict[str, Any]],
) -> Path:
    """The assembled run of ``config`` (the run's config) from its done cells (all but ``empty``);
    ``check(config.yml)`` loads it back where the cells' implementation loads. Returns its config.yml."""
    records = {k: read_json(cell_dir(run_dir, k) / DONE) for k in range(num_cells(config)) if k not in empty}
    names = [f"cell {k} ({r['checkpoint']})" for k, r in records.items()]
    # mmap: tensors are read when used, so K checkpoints of K cells each never sit in RAM at once.
    states = [torch.load(r["checkpoint"], map_location="cpu", weights_only=True, mmap=True)["pipeline"]
              for r in records.values()]
    state = assemble_cell_states(states, names, shard_pixel_counts(prepared), empty)
    first = next(iter(records))
    path = write_assembled_run(
        assembled_config(run_dir, config, records[first]), state, max(r["step"] for r in records.values()),
        cell_dir(run_dir, first) / "dataparser_transforms.json", check=False,
    )
    checked = check(path)
    CONSOLE.print(f"[bold green]Assembled {len(records)} cells into {path}[/] (loaded back by pid "
                  f"{checked['pid']} on {checked['host']}, {checked['device']}, {checked['implementation']} fields)")
    for line in checked.get("appearance", []):
        CONSOLE.print(f"  {line}")
    CONSOLE.print(f"  ns-eval --load-config {path} --output-path eval.json\n  ns-viewer --load-config {path}")
    return path


def assembled_config(run_dir: Path, config: TrainerConfig, done: Dict[str, Any]) -> TrainerConfig:
    """The run's config with what its tasks decided: the implementation all cells use, and the
    device and mixed precision of the cell whose DONE record is ``done``."""
    config = copy.deepcopy(config)
    record = read_json(run_dir / IMPLEMENTATION)
    implementation = done.get("implementation") or (record or {}).get("implementation")
    if implementation is None:
        raise ClusterError(f"{run_dir / IMPLEMENTATION} is missing: which field implementation the cells use is unknown")
    config.pipeline.model.implementation = implementation
    if config.mixed_precision is None:
        config.mixed_precision = bool(done.get("mixed_precision", False))
    if config.machine.device_type is None:
        config.machine.device_type = done.get("device", "cpu")
    return config
