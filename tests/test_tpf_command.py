"""The async-nerf-tpf command on a tiny layout dataset and on upstream Async-NeRF pose folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from layout_factory import write_tiny_layout

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
