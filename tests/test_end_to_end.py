"""End to end through the real commands, as a user runs them: ns-train, ns-eval, ns-render, ns-viewer,
ns-export, and a training run killed with SIGKILL and resumed with --load-dir.

One training run of the small preset on a generated scene (2x2 cells, one asynchronous depth-image
track and one spinning LiDAR track whose points each have their own time, an all-images evaluation through the tensorboard writer at step 300); every test below reads
its checkpoint, so a checkpoint that cannot be loaded back (the nerfstudio 1.1.5 + torch >= 2.6 trap)
fails them all.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import torch

from async_nerf_ns.model.lpips import alexnet_weights_path
from conftest import run_command, venv_env
from small_disk import small_disk  # noqa: F401 (fixture)
from viser_client import markdown_of, viewer_messages

ITERATIONS = 400
EVAL_ALL_AT = 300
RESUME_TOLERANCE = 0.0
"""Exact: measured max abs difference 0.0 over every weight between resumed and uninterrupted runs
(one thread; 80 and 400 steps)."""
GROUND_BELOW_CAMERAS = 0.2
"""Scene units: the exported points' median height lies 0.39 below the lowest camera (measured; the
drone flies 52-78 m over the town); a field that learned no geometry puts them around the cameras."""
STAGE_3_CELL_STEPS = 50
"""Stage 3 starts after a cell's 50th step: with 4 cells round-robin, from global step 200."""


def _train_args(scene: Path, out: Path, timestamp: str):
    return [
        "ns-train", "async-nerf-small",
        "--data", str(scene),
        "--output-dir", str(out),
        "--experiment-name", "e2e",
        "--timestamp", timestamp,
        "--max-num-iterations", str(ITERATIONS),
        "--steps-per-save", "100",
        "--steps-per-eval-all-images", str(EVAL_ALL_AT),
        "--logging.local-writer.enable", "False",
        "--pipeline.model.depth-pose-refine-start", str(STAGE_3_CELL_STEPS),
        "--pipeline.finetune-tpf", "True",
        "--pipeline.model.refine-accurate-depth-poses", "True",
    ]


@pytest.fixture(scope="module")
def trained_config(example_lidar_scene: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    # One torch thread: with two, CPU training is not bit-reproducible (two identical 80-step runs
    # differed by up to 0.026 in a hash table), and the resume test compares weights exactly.
    run_command(_train_args(example_lidar_scene, out, "run"), cwd=out, threads=1)
    config = out / "e2e" / "async-nerf-small" / "run" / "config.yml"
    assert config.exists(), f"ns-train wrote no {config}"
    return config


def _mean_colour_psnr(scene: Path) -> float:
    """PSNR on val frames of the best constant image (the mean train colour): what learning must beat."""
    train = np.concatenate([np.asarray(Image.open(p), dtype=np.float64).reshape(-1, 3) / 255 for p in sorted((scene / "train" / "rgbs").iterdir())])
    val = np.concatenate([np.asarray(Image.open(p), dtype=np.float64).reshape(-1, 3) / 255 for p in sorted((scene / "val" / "rgbs").iterdir())])
    return float(-10 * np.log10(np.mean((val - train.mean(axis=0)) ** 2)))


def test_checkpoint_is_complete_and_alone(trained_config: Path):
    models = trained_config.parent / "nerfstudio_models"
    name = f"step-{ITERATIONS - 1:09d}.ckpt"
    assert sorted(p.name for p in models.iterdir()) == [name, f"{name}.crc32"]  # with its checksum
    assert not list(trained_config.parent.glob("*.partial")), "a temporary checkpoint file was left behind"


def test_eval_reports_image_metrics_well_above_a_constant_image(trained_config: Path, example_lidar_scene: Path, tmp_path: Path):
    output = tmp_path / "eval.json"
    run_command(["ns-eval", "--load-config", str(trained_config), "--output-path", str(output)], cwd=tmp_path)
    results = json.loads(output.read_text())["results"]
    baseline = _mean_colour_psnr(example_lidar_scene)
    # 400 steps shared by 4 cells (100 each): measured 23.5 dB on val frames (22.8 without the LiDAR track), against 15.6 dB for the
    # best constant image (the town is mostly grey and green); a broken merge or routing gives < 15.
    assert results["psnr"] > baseline + 5.0, (results["psnr"], baseline)
    # SSIM measured 0.594 (0.526 without the LiDAR track; the constant image: 0.204; the val frames blurred by a 5x5 box: 0.502);
    # floor 0.40, 0.13 under the measurement and 0.20 over the constant image.
    assert results["ssim"] > 0.40, results["ssim"]
    # LPIPS exactly when its AlexNet weights are on disk (model/lpips.py); none here, so no value of it
    # was measured and only its range is checked where it is reported.
    assert ("lpips" in results) == alexnet_weights_path().exists(), sorted(results)
    assert "lpips" not in results or 0.0 <= results["lpips"] <= 1.0
    # Depth of val frames (at their GT poses) and pose errors of depth frames per source, in metres.
    # Measured at this budget: depth RMSE 3.9 m, delta<1.25 0.99 with the LiDAR track (7.4 m, 0.96 without; an
    # untrained field is ~60 m off).
    assert results["depth_eval_at_gt_poses"] == 1.0
    assert 0.0 < results["depth_rmse_m"] < 11.0 and results["depth_delta_1_25"] > 0.9
    # The example's prior poses are ~2 m off (nearest RGB frame); the TPF's within a millimetre
    # (measured 2.18 m and 0.3 mm / 0.004 deg).
    assert results["depth_pose_train_prior_translation_m_mean"] > 1.5
    assert results["depth_pose_train_tpf_translation_m_mean"] < 0.005
    assert results["depth_pose_train_tpf_rotation_deg_mean"] < 0.05
    # Stage 3 (per-frame corrections, forced on for TPF poses here) ran from each cell's 50th step and
    # moved the train depth poses by 0.43 m (0.32 m without the LiDAR track): the young field's depth errors pull right poses away,
    # which is why the default keeps them off for TPF poses. Bounds: it ran (> 5 cm), it did not diverge.
    assert 0.05 < results["depth_pose_train_tpf+refine_translation_m_mean"] < 1.0
    assert results["depth_pose_val_tpf_rotation_deg_mean"] < 0.05
    # Only the fine-tuned TPF can move val frames, never trained on. Measured 0.63 m (0.15 m without the LiDAR
    # track): the LiDAR rays' depth and free-space losses pull the young field's TPF further (finetune_tpf is
    # off by default). Bounds: it ran, it did not diverge.
    assert 0.02 < results["depth_pose_val_tpf+refine_translation_m_mean"] < 1.2
    # LiDAR (every val scan's returns at stage 1's TPF poses, each at its point's own time): measured range RMSE
    # 6.9 m, AbsRel 0.033 on 16 val scans (9.0 m, 0.057 without the free-space term; an untrained field: 28 m
    # after 40 steps); bounds 1.5x.
    assert results["lidar_eval_scans"] == 16.0 and results["lidar_eval_points"] > 10000
    assert 0.0 < results["lidar_range_rmse_m"] < 10.5 and results["lidar_range_abs_rel"] < 0.05
    # Scan poses: the fitted TPF's within a millimetre (measured 0.3 mm); the fine-tuned TPF moved the
    # LiDAR's trajectory with the depth frames' (measured 0.51 m on val scans): it ran, it did not diverge.
    assert results["lidar_pose_train_tpf_translation_m_mean"] < 0.005
    assert results["lidar_pose_val_tpf_translation_m_mean"] < 0.005
    assert 0.02 < results["lidar_pose_val_tpf+refine_translation_m_mean"] < 1.2


def _scalars(trained_config: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next(trained_config.parent.glob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator.Scalars(tag)


def test_training_psnr_rises(trained_config: Path):
    psnr = [e.value for e in _scalars(trained_config, "Train Metrics Dict/psnr")]
    assert len(psnr) >= 20
    # Training batches: 14.0 dB at step 0, 23.1 dB over the last 5 logged (measured).
    assert np.mean(psnr[-5:]) > psnr[0] + 6.0, psnr


def test_stage_3_starts_on_each_cells_own_clock(trained_config: Path):
    # A group's learning rate is logged on the steps it had gradients (engine/optimizers.py). Stage 3
    # starts after a cell's own 50th step; round-robin over 4 cells, cell 0 takes its 51st step at
    # global step 200 (a global clock would start it at step 50).
    for group in ("depth_pose_opt", "tpf"):
        steps = [e.step for e in _scalars(trained_config, f"learning_rate/{group}")]
        assert steps and min(steps) == 4 * STAGE_3_CELL_STEPS, (group, steps[:3])
    assert min(e.step for e in _scalars(trained_config, "learning_rate/cell0.fields")) == 0


def test_render_writes_a_video(trained_config: Path, tmp_path: Path):
    video = tmp_path / "render.mp4"
    run_command(
        [
            "ns-render", "interpolate",
            "--load-config", str(trained_config),
            "--output-path", str(video),
            "--interpolation-steps", "2",
            "--frame-rate", "4",
        ],
        cwd=tmp_path,
    )
    assert video.exists() and video.stat().st_size > 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_viewer_answers_http_and_shows_the_partition(trained_config: Path, tmp_path: Path):
    port = _free_port()
    viewer = subprocess.Popen(
        [str(Path(sys.executable).parent / "ns-viewer"), "--load-config", str(trained_config), "--viewer.websocket-port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert viewer.poll() is None, f"ns-viewer exited with {viewer.returncode}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    assert b"<html" in response.read(2000).lower()
                    break
            except OSError:
                assert time.monotonic() < deadline, "ns-viewer did not answer HTTP within 240 s"
                time.sleep(2)
        # What a browser receives: the GUI and the scene, as viser's client gets them.
        state = torch.load(_checkpoints(trained_config.parent / "nerfstudio_models")[-1], map_location="cpu", weights_only=True)["pipeline"]
        centroid = state["_model.centroids"][2].double() * 10.0  # viser's units: 10 per scene unit
        camera = {"type": "ViewerCameraMessage", "wxyz": (1.0, 0.0, 0.0, 0.0), "position": (float(centroid[0]), float(centroid[1]), 8.0),
                  "fov": 1.0, "aspect": 1.3, "look_at": (float(centroid[0]), float(centroid[1]), 0.0), "up_direction": (0.0, 0.0, 1.0)}
        # The panel follows the camera: sent every 2 s as a browser sends it on every move (one message
        # sent right after connecting can precede the viewer's handlers for this client), up to 60 s.
        highlighted = lambda got: any("**2 (camera)**" in t for t in markdown_of(got).values())  # noqa: E731
        messages = viewer_messages(port, seconds=60.0, send=[camera], until=highlighted, resend_every=2.0)
    finally:
        viewer.terminate()
        try:
            viewer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            viewer.kill()
    dropdowns = {m["label"]: m for m in messages if m.get("type") == "GuiAddDropdownMessage"}
    assert dropdowns["render mode"]["options"] == ["merged", "colour by cell"] + [f"cell {k} only" for k in range(4)]
    checkboxes = {m["label"] for m in messages if m.get("type") == "GuiAddCheckboxMessage"}
    assert {"show cells", "show depth frames"} <= checkboxes
    names = [m.get("name", "") for m in messages]
    assert {f"/async_nerf/cells/label_{k}" for k in range(4)} <= set(names)
    assert all(any(n.startswith(f"/async_nerf/cells/region_{k}_") for n in names) for k in range(4))
    assert all(any(n.startswith(f"/async_nerf/cells/margin_{k}_") for n in names) for k in range(4))
    stage1 = {n for n in names if n.startswith("/async_nerf/depth_frames/stage_1/")}
    refined = {n for n in names if n.startswith("/async_nerf/depth_frames/refined/")}
    # The run refines depth poses (stage 3 on TPF poses): both sets are drawn, one frustum per train
    # depth frame (fewer than the 200 the viewer draws at most).
    frames = state["_model.camera_optimizer.depth.pose_adjustment"].shape[0]
    assert len(stage1) == len(refined) == frames > 10
    # The cells panel: every cell's own steps (400 steps round-robin over 4 cells), and the cell under the
    # camera (over cell 2's centroid) in bold.
    tables = [t for t in markdown_of(messages).values() if t.startswith("| cell |")]
    assert tables, "no cells panel"
    rows = [line for line in tables[-1].splitlines()[2:]]
    assert len(rows) == 4 and all(f"| {ITERATIONS // 4} |" in row.replace("**", "") for row in rows)
    assert "**2 (camera)**" in tables[-1]


def test_all_images_evaluation_reached_the_tensorboard_writer(trained_config: Path):
    # nerfstudio's writers call float() on every metric: one string ends training (issue 11).
    psnr = _scalars(trained_config, "Eval Images Metrics Dict (all images)/psnr")
    rmse = _scalars(trained_config, "Eval Images Metrics Dict (all images)/depth_rmse_m")
    assert [e.step for e in psnr] == [EVAL_ALL_AT] and [e.step for e in rmse] == [EVAL_ALL_AT]
    # Measured at step 300: 22.3 dB and 4.6 m with the LiDAR track (21.8 dB, 10.1 m without; ns-eval after step
    # 399: 23.5 dB, 3.9 m).
    assert psnr[0].value > 19.5 and 0.0 < rmse[0].value < 15.0


def _read_ply(path: Path):
    from plyfile import PlyData

    vertices = PlyData.read(str(path))["vertex"]
    points = np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=-1)
    colours = np.stack([vertices["red"], vertices["green"], vertices["blue"]], axis=-1)
    return points, colours


def test_export_pointcloud_and_poisson_mesh(trained_config: Path, example_lidar_scene: Path, tmp_path: Path):
    scene_box = ["--obb-center", "0", "0", "0", "--obb-rotation", "0", "0", "0", "--obb-scale", "3", "3", "3"]
    run_command(
        ["ns-export", "pointcloud", "--load-config", str(trained_config), "--output-dir", str(tmp_path),
         "--num-points", "8192", "--normal-method", "open3d", "--num-rays-per-batch", "2048", *scene_box],
        cwd=tmp_path,
    )
    points, colours = _read_ply(tmp_path / "point_cloud.ply")
    # Rays come from the training shards of all four cells (round-robin), whole batches of 2048 (10,240),
    # less ns-export's outlier removal: 10,004 points measured.
    assert len(points) > 8000
    assert np.all(np.abs(points) <= 1.5 + 1e-6)  # cropped to the scene box (async-nerf-data: [-1.5, 1.5]^3)
    # The town lies below the drone: the points' median height is well under the lowest camera.
    from async_nerf_ns.data.dataparser import AsyncNerfDataParserConfig

    cameras = AsyncNerfDataParserConfig(data=example_lidar_scene).setup().get_dataparser_outputs("train").cameras
    lowest_camera = float(cameras.camera_to_worlds[:, 2, 3].min())
    assert np.median(points[:, 2]) < lowest_camera - GROUND_BELOW_CAMERAS, (np.median(points[:, 2]), lowest_camera)
    assert colours.std(axis=0).min() > 15  # coloured, not one flat colour (measured std 35-38 per channel)
    run_command(
        # Texture from the points: nerfstudio's default renders a 2048x2048 texture with the field
        # (4 M rays, ~40 min on this CPU).
        ["ns-export", "poisson", "--load-config", str(trained_config), "--output-dir", str(tmp_path / "mesh"),
         "--num-points", "8192", "--normal-method", "open3d", "--num-rays-per-batch", "2048",
         "--texture-method", "point_cloud", *scene_box],
        cwd=tmp_path,
    )
    mesh = tmp_path / "mesh" / "poisson_mesh.ply"
    assert mesh.exists() and mesh.stat().st_size > 10_000


def _checkpoints(models: Path):
    return sorted(models.glob("step-*.ckpt"))


def test_training_killed_with_sigkill_resumes_to_the_same_weights(trained_config: Path, example_lidar_scene: Path, tmp_path: Path):
    args = _train_args(example_lidar_scene, tmp_path, "killed")
    models = tmp_path / "e2e" / "async-nerf-small" / "killed" / "nerfstudio_models"
    bin_dir = Path(sys.executable).parent
    process = subprocess.Popen(
        [str(bin_dir / args[0]), *args[1:]], cwd=tmp_path, env=venv_env(threads=1),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 900
    try:
        while not any(int(p.stem.split("-")[1]) >= 200 for p in _checkpoints(models)):
            assert process.poll() is None, f"ns-train exited with {process.returncode} before step 200"
            assert time.monotonic() < deadline, "no checkpoint of step 200 within 900 s"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = max(int(p.stem.split("-")[1]) for p in _checkpoints(models))
    # What a kill can leave besides: a save cut between writing and renaming (the temporary file), and
    # a newest checkpoint cut short (here written by hand: our saves are atomic, a copy or a disk may not be).
    good = _checkpoints(models)[-1]
    (models.parent / f".nerfstudio_models-step-{killed_at + 50:09d}.ckpt.partial").write_bytes(b"half a save")
    (models / f"step-{killed_at + 50:09d}.ckpt").write_bytes(good.read_bytes()[:4096])

    resumed_run = run_command([*args, "--load-dir", str(models)], cwd=tmp_path, threads=1)
    # Stage 1 came from the checkpoint: no re-fit of the time-pose function.
    assert "Stage 1: time-pose function from" in resumed_run.stdout and "Stage 1: fitting" not in resumed_run.stdout
    final = models / f"step-{ITERATIONS - 1:09d}.ckpt"
    assert _checkpoints(models) == [final]
    assert [p.name for p in (models.parent / "unloadable_checkpoints").iterdir()] == [f"step-{killed_at + 50:09d}.ckpt"]
    assert not list(models.parent.glob("*.partial"))
    # Batches and the model's randomness are functions of the step, the per-cell clocks and proposal
    # counters are saved: the resumed run ends with the uninterrupted run's weights (measured: ...).
    resumed = torch.load(final, weights_only=True)["pipeline"]
    reference = torch.load(next((trained_config.parent / "nerfstudio_models").glob("*.ckpt")), weights_only=True)["pipeline"]
    assert set(resumed) == set(reference)
    worst = max(
        (resumed[k].double() - reference[k].double()).abs().max().item()
        for k in reference
        if reference[k].is_floating_point() and reference[k].numel()
    )
    assert worst <= RESUME_TOLERANCE, worst


LEFT_HALF_GAIN_DB = 0.4
"""Right-half PSNR gained by fitting each val image's appearance on its left half, on val images tinted
by (0.75, 0.85, 1.05): measured +1.0 dB (20.0 -> 21.0 dB, 50 steps of 256 rays, a 400-step model on
this scene size); the test asks for 40% of it."""


def test_mega_nerf_left_half_protocol_fits_a_changed_appearance(trained_config: Path, example_lidar_scene: Path, tmp_path: Path):
    """Val images whose appearance changed (a colour tint): Mega-NeRF's protocol fits it on their left
    halves and scores the right halves better than the average appearance does."""
    import yaml
    from nerfstudio.utils.eval_utils import eval_setup

    from async_nerf_ns.evaluation.appearance import LeftHalfFitted

    data = tmp_path / "tinted"
    shutil.copytree(example_lidar_scene, data, ignore=shutil.ignore_patterns(".async_nerf_cache"))
    for path in sorted((data / "val" / "rgbs").glob("*.png")):
        image = np.asarray(Image.open(path)).astype(np.float64)
        Image.fromarray(np.clip(image * np.array([0.75, 0.85, 1.05]), 0, 255).astype(np.uint8)).save(path)
    config = yaml.load(trained_config.read_text(), Loader=yaml.Loader)
    config.data = config.pipeline.datamanager.data = data
    config.pipeline.model.eval_appearance = "left-half"
    tinted_config = tmp_path / "config.yml"
    tinted_config.write_text(yaml.dump(config))
    _, pipeline, _, _ = eval_setup(tinted_config, test_mode="test")
    model = pipeline.model
    loader = list(pipeline.datamanager.fixed_indices_eval_dataloader)[:3]

    def right_half_psnr(steps: int) -> float:
        values = []
        for camera, batch in LeftHalfFitted(loader, model, steps=steps, rays_per_step=256, lr=0.05):
            with torch.no_grad():
                outputs = model.get_outputs_for_camera(camera)
            values.append(model.get_image_metrics_and_images(outputs, batch)[0]["psnr"])
            assert outputs["rgb"].shape[1] == int(camera.width) < 64  # the right half only
        return float(np.mean(values))

    average, fitted = right_half_psnr(0), right_half_psnr(50)
    assert fitted > average + LEFT_HALF_GAIN_DB, (average, fitted)
    assert all(cell.field.embedding_appearance.fitted is None for cell in model.cells)  # nothing left behind
    # ns-eval's path: the protocol is named beside the numbers.
    pipeline.config.model.eval_appearance_steps = 1
    metrics = pipeline.get_average_eval_image_metrics()
    assert metrics["eval_appearance_left_half"] == 1.0 and metrics["eval_appearance_steps"] == 1.0 and np.isfinite(metrics["psnr"])


# --------------------------------------------------------------------------------------- issue 19
def test_check_says_the_trained_run_and_its_dataset_are_sound_and_names_a_damaged_checkpoint(
    trained_config: Path, example_lidar_scene: Path, tmp_path: Path
):
    run = json.loads(run_command(["async-nerf-check", str(trained_config.parent), "--json"], cwd=tmp_path).stdout)
    checkpoints = [f for f in run["findings"] if f["what"] == "checkpoint"]
    assert run["sound"] and run["kind"] == "ns-train run", run
    assert checkpoints and all("CRC-32 matches" in f["detail"] and "loads strictly" in f["detail"] for f in checkpoints)
    data = json.loads(run_command(["async-nerf-check", str(example_lidar_scene), "--json"], cwd=tmp_path).stdout)
    sets = [f for f in data["findings"] if f["what"] == "shard set"]
    assert data["sound"] and sets and all("CRC-32s match" in f["detail"] for f in sets if f["status"] == "ok"), data

    copy = tmp_path / "run"
    shutil.copytree(trained_config.parent, copy)
    (newest,) = _checkpoints(copy / "nerfstudio_models")[-1:]
    newest.write_bytes(bytes(newest.stat().st_size))  # zeroed, same size
    damaged = subprocess.run(
        [str(Path(sys.executable).parent / "async-nerf-check"), str(copy), "--no-strict"],
        capture_output=True, text=True, env=venv_env(), timeout=300,
    )
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    assert newest.name in damaged.stdout and "NOT SOUND" in damaged.stdout


def test_a_full_disk_during_a_checkpoint_save_stops_ns_train_with_the_message_and_a_rerun_completes(
    example_lidar_scene: Path, small_disk  # noqa: F811
):
    # The small preset's checkpoint of this scene is 32 MB: 48 MB hold the first save, not a second
    # beside it (the previous one is removed only once the new one is complete).
    disk = small_disk(48.0)
    if not disk.mounted:
        pytest.skip("needs a tmpfs mount (root); tests/test_integrity.py covers full disks with a write wrapper")
    args = _train_args(example_lidar_scene, disk.folder, "full")
    args[args.index("--max-num-iterations") + 1], args[args.index("--steps-per-save") + 1] = "30", "10"
    run = disk.folder / "e2e" / "async-nerf-small" / "full"
    models = run / "nerfstudio_models"
    bin_dir = Path(sys.executable).parent
    first = subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=disk.folder, env=venv_env(1), capture_output=True, text=True, timeout=900)
    output = " ".join((first.stdout + first.stderr).split())
    assert first.returncode != 0, output[-3000:]
    assert "No space left for step-000000020.ckpt in" in output and "MB free there" in output and "--load-dir" in output, output[-3000:]
    assert sorted(p.name for p in models.iterdir()) == ["step-000000010.ckpt", "step-000000010.ckpt.crc32"]
    assert not [p for p in run.rglob("*.partial")], "a partial file was left"
    disk.grow(120.0)
    run_command([*args, "--load-dir", str(models)], cwd=disk.folder, threads=1)
    assert [p.name for p in _checkpoints(models)] == ["step-000000029.ckpt"]
