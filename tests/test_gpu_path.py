"""Mixed precision as CUDA runs it, on the CPU: under the CUDA emulation (tests/cuda_emulation.py), autocast
is float16 and ``index_copy`` & co. refuse a source of another dtype (CPU autocast would promote it). The
rig's corrections come out float32 from half-precision inputs, and a step of the full ``async-nerf``
preset keeps its rays float32 and its losses close to the float32 step's. (Waits for the device in a
step: tests/test_gpu_fidelity.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.rays import RayBundle

from async_nerf_ns.method import async_nerf_config
from async_nerf_ns.model.pose_refinement import RigPoseOptimizer
from async_nerf_ns.trajectory.finetune import TPFRayCorrections
from async_nerf_ns.trajectory.fit import fit_tpf
from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig
from cuda_emulation import emulated_cuda, host_value
from stage3_trainer import every_correction, set_up_trainer, train_step
from examples.make_scene import SceneSpec, generate_scene

SPEC = SceneSpec(num_rgb=32, width=32, height=24, depth_width=24, depth_height=18, write_preview=False)
LOSS_TOLERANCE = 1e-3
"""Relative difference allowed between a float16-autocast step's losses (emulated CUDA) and the float32 step's:
measured at most 6.1e-5 (interlevel_loss; rgb_loss 1.8e-5, depth_loss 1.0e-5), margin 16x."""


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("gpu_path") / "scene", SPEC)


def test_rig_pose_optimizer_returns_float32_rays_from_half_precision_inputs():
    """What CUDA autocast hands the rig: float16 directions; corrections computed under autocast."""
    times = np.linspace(0.0, 4.0, 9)
    poses = torch.eye(4)[None, :3].repeat(9, 1, 1)
    poses[:, 0, 3] = torch.linspace(0.0, 1.0, 9)
    tpf = fit_tpf(times, poses, TimePoseFunctionConfig(iterations=0), progress=False)
    trajectory = TPFRayCorrections(times[:3] + 0.1)
    stage1 = fit_tpf(times, poses * torch.tensor([1.0, 1.0, 1.0, 0.9]), TimePoseFunctionConfig(iterations=0), progress=False)
    trajectory.retarget(tpf, stage1)
    rig = RigPoseOptimizer(CameraOptimizerConfig(mode="SO3xR3"), CameraOptimizerConfig(mode="SO3xR3"), 4, 3, trajectory)
    with torch.no_grad():
        rig.rgb.pose_adjustment.copy_(0.01 * torch.randn(4, 6))
        rig.depth.pose_adjustment.copy_(0.01 * torch.randn(3, 6))
    directions = torch.nn.functional.normalize(torch.randn(6, 3), dim=-1)
    depth_frames = torch.tensor([0, 1, 2])  # the last three rays are depth rays (data/ray_keys.py)

    def bundle(dtype):
        return RayBundle(
            origins=torch.linspace(0, 1, 18).reshape(6, 3).to(dtype),
            directions=directions.to(dtype),
            pixel_area=torch.ones(6, 1),
            camera_indices=torch.tensor([[0], [1], [2], [3], [0], [1]]),
        )

    reference = bundle(torch.float32)
    rig.apply_to_raybundle(reference, depth_frames, stage3=True)
    with emulated_cuda():
        rig.to("cuda")
        for dtype in (torch.float16, torch.bfloat16):
            rays = bundle(dtype).to("cuda")
            with torch.autocast("cuda"):  # float16, as CUDA's
                rig.apply_to_raybundle(rays, depth_frames.to("cuda"), stage3=True)
            assert rays.origins.dtype == torch.float32 and rays.directions.dtype == torch.float32
            # Only the inputs' rounding differs (float16: 1e-3, bfloat16: 8e-3 of a unit).
            torch.testing.assert_close(host_value(rays.directions), reference.directions, atol=1e-2, rtol=0)
            torch.testing.assert_close(host_value(rays.origins), reference.origins, atol=1e-2, rtol=0)


def _trainer(config, scene: Path, out: Path, device: str = "cpu"):
    return set_up_trainer(every_correction(config, scene, out), device, mixed_precision=False)


def _full_config():
    """The full ``async-nerf`` preset (its hash grids, samples per ray, partition), fewer rays per step."""
    config = async_nerf_config()
    config.pipeline.datamanager.train_num_rays_per_batch = 256
    config.pipeline.datamanager.train_num_depth_rays_per_batch = 64
    return config


def test_a_full_preset_step_under_autocast_keeps_rays_float32_and_losses_close(scene, tmp_path, clean_writers):
    _trainer(_full_config(), scene, tmp_path / "shards")  # the ray shards, written on the plain CPU
    losses = {}
    for mixed in (False, True):
        with emulated_cuda():
            trainer = _trainer(_full_config(), scene, tmp_path / ("mixed" if mixed else "fp32"), device="cuda")
            trainer.mixed_precision = mixed
            rig = trainer.pipeline.model.camera_optimizer
            dtypes = []
            apply = rig.apply_to_raybundle

            def recording(bundle, *batch, apply=apply, dtypes=dtypes, mixed=mixed):
                assert torch.is_autocast_enabled("cpu") == mixed  # the step really runs under (fp16) autocast
                apply(bundle, *batch)
                dtypes.append((bundle.origins.dtype, bundle.directions.dtype))

            rig.apply_to_raybundle = recording
            _, loss_dict, _ = train_step(trainer, 0)
            losses[mixed] = {k: float(host_value(v).detach()) for k, v in loss_dict.items()}
        assert dtypes == [(torch.float32, torch.float32)]
        assert "depth_loss" in loss_dict and "depth_pose_camera_opt_regularizer" in loss_dict
        assert all(np.isfinite(v) for v in losses[mixed].values()), losses[mixed]
    for name, value in losses[False].items():
        assert abs(losses[True][name] - value) <= LOSS_TOLERANCE * abs(value) + 1e-6, (name, value, losses[True][name])
