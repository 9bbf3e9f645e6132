"""A trainer with every part of a training step on from its first step, for the GPU-path tests and
examples/bench_device_waits.py: RGB and depth-frame pose corrections, the TPF fine-tuned, stage 3
from each cell's first step, torch fields, no viewer and no console writer; seeded."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.engine.callbacks import TrainingCallbackLocation
from nerfstudio.utils import writer


def every_correction(config, scene: Path, out: Path):
    """``config`` (a method's TrainerConfig) set up to train on ``scene`` into ``out`` with all of stage 3 on."""
    config.pipeline.datamanager.data = scene
    config.output_dir = out
    config.vis = "tensorboard"
    config.logging.local_writer.enable = False
    config.pipeline.model.implementation = "torch"
    config.pipeline.finetune_tpf = True
    config.pipeline.model.camera_optimizer = CameraOptimizerConfig(mode="SO3xR3")
    config.pipeline.model.depth_pose_refine_start = 0
    config.pipeline.model.refine_accurate_depth_poses = True
    return config


def set_up_trainer(config, device: str, mixed_precision: bool):
    """nerfstudio's trainer of ``config`` on ``device`` (seeded), set up as ns-train does."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    config.machine.device_type = device
    config.mixed_precision = mixed_precision
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def train_step(trainer, step: int):
    """One training step as nerfstudio's ``Trainer.train`` runs it: ``train_iteration`` between the training
    callbacks (the model's per-cell schedule among them, which advances the cell's clock); returns what
    ``train_iteration`` returns."""
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    result = trainer.train_iteration(step)
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    return result


def close_writers() -> None:
    """nerfstudio's event writers are module globals that every trainer appends to: closed and cleared."""
    for event_writer in writer.EVENT_WRITERS:
        if hasattr(event_writer, "tb_writer"):
            event_writer.tb_writer.close()
    writer.EVENT_WRITERS.clear()
