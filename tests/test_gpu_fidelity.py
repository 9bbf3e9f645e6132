"""The GPU path under the CUDA emulation (tests/cuda_emulation.py): a full ``async-nerf`` training step
(stages 2 and 3, the TPF fine-tuned, depth corrections on) under fp16 autocast, a resume from a checkpoint
whose depth poses differ from the set-up's, a merged render chunk of 4 cells, the occupancy grid's host
side, and every module tensor on the device after ``.to``, ``load_pipeline`` and ``set_depth_poses``.

A CPU run writes the ray shards and the checkpoint the GPU runs resume from; a resume whose poses moved
writes new depth shards on the emulated device (the writer's threads run under the emulation too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from async_nerf_ns.files.checkpoints import load_checkpoint
from async_nerf_ns.method import async_nerf_config, async_nerf_small_config
from async_nerf_ns.model import occupancy
from async_nerf_ns.model.implementation import checkpoint_implementation
from cuda_emulation import DeviceTensor, emulated_cuda, format_waits, host_value, off_device
from stage3_trainer import close_writers, every_correction, set_up_trainer, train_step
from examples.make_scene import SceneSpec, generate_scene

SPEC = SceneSpec(num_rgb=32, width=32, height=24, depth_width=24, depth_height=18, write_preview=False, lidar=True,
                 lidar_columns=90)
"""A depth-image track and a LiDAR track: every step trains both kinds of depth rays."""
HOST_BY_DESIGN = {
    "datamanager.train_dataset": "nerfstudio's datasets (images, cameras) live in host memory",
    "datamanager.eval_dataset": "nerfstudio's datasets (images, cameras) live in host memory",
    "datamanager.train_dataparser_outputs": "what the dataparser read, used at set-up",
    "datamanager.eval_dataparser_outputs": "what the dataparser read, used at set-up",
    "datamanager.depth_track": "the depth frames' files and stamps (host data, read at set-up)",
    "datamanager.depth_frames": "the poses in use, compared on the host when they are set again",
    "datamanager.geometry": "the partition's geometry, for writing shards at set-up (the model has its centroids)",
    "datamanager._lidar_pose_fn": "a CPU copy of stage 1's TPF: it places the LiDAR rays at set-up, the same on every device",
    "datamanager.config": "options",
}
"""What may stay in host memory, and why; everything else reachable from the pipeline is on the device."""


def _off_device(pipeline):
    allowed = tuple(f"AsyncNerfPipeline.{name}" for name in HOST_BY_DESIGN)
    return [name for name in off_device(pipeline) if not name.startswith(allowed)]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("gpu_fidelity") / "scene", SPEC)


@pytest.fixture(autouse=True)
def _writers(clean_writers):
    yield


def _config(scene: Path, out: Path, method=async_nerf_small_config):
    config = every_correction(method(), scene, out)
    config.steps_per_save = 1000
    return config


def _trainer(config, device: str):
    return set_up_trainer(config, device, mixed_precision=device == "cuda")


@pytest.fixture(scope="module")
def checkpoint(scene, tmp_path_factory) -> Path:
    """A CPU run's checkpoint after 4 steps (every cell once, stage 3 on); writes the shards too."""
    out = tmp_path_factory.mktemp("cpu_run")
    trainer = _trainer(_config(scene, out), "cpu")
    for step in range(4):
        train_step(trainer, step)
    trainer.save_checkpoint(3)
    close_writers()
    return trainer.checkpoint_dir


def test_a_training_step_on_the_emulated_gpu_waits_only_in_nerfstudio_and_torch(scene, checkpoint, tmp_path):
    with emulated_cuda() as ledger:
        trainer = _trainer(_config(scene, tmp_path), "cuda")
        pipeline = trainer.pipeline
        assert _off_device(pipeline) == [], "set-up left tensors in host memory"
        assert trainer.grad_scaler.is_enabled() and trainer.mixed_precision
        rig = pipeline.model.camera_optimizer
        apply, dtypes = rig.apply_to_raybundle, []

        def recording(bundle, *batch):
            dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            apply(bundle, *batch)
            dtypes.append(bundle.origins.dtype)

        rig.apply_to_raybundle = recording
        trajectory, evaluated = rig.trajectory, []

        def tpf_moves(frames):  # the fine-tuned TPF: evaluated for the batch's depth rays only
            evaluated.append(len(frames))
            return trajectory(frames)

        rig.trajectory = tpf_moves
        train_step(trainer, 0)  # lazy set-ups (optimiser state, the first chunk)
        mark = ledger.mark()
        losses = []
        for step in (1, 2, 3, 4):  # every cell once
            _, loss_dict, _ = train_step(trainer, step)
            losses.append({k: float(host_value(v)) for k, v in loss_dict.items()})
        waits = ledger.since(mark)
    assert dtypes[:2] == [torch.float16, torch.float32]  # fp16 autocast on; the rays stay float32
    depth_rays = pipeline.datamanager.config.train_num_depth_rays_per_batch
    assert evaluated == [depth_rays] * 5, evaluated  # not the 384 RGB rays of each batch too (main 7bd303c)
    assert {"depth_loss", "lidar_loss", "depth_pose_camera_opt_regularizer"} <= set(losses[-1])
    assert all(np.isfinite(v) for step in losses for v in step.values()), losses
    owners = {w.owner for w in waits}
    assert "ours" not in owners, format_waits([w for w in waits if w.owner == "ours"])
    # What remains (examples/bench_device_waits.py reports it): GradScaler's and nerfstudio's own.
    assert any("grad_scaler" in w.site for w in waits) and "nerfstudio" in owners, format_waits(waits)


def test_a_resume_whose_depth_poses_differ_moves_the_rays_on_the_device(scene, checkpoint, tmp_path):
    state = load_checkpoint(next(checkpoint.glob("step-*.ckpt")))
    keys = [k for k in state["pipeline"] if k.startswith("stage1_tpf.") and "translation_spline" in k]
    assert keys
    for key in keys:  # the stage-1 TPF as another device would have evaluated it: 1e-4 apart
        state["pipeline"][key] = state["pipeline"][key] + 1e-4
    moved = tmp_path / "moved" / "nerfstudio_models"
    moved.mkdir(parents=True)
    torch.save(state, moved / "step-000000003.ckpt")
    config = _config(scene, tmp_path)
    config.load_dir = moved
    with emulated_cuda() as ledger:
        trainer = _trainer(config, "cuda")
        data = trainer.pipeline.datamanager
        assert _off_device(trainer.pipeline) == [], "after load_pipeline and set_depth_poses"
        generator = data._depth_ray_generator
        expected = data.depth_frames.c2w
        assert torch.allclose(host_value(generator.c2w), expected.float(), atol=1e-6)
        mark = ledger.mark()
        _, loss_dict, _ = train_step(trainer, 4)  # main 7bd303c crashed here (host image_coords)
        assert "depth_loss" in loss_dict
        assert [w for w in ledger.since(mark) if w.owner == "ours"] == []


def test_a_merged_render_chunk_of_four_cells_waits_three_times(scene, checkpoint, tmp_path):
    """ns-eval, ns-render and the viewer render merged: one wait per routed call (the field and the two
    proposal networks), whatever the number of cells."""
    config = _config(scene, tmp_path)
    config.load_dir = checkpoint
    with emulated_cuda() as ledger:
        trainer = _trainer(config, "cuda")
        model = trainer.pipeline.model
        assert model.num_cells == 4
        assert model.router.centroids is model.centroids and isinstance(model.centroids, DeviceTensor)
        model.eval()
        camera = trainer.pipeline.datamanager.eval_dataset.cameras[0:1].to("cuda")
        bundle = camera.generate_rays(camera_indices=0, keep_shape=True)
        flat = bundle.flatten()[:256]
        mark = ledger.mark()
        with torch.no_grad():
            outputs = model(flat)  # eval mode: merged, as ns-eval renders a chunk
        ours = [w for w in ledger.since(mark) if w.owner == "ours"]
        assert isinstance(outputs["rgb"], DeviceTensor) and outputs["rgb"].shape == (256, 3)
    assert len(ours) == 3 and {w.kind for w in ours} == {"device -> host copy"}, format_waits(ours)


def test_the_occupancy_grid_is_filled_on_the_device_and_chosen_for_the_viewer(scene, checkpoint, tmp_path):
    config = _config(scene, tmp_path)
    config.load_dir = checkpoint
    config.pipeline.model.occupancy.grid_resolution = 16
    config.pipeline.model.occupancy.grid_levels = 1
    with emulated_cuda():
        trainer = _trainer(config, "cuda")
        model = trainer.pipeline.model
        device = model.device
        assert device.type == "cuda"
        assert occupancy.use_occupancy("auto", device, viewer=True, kernels_available=lambda: True)
        assert not occupancy.use_occupancy("auto", device, viewer=False, kernels_available=lambda: True)
        grid = model.occupancy_renderer.fill()
        assert off_device(grid) == [], "the grid's buffers"
        occupied = float(host_value(grid.binaries).float().mean())
    assert 0.0 < occupied < 1.0


def test_config_yml_names_the_implementation_that_was_built(tmp_path):
    config = async_nerf_config()  # nerfacto's default: tcnn
    config.output_dir = tmp_path
    config.pipeline.datamanager.data = tmp_path / "data"
    assert config.pipeline.model.implementation == "tcnn"
    config.save_config()  # no CUDA and no tinycudann here: nerfstudio builds torch fields
    saved = yaml.load((config.get_base_dir() / "config.yml").read_text(), Loader=yaml.Loader)
    assert saved.pipeline.model.implementation == "torch"


def test_a_tcnn_checkpoint_where_tinycudann_is_missing_is_a_clear_error(scene, checkpoint, tmp_path):
    state = load_checkpoint(next(checkpoint.glob("step-*.ckpt")))
    assert checkpoint_implementation(state["pipeline"], "_model.cells.") == "torch"
    # tinycudann's modules keep their weights in one parameter, ``params``.
    state["pipeline"]["_model.cells.0.field.mlp_base.model.params"] = torch.zeros(8)
    assert checkpoint_implementation(state["pipeline"], "_model.cells.") == "tcnn"
    trainer = _trainer(_config(scene, tmp_path), "cpu")
    with pytest.raises(RuntimeError, match="holds tcnn .*tinycudann.*implementation torch"):
        trainer.pipeline.load_pipeline(state["pipeline"], 3)


def test_a_cell_task_on_a_gpu_node_sets_up_and_steps_on_the_device(scene, checkpoint, tmp_path):
    """A cluster task given a GPU (``--gpus-per-cell 1``): its device, precision and implementation are
    decided on its node (here the emulated one), its cell's shards and model are set up there, and its
    steps make no wait of ours."""
    from async_nerf_ns.cluster.cell_task import task_config, task_device
    from async_nerf_ns.cluster.driver import cli
    from async_nerf_ns.model.implementation import tcnn_importable

    run_dir = (tmp_path / "run").resolve()
    command = cli(["--data", str(scene), "--run-dir", str(run_dir), "--gpus-per-cell", "1", "--method", "async-nerf-small",
                   "--", "--max-num-iterations", "4"])
    command.run_config(run_dir)
    with emulated_cuda() as ledger:
        device = task_device(1.0)
        config, record = task_config(run_dir, 1, device, tcnn_importable(), "node")
        assert (device, config.mixed_precision, record["implementation"]) == ("cuda", True, "torch")
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        assert trainer.pipeline.trained_cell_list == [1]
        assert _off_device(trainer.pipeline) == []
        train_step(trainer, 0)
        mark = ledger.mark()
        train_step(trainer, 1)
        assert [w for w in ledger.since(mark) if w.owner == "ours"] == []


def test_ns_evals_metrics_on_the_emulated_gpu(scene, checkpoint, tmp_path):
    """What ns-eval computes (image metrics over the val images, rendered merged; depth metrics; depth-frame
    pose errors), on the device: nothing in it mixes host and device tensors."""
    config = _config(scene, tmp_path)
    config.load_dir = checkpoint
    with emulated_cuda():
        trainer = _trainer(config, "cuda")
        trainer.pipeline.eval()
        metrics = trainer.pipeline.get_average_eval_image_metrics()
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values()), metrics
    assert {"psnr", "ssim", "depth_rmse_m", "depth_pose_val_tpf_translation_m_mean"} <= set(metrics)
