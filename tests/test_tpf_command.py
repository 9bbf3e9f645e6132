"""The async-nerf-tpf command on a tiny layout dataset (with and without LiDAR tracks) and on upstream Async-NeRF
pose folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from layout_factory import rgb_pose, write_lidar_track, write_tiny_layout

from async_nerf_ns.scripts import tpf as tpf_command
from examples import trajectories as synthetic
from async_nerf_ns.layout.pose_files import read_pose_txt, write_pose_txt
from async_nerf_ns.trajectory.tpf import FittedTPF, TimePoseFunctionConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(argv, monkeypatch) -> None:
    """Runs the console entry point exactly as `async-nerf-tpf ARGS` would."""
    monkeypatch.setattr(sys, "argv", ["async-nerf-tpf", *map(str, argv)])
    tpf_command.entrypoint()


def test_layout_dataset(tmp_path, monkeypatch):
    """The tiny layout's camera moves at 0.4 units/s (50 m/unit) in a straight line; depth frames lie
    half-way between RGB frames and their prior is the previous RGB pose: the prior is 0.25 s x 0.4 x
    50 = 5 m off, while any interpolator is exact (TPF to float32: measured 1e-6 m, bound 1e-4 m)."""
    tiny = write_tiny_layout(tmp_path / "data")
    out = tmp_path / "out"
    _run([tiny.root, "--output", out, "--tpf.iterations", "20", "--no-progress"], monkeypatch)

    written = sorted(p.name for p in (out / "poses_train_lidar").iterdir())
    assert written == [f"depth_{j:04d}.txt" for j in range(3)]
    assert sorted(p.name for p in (out / "poses_val_lidar").iterdir()) == ["depth_0000.txt"]
    written_pose = read_pose_txt(out / "poses_train_lidar" / "depth_0001.txt")
    np.testing.assert_allclose(written_pose, tiny.depth_gt_c2w["train"][1], atol=1e-5)

    report = json.loads((out / "pose_errors.json").read_text())
    assert set(report["sets"]) == {"train/lidar", "val/lidar", "val/rgb"}
    for name in ("train/lidar", "val/lidar"):
        errors = report["sets"][name]["errors"]
        assert set(errors) == {"tpf", "linear_slerp", "cubic_spline", "prior"}
        assert set(errors["tpf"]) == {"count", "translation_m", "rotation_deg"}
        assert set(errors["tpf"]["translation_m"]) == {"mean", "median", "max"}
        assert errors["prior"]["translation_m"]["mean"] == pytest.approx(5.0)
        assert errors["tpf"]["translation_m"]["max"] < 1e-4
        assert errors["tpf"]["rotation_deg"]["max"] < 1e-3
    assert set(report["sets"]["val/rgb"]["errors"]) == {"tpf", "linear_slerp", "cubic_spline"}
    assert report["metres_per_unit"] == 50.0

    assert (out / "trajectory.png").read_bytes()[:8] == PNG_MAGIC
    state = torch.load(out / "tpf_state_dict.pt", weights_only=True)
    rebuilt = FittedTPF.from_state_dict(TimePoseFunctionConfig(), state)
    with torch.no_grad():
        pose = rebuilt.poses(tiny.depth_times["val"]).numpy()[0]
    np.testing.assert_allclose(pose, tiny.depth_gt_c2w["val"][0], atol=1e-5)


def test_layout_lidar_tracks(tmp_path, monkeypatch):
    """Two LiDAR tracks on the tiny layout (camera at 0.4 units/s x 50 m/unit = 20 m/s, straight, no rotation;
    20 returns per scan at t = -0.1 ... 0 s after the stamp): 'top' on the RGB clock, 'late' 50 ms behind it
    (its pose_gt_lidar is the pose 50 ms after the stamp; --depth-time-offset late 0.05). Three train scans each
    overlap nowhere, so the LiDAR estimator keeps the given offsets.

    Scan poses: measured 2e-6 m (TPF to float32; bound 1e-4 m) with the offset; without it 'late' is 20 m/s x
    0.05 s = 1 m off. Deskew: a pure translation moves each return by 20 m/s x |t| (the first by 2 m): measured
    within 3e-6 m of that (bound 1e-4 m), sensor travel 2 m, sweep 0.1 s (float32 times)."""
    tiny = write_tiny_layout(tmp_path / "data")
    write_lidar_track(tiny.root, track="top")
    write_lidar_track(tiny.root, split="val", track="top", times=(10.4,))
    late_times = (10.25, 10.75, 11.25)
    write_lidar_track(tiny.root, track="late", times=late_times, extrinsic="metadata")
    for j, t in enumerate(late_times):
        np.savetxt(tiny.root / "train" / "pose_gt_lidar_late" / f"scan_{j:04d}.txt", rgb_pose(t + 0.05))
    out = tmp_path / "out"
    _run([tiny.root, "--output", out, "--tpf.iterations", "20", "--no-progress", "--depth-time-offset", "late", "0.05"],
         monkeypatch)

    scans = [f"scan_{j:04d}.txt" for j in range(3)]
    assert sorted(p.name for p in (out / "poses_train_lidar_top").iterdir()) == scans
    assert sorted(p.name for p in (out / "poses_val_lidar_top").iterdir()) == ["scan_0000.txt"]
    assert sorted(p.name for p in (out / "poses_train_lidar_late").iterdir()) == scans
    np.testing.assert_allclose(read_pose_txt(out / "poses_train_lidar_top" / "scan_0001.txt"), rgb_pose(10.7), atol=1e-5)
    np.testing.assert_allclose(read_pose_txt(out / "poses_train_lidar_late" / "scan_0001.txt"), rgb_pose(10.8), atol=1e-5)

    report = json.loads((out / "pose_errors.json").read_text())
    assert {"train/lidar", "val/lidar", "train/lidar_top", "val/lidar_top", "train/lidar_late"} <= set(report["sets"])
    for name in ("train/lidar_top", "val/lidar_top", "train/lidar_late"):
        entry = report["sets"][name]
        assert entry["written_to"] == "poses_" + name.replace("/", "_")
        errors = entry["errors"]
        assert {"tpf", "linear_slerp", "cubic_spline"} <= set(errors) and "prior" not in errors
        assert errors["tpf"]["count"] == entry["frames"]
        assert errors["tpf"]["translation_m"]["max"] < 1e-4
        assert errors["tpf"]["rotation_deg"]["max"] < 1e-3
    late = report["sets"]["train/lidar_late"]
    assert late["time_offset_s"] == 0.05
    assert late["errors"]["tpf_without_offset"]["translation_m"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert "tpf_without_offset" not in report["sets"]["train/lidar_top"]["errors"]
    assert report["time_offsets"]["late"]["applied_s"] == 0.05
    assert report["time_offsets"]["top"]["applied_s"] == 0.0

    dt = np.linspace(-0.1, 0.0, 20).astype(np.float32).astype(np.float64)  # as write_lidar_track stores them
    moved = 20.0 * np.abs(dt)
    for track in ("top", "late"):
        deskew = report["lidar_deskew"][track]
        assert (deskew["scans"], deskew["returns"]) == (3, 20)
        assert deskew["figure"] == f"lidar_deskew_{track}.png"
        assert (out / deskew["figure"]).read_bytes()[:8] == PNG_MAGIC
        assert deskew["sweep_s"] == pytest.approx(0.1, abs=1e-6)
        assert deskew["sensor_travel_m"] == pytest.approx(2.0, abs=1e-4)
        spread = deskew["displacement_m"]
        assert spread["median"] == pytest.approx(np.median(moved), abs=1e-4)
        assert spread["p95"] == pytest.approx(np.percentile(moved, 95), abs=1e-4)
        assert spread["max"] == pytest.approx(2.0, abs=1e-4)
        assert deskew["train_scans"]["max_displacement_m"]["median"] == pytest.approx(2.0, abs=1e-4)
    assert report["lidar_deskew"]["late"]["time_offset_s"] == 0.05


def test_layout_lidar_scene(tmp_path, monkeypatch):
    """examples.make_scene's town with its spinning LiDAR (16 beams x 360 columns at 10 Hz, each column at its own
    time, stamped at the sweep's start) whose clock is 30 ms behind the RGB clock; 20 RGB frames (4 s, 32 train
    scans), a lighter offset search (128 points a scan, 2 neighbours). Measured: offset +30.3 +- 0.4 ms
    (estimated, used); train scan poses 8 mm mean / 14 mm max with it, 0.71 m mean without it; deskew: the scan
    whose sensor moves most (3.9 m in its 99.7 ms sweep) has its returns moved by 1.9 m (median), 9.8 m (max)."""
    from examples.make_scene import SceneSpec, generate_scene

    spec = SceneSpec(num_rgb=20, width=48, height=36, lidar=True, lidar_clock_offset_ms=30, write_preview=False)
    data = generate_scene(tmp_path / "scene", spec)
    out = tmp_path / "out"
    _run([data, "--output", out, "--tpf.iterations", "20", "--no-progress", "--time-offset.points-per-frame", "128",
          "--time-offset.max-frames-apart", "2"], monkeypatch)

    report = json.loads((out / "pose_errors.json").read_text())
    offset = report["time_offsets"]["top"]
    assert offset["status"] == "estimated" and offset["applied_s"] == pytest.approx(0.030, abs=0.002)
    assert (out / "time_offset.png").read_bytes()[:8] == PNG_MAGIC
    scans = report["sets"]["train/lidar_top"]
    assert scans["frames"] == len(list((out / "poses_train_lidar_top").glob("*.txt")))
    assert scans["time_offset_s"] == offset["applied_s"]
    errors = scans["errors"]
    assert errors["tpf"]["count"] == scans["frames"]
    assert errors["tpf"]["translation_m"]["max"] < 0.05
    assert errors["tpf_without_offset"]["translation_m"]["mean"] > 0.4  # 30 ms at ~25 m/s
    assert report["sets"]["val/lidar_top"]["errors"]["tpf"]["translation_m"]["max"] < 0.05

    deskew = report["lidar_deskew"]["top"]
    assert deskew["scans"] == scans["frames"] and deskew["returns"] > 1000
    assert deskew["sweep_s"] == pytest.approx(0.1 * 359 / 360, abs=1e-5)
    assert deskew["sensor_travel_m"] == deskew["train_scans"]["sensor_travel_m"]["max"] > 1.0
    spread = deskew["displacement_m"]
    assert 0.5 < spread["median"] <= spread["p95"] <= spread["max"] < 20.0
    assert (out / "lidar_deskew_top.png").read_bytes()[:8] == PNG_MAGIC


def _write_upstream(root: Path, bare: bool = False) -> np.ndarray:
    """A helix as upstream raw data: rgb/{t}.txt 4x4 poses at 10 Hz for 8 s and, unless `bare`,
    depth_lidar/{t}.txt true poses 37 ms after each RGB frame. Returns the RGB times."""
    times = synthetic.sample_times(8.0, 10.0)
    rgb_dir = root if bare else root / "rgb"
    for t, pose in zip(times, synthetic.helix(times - times[0])):
        write_pose_txt(rgb_dir / f"{t:.3f}.txt", pose, homogeneous=True)
    if not bare:
        depth_times = times[:-1] + 0.037
        for t, pose in zip(depth_times, synthetic.helix(depth_times - times[0])):
            write_pose_txt(root / "depth_lidar" / f"{t:.3f}.txt", pose, homogeneous=True)
    return times


def test_upstream_folder(tmp_path, monkeypatch):
    """81 helix poses: every 8th (10 of them) is held out; the 80 depth poses are predicted and
    written as 4x4 like the input. Clean smooth data: errors below 1 mm (measured ~1e-6 m)."""
    _write_upstream(tmp_path / "seq")
    out = tmp_path / "out"
    _run([tmp_path / "seq", "--output", out, "--tpf.iterations", "20", "--no-progress"], monkeypatch)
    report = json.loads((out / "pose_errors.json").read_text())
    assert report["format"] == "upstream"
    assert report["fit"]["rgb_frames"] == 71
    assert report["sets"]["held_out/rgb"]["errors"]["tpf"]["count"] == 10
    depth = report["sets"]["depth/lidar"]
    assert depth["frames"] == 80 and depth["written_to"] == "poses_lidar"
    assert set(depth["errors"]) == {"tpf", "linear_slerp", "cubic_spline"}
    assert depth["errors"]["tpf"]["translation_m"]["max"] < 1e-3
    files = sorted((out / "poses_lidar").glob("*.txt"))
    assert len(files) == 80 and np.loadtxt(files[0]).shape == (4, 4)
    assert (out / "trajectory.png").read_bytes()[:8] == PNG_MAGIC


def test_upstream_bare_folder(tmp_path, monkeypatch):
    """A folder holding only {timestamp}.txt poses: fit, hold out, report; no depth sets."""
    _write_upstream(tmp_path / "poses", bare=True)
    out = tmp_path / "out"
    _run([tmp_path / "poses", "--output", out, "--tpf.iterations", "0", "--no-progress"], monkeypatch)
    report = json.loads((out / "pose_errors.json").read_text())
    assert list(report["sets"]) == ["held_out/rgb"]
    assert report["sets"]["held_out/rgb"]["errors"]["tpf"]["translation_m"]["max"] < 1e-3


def test_unusable_inputs_name_the_path(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty: neither a dataset"):
        _run([tmp_path / "empty", "--output", tmp_path / "out"], monkeypatch)
    bad = tmp_path / "bad"
    write_pose_txt(bad / "rgb" / "1.0.txt", np.eye(4)[:3])
    (bad / "rgb" / "frame.txt").write_text(" ".join(["0"] * 16))
    with pytest.raises(SystemExit, match="frame.txt: the file name must be the capture time"):
        _run([bad, "--output", tmp_path / "out"], monkeypatch)
    no_time = write_tiny_layout(tmp_path / "no_time", num_depth=0, num_val_depth=0, timestamps="none")
    with pytest.raises(SystemExit, match="no timestamp"):
        _run([no_time.root, "--output", tmp_path / "out"], monkeypatch)
