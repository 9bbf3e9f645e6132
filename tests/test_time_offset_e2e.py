"""ns-train on a scene whose depth clock runs 150 ms behind the RGB clock: with the offset estimated
(the default) the depth frames are posed right and it reaches the unshifted scene's depth accuracy (the
unshifted run's numbers, measured once, are in the constants below); without, it does measurably worse.

Two real ``ns-train async-nerf-small`` runs of 400 steps (one torch thread: deterministic) and ``ns-eval``
of each, on the end-to-end test's scene size (without its LiDAR track).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import E2E_SPEC, run_command
from examples.make_scene import generate_scene

OFFSET_MS = 150
STEPS = 400
UNSHIFTED_DEPTH_RMSE_M = 7.45
"""The same training on the unshifted scene (E2E_SPEC without LiDAR, `_train_and_eval` as below), measured on
2026-12-07: 7.451 m (one thread, so deterministic). That run left the suite for time (~135 s); measure it
again the same way when the training changes."""
UNSHIFTED_PSNR = 22.50
"""... and its val PSNR, measured the same run (22.498 dB)."""
WITH_ESTIMATE_RMSE_RATIO = 1.05
"""Depth RMSE with the estimate / unshifted: measured 1.011 (7.40 m vs 7.32 m, an earlier code); margin 4x the excess."""
WITHOUT_ESTIMATE_RMSE_RATIO = 1.05
"""Depth RMSE without the estimate / with it: measured 1.099 (8.14 m vs 7.40 m; the ignored offset puts
the depth frames 3.7 m off); the test asks for half of that excess."""
PSNR_MARGIN_DB = 0.4
"""Val PSNR with the estimate vs unshifted: measured -0.11 dB."""


def _train_and_eval(data: Path, out: Path, name: str, *extra: str) -> dict:
    run_command(
        ["ns-train", "async-nerf-small", "--data", str(data), "--output-dir", str(out), "--experiment-name", "offset",
         "--timestamp", name, "--max-num-iterations", str(STEPS), "--steps-per-save", "1000",
         "--logging.local-writer.enable", "False", *extra],
        cwd=out, threads=1,
    )
    config = out / "offset" / "async-nerf-small" / name / "config.yml"
    run_command(["ns-eval", "--load-config", str(config), "--output-path", str(config.parent / "eval.json")], cwd=out, threads=1)
    return json.loads((config.parent / "eval.json").read_text())["results"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("offset_e2e")
    shifted = generate_scene(root / "shifted", dataclasses.replace(E2E_SPEC, depth_clock_offset_ms=OFFSET_MS, lidar=False))
    out = root / "runs"
    out.mkdir()
    return {
        "estimated": _train_and_eval(shifted, out, "estimated"),
        "ignored": _train_and_eval(shifted, out, "ignored", "--pipeline.datamanager.time-offset.estimate", "False"),
    }


def test_with_the_estimate_a_shifted_scene_trains_as_well_as_an_unshifted_one(results):
    estimated = results["estimated"]
    assert abs(estimated["depth_time_offset_s_lidar"] - OFFSET_MS / 1000) < 0.002
    assert estimated["depth_time_offset_std_s_lidar"] < 0.001
    assert estimated["depth_rmse_m"] < WITH_ESTIMATE_RMSE_RATIO * UNSHIFTED_DEPTH_RMSE_M
    assert estimated["psnr"] > UNSHIFTED_PSNR - PSNR_MARGIN_DB
    # ns-eval's depth-frame pose errors use the offset, and say what it is worth.
    assert estimated["depth_pose_train_tpf_translation_m_mean"] < 0.05
    assert estimated["depth_pose_train_tpf_without_offset_translation_m_mean"] > 2.0


def test_without_the_estimate_it_does_measurably_worse(results):
    estimated, ignored = results["estimated"], results["ignored"]
    assert ignored["depth_time_offset_s_lidar"] == 0.0 and "depth_time_offset_estimate_s_lidar" not in ignored
    assert ignored["depth_rmse_m"] > WITHOUT_ESTIMATE_RMSE_RATIO * estimated["depth_rmse_m"]
    assert ignored["depth_pose_train_tpf_translation_m_mean"] > 2.0
