"""nerfstudio's Trainer with atomic, numpy-free checkpoints and per-cell optimisers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Type

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread

from async_nerf_ns.engine.checkpoints import atomic_torch_save, to_plain_python
from async_nerf_ns.engine.optimizers import CellOptimizers


@dataclass
class AsyncNerfTrainerConfig(TrainerConfig):
    """TrainerConfig whose trainer writes checkpoints atomically and builds one optimiser per cell."""

    _target: Type = field(default_factory=lambda: AsyncNerfTrainer)


class AsyncNerfTrainer(Trainer):
    config: AsyncNerfTrainerConfig

    def setup_optimizers(self) -> CellOptimizers:
        param_groups = self.pipeline.get_param_groups()
        return CellOptimizers.from_templates(self.config.optimizers.copy(), param_groups)

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
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != ckpt_path:
                    old.unlink()
