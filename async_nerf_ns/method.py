"""nerfstudio method registrations: ``async-nerf`` (full size, for GPUs) and ``async-nerf-small`` (CPU/demo).

Both are the same code; the small preset only changes numbers (image-independent: rays per batch,
hash grid sizes, samples per ray, iterations) so that a whole run takes minutes on two CPU cores.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

from async_nerf_ns.data.datamanager import AsyncNerfDataManagerConfig
from async_nerf_ns.data.dataparser import AsyncNerfDataParserConfig
from async_nerf_ns.engine.trainer import AsyncNerfTrainerConfig
from async_nerf_ns.model.model import AsyncNerfModelConfig
from async_nerf_ns.model.param_groups import DEPTH_POSE_GROUP, TPF_GROUP
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.pipeline import AsyncNerfPipelineConfig


def _machine() -> MachineConfig:
    """The available device, so that ``ns-train async-nerf`` needs no --machine flag on a CPU."""
    return MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu")


def optimizer_templates(field_steps: int, camera_steps: int) -> dict:
    """Templates per parameter kind; every cell gets a copy (see engine/optimizers.py)."""

    def adam(lr: float, lr_final: float, steps: int) -> dict:
        return {
            "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=steps),
        }

    return {
        "proposal_networks": adam(1e-2, 1e-4, field_steps),
        "fields": adam(1e-2, 1e-4, field_steps),
        "camera_opt": adam(1e-3, 1e-4, camera_steps),
        # Per-depth-frame corrections are in scene units: 1e-4 is ~1 cm per step at the example's
        # 82 m per unit. Measured on the example town (2000 steps, examples/bench_async_depth.py):
        # 1e-3 moved TPF poses that were right to 0.4 mm by 0.26 m / 0.35 deg (the young field's
        # depth errors pull them), 1e-4 by 0.12 m / 0.16 deg; from the prior poses (2.26 m off) 1e-3
        # reached 1.95 m and 1e-4 2.09 m.
        DEPTH_POSE_GROUP: adam(1e-4, 1e-5, camera_steps),
        # Only used with --pipeline.finetune-tpf. The TPF's control points are in normalised position
        # units (the trajectory's half-extent is 1), hence a smaller step than the per-frame corrections'.
        TPF_GROUP: adam(1e-4, 1e-5, camera_steps),
    }


def async_nerf_config() -> AsyncNerfTrainerConfig:
    """Full size: nerfacto's defaults per cell, a 2x2 partition, depth from the time-pose function."""
    return AsyncNerfTrainerConfig(
        method_name="async-nerf",
        steps_per_eval_batch=500,
        steps_per_save=2000,
        max_num_iterations=30000,
        mixed_precision=torch.cuda.is_available(),
        machine=_machine(),
        pipeline=AsyncNerfPipelineConfig(
            datamanager=AsyncNerfDataManagerConfig(
                dataparser=AsyncNerfDataParserConfig(),
                train_num_rays_per_batch=4096,
                train_num_depth_rays_per_batch=1024,
                eval_num_rays_per_batch=4096,
                partition=PartitionConfig(grid_dim=(2, 2)),
            ),
            model=AsyncNerfModelConfig(
                eval_num_rays_per_chunk=1 << 15,
                # average_init_density stays nerfacto's 1.0: 0.01 was measured 1.6-1.8 dB worse on the
                # example town (async-nerf-small, 300 and 2000 steps).
                camera_optimizer=CameraOptimizerConfig(mode="SO3xR3"),
                depth_pose_refine_start=5000,  # steps of each cell (7,500 each in a 2x2 run of 30,000)
            ),
        ),
        optimizers=optimizer_templates(field_steps=200000, camera_steps=5000),
        # At most 256 RGB frustums (nerfstudio: 512, each with a thumbnail): a 2,000-image capture opens quickly.
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15, max_num_display_images=256),
        vis="viewer",
    )


def async_nerf_small_config() -> AsyncNerfTrainerConfig:
    """The same method sized for two CPU cores and ~100x75 images: a demo run takes minutes."""
    config = async_nerf_config()
    iterations = 2000
    config.method_name = "async-nerf-small"
    config.max_num_iterations = iterations
    config.steps_per_save = 500
    config.steps_per_eval_batch = 250
    config.steps_per_eval_image = 500
    config.steps_per_eval_all_images = 1_000_000  # ns-eval does the full evaluation
    config.vis = "tensorboard"  # a live viewer steals the CPU from training; see README for ns-viewer
    config.viewer = ViewerConfig(num_rays_per_chunk=1 << 12, quit_on_train_completion=True, max_num_display_images=256)
    pipeline = config.pipeline
    pipeline.datamanager.train_num_rays_per_batch = 384
    pipeline.datamanager.train_num_depth_rays_per_batch = 128
    pipeline.datamanager.train_num_lidar_rays_per_batch = 128
    pipeline.datamanager.eval_num_rays_per_batch = 1024
    pipeline.datamanager.partition = PartitionConfig(grid_dim=(2, 2))
    pipeline.appearance_match_rays = 1024  # 6 neighbour pairs of a 2x2 grid, 2 renders each: a few seconds on a CPU
    pipeline.model = dataclasses.replace(
        pipeline.model,
        eval_num_rays_per_chunk=1 << 12,
        num_levels=8,
        base_res=16,
        max_res=512,
        log2_hashmap_size=15,
        features_per_level=2,
        hidden_dim=32,
        hidden_dim_color=32,
        appearance_embed_dim=8,
        num_proposal_samples_per_ray=(48, 24),
        num_nerf_samples_per_ray=24,
        proposal_net_args_list=[
            {"hidden_dim": 16, "log2_hashmap_size": 13, "num_levels": 4, "max_res": 64, "use_linear": False},
            {"hidden_dim": 16, "log2_hashmap_size": 13, "num_levels": 4, "max_res": 128, "use_linear": False},
        ],
        camera_optimizer=CameraOptimizerConfig(mode="off"),
        # Cells count their own steps: 2000 steps over 2x2 cells are 500 per cell; stage 3 from half of them.
        depth_pose_refine_start=iterations // 8,
        depth_loss_warmup_steps=iterations // 10,
        proposal_warmup=iterations // 4,
    )
    config.optimizers = optimizer_templates(field_steps=iterations, camera_steps=iterations)
    return config


async_nerf = MethodSpecification(
    config=async_nerf_config(),
    description="Async-NeRF: asynchronous RGB-D with a time-pose function, on a Mega-NeRF partition (GPU sizes).",
)
async_nerf_small = MethodSpecification(
    config=async_nerf_small_config(),
    description="async-nerf with a small preset for CPUs and the bundled example (minutes, not hours).",
)


def presets() -> Dict[str, AsyncNerfTrainerConfig]:
    """The async-nerf methods by name (fresh configs), for commands that take a method like ns-train."""
    return {"async-nerf": async_nerf_config(), "async-nerf-small": async_nerf_small_config()}


def preset_descriptions() -> Dict[str, str]:
    return {"async-nerf": async_nerf.description, "async-nerf-small": async_nerf_small.description}
