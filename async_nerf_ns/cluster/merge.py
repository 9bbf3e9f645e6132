"""``async-nerf-merge``: one nerfstudio run from cells trained in separate runs.

    ns-train async-nerf --data D --pipeline.datamanager.cells 0 1 ...   # on machine A
    ns-train async-nerf --data D --pipeline.datamanager.cells 2 3 ...   # on machine B
    async-nerf-merge A/config.yml B/config.yml --output-dir outputs
    ns-viewer --load-config outputs/<experiment>/async-nerf/merged/config.yml

The runs' states are combined by the cell-state assembly (``async_nerf_ns/cluster/assemble.py``):
each cell from the run that trained it, each frame's pose correction from the run that trained the
cell holding most of that frame's pixels, the fine-tuned time-pose function averaged over the runs
that fine-tuned it. ``async-nerf-train-cells`` does all of this in one command.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import tyro
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.cluster.assemble import AssemblyError, assemble_cell_states, shard_pixel_counts, write_assembled_run
from async_nerf_ns.files.checkpoints import checkpoints_by_step


def latest_checkpoint(config: TrainerConfig, config_path: Path) -> Path:
    """The newest step-N.ckpt of a run (what ns-eval would load), found next to its config.yml."""
    folder = config_path.parent / config.relative_model_dir
    files = checkpoints_by_step(folder)
    if not files:
        raise AssemblyError(f"{config_path}: no checkpoint in {folder}")
    return files[-1]


def frame_pixel_counts(config: TrainerConfig) -> Dict[str, np.ndarray]:
    """(frames, cells) training pixels per frame kind, from the dataset's shard sets (written if missing)."""
    from async_nerf_ns.data.prepare import prepare_training_data

    config = copy.deepcopy(config)
    config.pipeline.datamanager.cells = None
    prepared = prepare_training_data(config)
    return shard_pixel_counts(prepared)


@dataclass
class MergeCells:
    """Merge cells trained in separate runs (ns-train ... --pipeline.datamanager.cells) into one ordinary run directory."""

    runs: tyro.conf.Positional[Tuple[Path, ...]]
    """config.yml of each run; together they must have trained every cell exactly once."""
    output_dir: Path = Path("outputs")
    """Like ns-train's --output-dir: the run goes to OUTPUT_DIR/<experiment>/<method>/<timestamp>/."""
    timestamp: str = ""
    """Name of the merged run's folder; default merged-<date>_<time>."""
    frame_pixels: bool = True
    """Take each frame's pose correction from the run whose cell holds most of its pixels (counted in
    the dataset's ray shards, which are written if missing: needs the dataset). False: from the runs
    that moved it (the mean when several did), without reading the dataset."""

    def main(self) -> Path:
        configs: List[TrainerConfig] = []
        for path in self.runs:
            if not path.is_file():
                raise AssemblyError(f"{path}: no such config.yml")
            configs.append(yaml.load(path.read_text(), Loader=yaml.Loader))
        checkpoints = [latest_checkpoint(c, p) for c, p in zip(configs, self.runs)]
        states = [torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in checkpoints]
        counts = frame_pixel_counts(configs[0]) if self.frame_pixels else None
        assembled = assemble_cell_states([s["pipeline"] for s in states], [str(p) for p in self.runs], counts)

        config = configs[0]
        config.output_dir = self.output_dir
        config.timestamp = self.timestamp or datetime.now().strftime("merged-%Y-%m-%d_%H%M%S")
        base = config.get_base_dir()
        if base.exists() and any(base.iterdir()):
            raise AssemblyError(f"{base} exists and is not empty; choose another --timestamp or --output-dir")
        step = max(int(s["step"]) for s in states)
        path = write_assembled_run(config, assembled, step, self.runs[0].parent / "dataparser_transforms.json")
        CONSOLE.print(f"[bold green]Merged {len(self.runs)} runs ({assembled['trained_cells'].numel()} cells) into {path}")
        return path

