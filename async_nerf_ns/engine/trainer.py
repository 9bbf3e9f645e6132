"""nerfstudio's Trainer with atomic, numpy-free checkpoints and per-cell optimisers; it keeps the last
step's train metrics for callbacks (``last_train_metrics``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Tuple, Type

from torch import Tensor

from nerfstudio.engine.trainer import TRAIN_INTERATION_OUTPUT, Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.files.checkpoints import (
    PARTIAL_SUFFIX,
    atomic_torch_save,
    checkpoint_name,
    checkpoints_by_step,
    load_checkpoint,
    load_newest_checkpoint,
    remove_checkpoint,
    to_plain_python,
)
from async_nerf_ns.engine.optimizers import CellOptimizers
from async_nerf_ns.model.implementation import resolve_implementation


@dataclass
class AsyncNerfTrainerConfig(TrainerConfig):
    """TrainerConfig whose trainer writes checkpoints atomically and builds one optimiser per cell."""

    _target: Type = field(default_factory=lambda: AsyncNerfTrainer)
    keep_checkpoints: int = 1
    """With save_only_latest_checkpoint: how many of the newest checkpoints to keep. 2 or more leaves one
    to fall back to when the newest cannot be read (a disk or copy that cut it short)."""

    def save_config(self, resolve_fields: bool = True) -> None:
        """Writes config.yml, with the field implementation this machine really builds (``resolve_fields``;
        nerfstudio would build torch fields under a config that says tcnn where tinycudann is missing), so
        that ns-eval, ns-render and a resume on another machine build the fields the checkpoint holds.
        A config whose implementation was decided elsewhere (an assembled cluster run) passes False."""
        if resolve_fields:
            model = self.pipeline.model
            resolved = resolve_implementation(model.implementation, self.machine.device_type)
            if resolved != model.implementation:
                CONSOLE.print(f"[yellow]Field implementation: {resolved} (asked for {model.implementation}, which "
                              f"{'needs CUDA' if self.machine.device_type != 'cuda' else 'needs tinycudann'} here)")
                model.implementation = resolved
        super().save_config()


class AsyncNerfTrainer(Trainer):
    """nerfstudio's Trainer, plus, for callbacks (e.g. a cluster task's progress reports):

    - ``last_train_step``: the step whose metrics ``last_train_metrics`` holds (-1 before the first);
    - ``last_train_metrics``: that step's train loss (``"loss"``), losses and metrics (``"psnr"``, ...),
      detached tensors on the training device. Nothing is read back to the host here: a callback
      converts what it needs when it reports (``.item()`` waits for the step to finish).
    """

    config: AsyncNerfTrainerConfig

    def __init__(self, config: AsyncNerfTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        super().__init__(config, local_rank, world_size)
        self.last_train_step: int = -1
        self.last_train_metrics: Dict[str, Tensor] = {}

    def train_iteration(self, step: int) -> TRAIN_INTERATION_OUTPUT:
        loss, loss_dict, metrics_dict = super().train_iteration(step)
        values = {"loss": loss, **loss_dict, **metrics_dict}
        self.last_train_metrics = {k: v.detach() for k, v in values.items() if isinstance(v, Tensor)}
        self.last_train_step = step
        if step == self._start_step + self.config.max_num_iterations - 1:
            self.pipeline.match_appearance()  # the run's last step: before nerfstudio saves its final checkpoint
        return loss, loss_dict, metrics_dict

    def setup_optimizers(self) -> CellOptimizers:
        param_groups = self.pipeline.get_param_groups()
        return CellOptimizers.from_templates(self.config.optimizers.copy(), param_groups)

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        """nerfstudio's set-up, made safe for resuming after a kill:

        - with ``--load-dir`` and no ``--load-step``, the newest checkpoint that actually loads is used
          (a damaged one is moved to ``RUN/unloadable_checkpoints/``, never deleted);
        - the checkpoint is read once, here, and loaded from memory after the pipeline is built;
        - ``--max-num-iterations`` is the run's total: a run resumed at step S trains up to the same
          last step as the run it continues (nerfstudio would train that many steps *more*);
        - temporary files of a save that a kill interrupted are removed.
        """
        config = self.config
        self._resume: Optional[Tuple[Path, Dict[str, Any]]] = None
        if config.load_dir is not None and config.load_step is None:
            self._resume = load_newest_checkpoint(config.load_dir, quarantine=config.load_dir.parent / "unloadable_checkpoints")
            if self._resume is None:
                CONSOLE.print(f"[yellow]No loadable checkpoint in {config.load_dir}: training from scratch.")
        else:
            path = config.load_checkpoint
            if config.load_dir is not None:
                path = config.load_dir / checkpoint_name(config.load_step)
            if path is not None:
                if not Path(path).is_file():
                    raise FileNotFoundError(f"Checkpoint {path} does not exist")
                self._resume = (Path(path), load_checkpoint(path))
        # nerfstudio's _load_checkpoint would read the file again: ours loads the state read here.
        config.load_dir, config.load_checkpoint = None, None if self._resume is None else self._resume[0]
        super().setup(test_mode)

    def _load_checkpoint(self) -> None:
        """nerfstudio's loading of pipeline, optimisers, schedulers and scaler, from the state in memory."""
        for partial in self.checkpoint_dir.parent.glob(f".*{PARTIAL_SUFFIX}"):
            partial.unlink()
        if self._resume is None:
            CONSOLE.print("No Nerfstudio checkpoint to load, so training from scratch.")
            return
        path, state = self._resume
        self._resume = None  # the state is not needed once loaded
        self._start_step = state["step"] + 1
        self.pipeline.load_pipeline(state["pipeline"], state["step"])
        self.optimizers.load_optimizers(state["optimizers"])
        if "schedulers" in state and self.config.load_scheduler:
            self.optimizers.load_schedulers(state["schedulers"])
        if state["scalers"] or not self.grad_scaler.is_enabled():
            self.grad_scaler.load_state_dict(state["scalers"])
        else:  # saved where mixed precision was off (a CPU run, resumed on a GPU): GradScaler starts afresh
            CONSOLE.print("The checkpoint has no gradient-scaler state (trained without mixed precision): it starts afresh.")
        CONSOLE.print(f"Done loading Nerfstudio checkpoint from {path}")
        remaining = max(0, self.config.max_num_iterations - self._start_step)
        CONSOLE.print(f"Resuming at step {self._start_step}: {remaining} steps left of {self.config.max_num_iterations}")
        self.config.max_num_iterations = remaining

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """Like nerfstudio's, but the file appears complete or not at all, with its CRC-32 beside it, and holds
        no numpy objects; a full disk stops the run with a message naming the folder and the space."""
        ckpt_path: Path = self.checkpoint_dir / checkpoint_name(step)
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: to_plain_python(v.state_dict()) for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: to_plain_python(v.state_dict()) for k, v in self.optimizers.schedulers.items()},
            "scalers": to_plain_python(self.grad_scaler.state_dict()),
        }
        resume = f"resume from the last complete checkpoint (ns-train ... --load-dir {self.checkpoint_dir})"
        atomic_torch_save(state, ckpt_path, resume=resume)
        if self.config.save_only_latest_checkpoint:
            # Only after the new file is complete: a crash above leaves the previous checkpoint.
            files = checkpoints_by_step(self.checkpoint_dir)
            for old in files[: max(0, len(files) - max(1, self.config.keep_checkpoints))]:
                remove_checkpoint(old)
