"""``async-nerf-merge``: one nerfstudio run from cells trained in separate runs.

    ns-train async-nerf --data D --pipeline.cells 0 1 ...   # on machine A
    ns-train async-nerf --data D --pipeline.cells 2 3 ...   # on machine B
    async-nerf-merge A/config.yml B/config.yml --output-dir outputs
    ns-viewer --load-config outputs/<experiment>/async-nerf/merged/config.yml
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import List, Tuple

import torch
import tyro
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.eval_utils import eval_setup
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.engine.checkpoints import atomic_torch_save
from async_nerf_ns.partition.merge import MergeError, merge_cell_states


def latest_checkpoint(config: TrainerConfig, config_path: Path) -> Path:
    """The newest step-N.ckpt of a run (what ns-eval would load), found next to its config.yml."""
    folder = config_path.parent / config.relative_model_dir
    files = sorted(folder.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1])) if folder.exists() else []
    if not files:
        raise MergeError(f"{config_path}: no checkpoint in {folder}")
    return files[-1]


@dataclass
class MergeCells:
    """Merge cells trained in separate runs (ns-train ... --pipeline.cells) into one ordinary run directory."""

    runs: tyro.conf.Positional[Tuple[Path, ...]]
    """config.yml of each run; together they must have trained every cell exactly once."""
    output_dir: Path = Path("outputs")
    """Like ns-train's --output-dir: the run goes to OUTPUT_DIR/<experiment>/<method>/<timestamp>/."""
    timestamp: str = ""
    """Name of the merged run's folder; default merged-<date>_<time>."""

    def main(self) -> Path:
        configs: List[TrainerConfig] = []
        for path in self.runs:
            if not path.is_file():
                raise MergeError(f"{path}: no such config.yml")
            configs.append(yaml.load(path.read_text(), Loader=yaml.Loader))
        checkpoints = [latest_checkpoint(c, p) for c, p in zip(configs, self.runs)]
        states = [torch.load(p, map_location="cpu") for p in checkpoints]
        merged = merge_cell_states([s["pipeline"] for s in states], [str(p) for p in self.runs])

        config = configs[0]
        config.pipeline.cells = None
        config.output_dir = self.output_dir
        config.timestamp = self.timestamp or datetime.now().strftime("merged-%Y-%m-%d_%H%M%S")
        config.load_dir = None
        base = config.get_base_dir()
        if base.exists() and any(base.iterdir()):
            raise MergeError(f"{base} exists and is not empty; choose another --timestamp or --output-dir")
        step = max(int(s["step"]) for s in states)
        config.save_config()
        atomic_torch_save(
            {"step": step, "pipeline": merged, "optimizers": {}, "schedulers": {}, "scalers": states[0]["scalers"]},
            config.get_checkpoint_dir() / f"step-{step:09d}.ckpt",
        )
        transforms = self.runs[0].parent / "dataparser_transforms.json"
        if transforms.exists():
            shutil.copy(transforms, base / "dataparser_transforms.json")

        # Load it back the way ns-eval/ns-viewer do; our pipeline loads strictly, so a missing or
        # mismatched cell fails here rather than rendering an untrained cell.
        eval_setup(base / "config.yml", test_mode="inference")
        CONSOLE.print(f"[bold green]Merged {len(self.runs)} runs ({merged['trained_cells'].numel()} cells) into {base / 'config.yml'}")
        return base / "config.yml"


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(MergeCells).main()


if __name__ == "__main__":
    entrypoint()
