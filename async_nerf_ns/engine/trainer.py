"""nerfstudio's Trainer with atomic, numpy-free checkpoints and per-cell optimisers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Type

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.engine.checkpoints import (
    PARTIAL_SUFFIX,
    atomic_torch_save,
    checkpoint_step,
    newest_loadable_checkpoint,
    to_plain_python,
)
from async_nerf_ns.engine.optimizers import CellOptimizers


@dataclass
class AsyncNerfTrainerConfig(TrainerConfig):
    """TrainerConfig whose trainer writes checkpoints atomically and builds one optimiser per cell."""

    _target: Type = field(default_factory=lambda: AsyncNerfTrainer)
    keep_checkpoints: int = 1
    """With save_only_latest_checkpoint: how many of the newest checkpoints to keep. 2 or more leaves one
    to fall back to when the newest cannot be read (a disk or copy that cut it short)."""


class AsyncNerfTrainer(Trainer):
    config: AsyncNerfTrainerConfig

    def setup_optimizers(self) -> CellOptimizers:
        param_groups = self.pipeline.get_param_groups()
        return CellOptimizers.from_templates(self.config.optimizers.copy(), param_groups)

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        """nerfstudio's set-up, made safe for resuming after a kill:

        - with ``--load-dir`` and no ``--load-step``, the newest checkpoint that actually loads is used
          (a damaged one is moved to ``RUN/unloadable_checkpoints/``, never deleted);
        - the checkpoint is chosen before the pipeline is built, so that stage 1 (the time-pose function
          and the depth-frame poses) comes from it rather than being fitted again;
        - ``--max-num-iterations`` is the run's total: a run resumed at step S trains up to the same
          last step as the run it continues (nerfstudio would train that many steps *more*);
        - temporary files of a save that a kill interrupted are removed.
        """
        config = self.config
        if config.load_dir is not None:
            if config.load_step is None:
                found = newest_loadable_checkpoint(config.load_dir, quarantine=config.load_dir.parent / "unloadable_checkpoints")
                if found is None:
                    CONSOLE.print(f"[yellow]No loadable checkpoint in {config.load_dir}: training from scratch.")
            else:
                found = config.load_dir / f"step-{config.load_step:09d}.ckpt"
            config.load_dir, config.load_checkpoint = None, found
        datamanager = config.pipeline.datamanager
        if config.load_checkpoint is not None and hasattr(datamanager, "resume_checkpoint"):
            datamanager.resume_checkpoint = config.load_checkpoint
        super().setup(test_mode)

    def _load_checkpoint(self) -> None:
        for partial in self.checkpoint_dir.parent.glob(f".*{PARTIAL_SUFFIX}"):
            partial.unlink()
        super()._load_checkpoint()
        if self._start_step > 0:
            remaining = max(0, self.config.max_num_iterations - self._start_step)
            CONSOLE.print(f"Resuming at step {self._start_step}: {remaining} steps left of {self.config.max_num_iterations}")
            self.config.max_num_iterations = remaining

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """Like nerfstudio's, but the file appears complete or not at all, and holds no numpy objects."""
        ckpt_path: Path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: to_plain_python(v.state_dict()) for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: to_plain_python(v.state_dict()) for k, v in self.optimizers.schedulers.items()},
            "scalers": to_plain_python(self.grad_scaler.state_dict()),
        }
        atomic_torch_save(state, ckpt_path)
        if self.config.save_only_latest_checkpoint:
            # Only after the new file is complete: a crash above leaves the previous checkpoint.
            files = sorted(self.checkpoint_dir.glob("step-*.ckpt"), key=checkpoint_step)
            for old in files[: max(0, len(files) - max(1, self.config.keep_checkpoints))]:
                old.unlink()
